"""The user-attribute keys of a kilotune study and its trials: the study format's names, defined
once (docs/study-format.md lists every one; ``tests/search/test_attrs.py`` checks it does).

The study's keys are ``StudySettings``' fields (recorded by ``study create``) and the budget's
history; a trial's are written by its worker, by the warm start and by the cross-validation.
"""

from __future__ import annotations

# -- Study user attributes (``study.user_attrs``) ---------------------------------------------
KILOTUNE_VERSION = "kilotune_version"
DATASET = "dataset"
DATASET_CHECKSUM = "dataset_checksum"
SUBSET_PATH = "subset_path"
SUBSET_CHECKSUM = "subset_checksum"
VAL_FRACTION = "val_fraction"
SPLIT_SEED = "split_seed"
EPOCHS = "epochs"
SPACE = "space"
SAMPLER = "sampler"
PRUNER = "pruner"
N_TRIALS = "n_trials"
TIMEOUT_S = "timeout_s"
SEED = "seed"
OBJECTIVE_EPOCHS = "objective_epochs"
CV_TOP_K = "cv_top_k"
CV_FOLDS = "cv_folds"  # folds each cross-validated trial is validated on; absent: before fold trials counted in the budget
BUDGET_HISTORY = "budget_history"
CREATED_AT = "created_at"
CV_STUDY_OF = "cv_study_of"  # on a companion study of fold trials (``<study>.cv``): the study it cross-validates

# -- Study system attributes (``storage.get_study_system_attrs``) -------------------------------
# Off the user attributes, which every claim reads (search/budget.py): 10 kB for a random 1000 of Fashion-MNIST.
SUBSET_CONTENT = "subset_content"  # the subset file's content (``SubsetFile.to_dict()``), for workers on other hosts

# -- Trial user attributes (``trial.user_attrs``) ---------------------------------------------
CONFIG = "config"  # the TrainConfig trained, as a dict
WORKER = "worker"  # host:pid
WORKER_ID = "worker_id"  # the worker's --worker-id
DEVICE = "device"
PARAMS_COUNT = "params_count"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
STATUS = "status"  # running, complete, diverged, pruned, failed, interrupted, returned
FAIL_REASON = "fail_reason"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
RETRY_OF = "retry_of"
PRESET = "preset"
PRESET_CONFIG = "preset_config"
CV_OF = "cv_of"  # a fold trial: the candidate trial's number
FOLD = "fold"
TIME_SPLIT = "time_split"  # where the trial's wall seconds went: build, train, validation, checkpoint, storage, other (workers/worker.py)
VAL_PREDICTIONS = "val_predictions"  # a complete trial's softmax on its validation images, and their labels (search/ensemble.py)

STUDY_KEYS = (KILOTUNE_VERSION, DATASET, DATASET_CHECKSUM, SUBSET_PATH, SUBSET_CHECKSUM, VAL_FRACTION, SPLIT_SEED, EPOCHS,
              SPACE, SAMPLER, PRUNER, N_TRIALS, TIMEOUT_S, SEED, OBJECTIVE_EPOCHS, CV_TOP_K, CV_FOLDS, BUDGET_HISTORY, CREATED_AT,
              CV_STUDY_OF)
STUDY_SYSTEM_KEYS = (SUBSET_CONTENT,)
TRIAL_KEYS = (CONFIG, WORKER, WORKER_ID, DEVICE, PARAMS_COUNT, EPOCH_SECONDS, IMAGES_PER_SECOND, STATUS, FAIL_REASON,
              RESUMED_FROM_EPOCH, RETRY_OF, PRESET, PRESET_CONFIG, CV_OF, FOLD, TIME_SPLIT, VAL_PREDICTIONS)
