"""The one gate to Optuna's internals: every private Optuna name kilotune uses is used here.

kilotune's fast paths read and write Optuna's RDB schema directly and reach into private
attributes of Optuna's studies, trials, storages and pruners (docs/bench-storage.md measures
what each saves). Those are not Optuna's API and may change in any release, so they are used
only inside the range of Optuna releases kilotune is tested with (pyproject's ``optuna>=5.1,<5.2``,
``TESTED_RANGE``). Outside it ``fast_paths()`` is False, kilotune falls back to Optuna's public
API (its ``TPESampler`` and pruners, ``study.get_trials``, ``study.ask``, the storage's public
methods) and says so once, as a warning.

``tests/search/test_optuna_internals.py`` checks the gate both ways and that no module outside
this folder uses a private Optuna name. The gate and the study, trial and storage internals are
gate.py's; a trial's writes in one transaction writes.py's; TPE reading once a trial tpe.py's;
the indexed pruners pruners.py's.
"""

from kilotune.search.optuna_internals.gate import (
    TESTED_RANGE, beaten_trial_ids, budget_rows, fast_paths, frozen_trial, frozen_trial_id, has_system_attr, in_tested_range, new_trial,
    rdb_of, stale_trial_ids, study_id, study_storage, trial_id,
)
from kilotune.search.optuna_internals.pruners import IndexedHyperbandPruner, IndexedMedianPruner, IndexedSuccessiveHalvingPruner
from kilotune.search.optuna_internals.tpe import SnapshotTPESampler
from kilotune.search.optuna_internals.writes import store_rdb

__all__ = ["TESTED_RANGE", "IndexedHyperbandPruner", "IndexedMedianPruner", "IndexedSuccessiveHalvingPruner", "SnapshotTPESampler",
           "beaten_trial_ids", "budget_rows", "fast_paths", "frozen_trial", "frozen_trial_id", "has_system_attr", "in_tested_range",
           "new_trial", "rdb_of", "stale_trial_ids", "store_rdb", "study_id", "study_storage", "trial_id"]  # fmt: skip
