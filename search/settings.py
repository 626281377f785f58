"""A study's options, declared once: ``StudySettings`` (what a study is about, recorded in it when it
is created: docs/study-format.md) and ``RunOptions`` (what only a local run and ``study create``
take beside them). Each option is a dataclass field whose metadata holds its help line, the check
its values pass (search/checks.py) and its flag: the command line's parser is built from them
(cli/options.py), ``kilotune.run`` takes the same names (``search.create.run_options`` checks
them), the study records the settings and every worker reads them back from it, so the study,
not each worker's command line, decides the search.

Nothing here loads Optuna: the command line reads these declarations before anything heavy loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from kilotune.models.names import ENSEMBLE_SELECTIONS, listing
from kilotune.search.attrs import CREATED_AT, CV_FOLDS, CV_TOP_K, DATASET, KILOTUNE_VERSION, N_TRIALS, SUBSET_PATH
from kilotune.search.checks import checked, flag, name_list, real, subset_file, text, whole_number
from kilotune.search.pruners import PRUNERS
from kilotune.search.samplers import SAMPLERS
from kilotune.subset.datasets import DATASETS
from kilotune.subset.files import count_of
from kilotune.subset.splits import fold_count
from kilotune.training.config import TrainConfig

if TYPE_CHECKING:  # Optuna loads where a study is opened, not where the command line is read
    import optuna
    from optuna.storages import BaseStorage

# A trial's value averages its last tenth (at least one epoch): a fixed 3 was half of a 6-epoch
# trial and ranked schedules that warm up or anneal inside it below constant ones (docs/benchmarks.md section 9).
OBJECTIVE_SHARE = 10
MAX_CV_TOP_K = 3  # the top trials cross-validated when the budget allows (``plan_cross_validation``)
CV_SHARE = 3  # cross-validation takes at most 1/CV_SHARE of a trial budget


def option(default: Any, help: str, *, check: Any = None, flag: str | None = None, name: str | None = None) -> Any:
    """A dataclass field that is an option of the command line and of ``kilotune.run``.

    Args:
        default: Its default, declared here only.
        help: Its help line (``%(default)s`` shows the default).
        check: What its values pass (search/checks.py); none for text and paths.
        flag: Its flag where it is not ``--<name>`` (``--no-warm-start``, ``--preset``).
        name: Its name where it is not the field's (``timeout`` for ``timeout_s``, as recorded).
    """
    return field(default=default, metadata={"help": help, "check": check, "flag": flag, "name": name})


def options_of(owner: type) -> dict[str, Field]:
    """The option fields of ``StudySettings`` or ``RunOptions`` by their option names, in order."""
    return {f.metadata.get("name") or f.name: f for f in fields(owner) if "help" in f.metadata}


def checked_option(name: str, value: Any, declared: Field) -> Any:
    """``value`` as the option ``name`` takes it from Python, checked as its command-line argument
    would be; a ValueError naming both. A flag takes True or False, a repeatable option a list
    of names, and None leaves any other unset."""
    if isinstance(declared.default, bool):
        return checked(name, value, flag)
    if isinstance(declared.default, tuple):
        return tuple(checked(name, value, name_list))
    if value is None:
        return None
    if declared.metadata["check"] is not None:
        return checked(name, value, declared.metadata["check"])
    return os.fspath(value) if isinstance(value, os.PathLike) else checked(name, value, text)  # names, URLs, directories


def _choices(registry: dict) -> str:
    return "; ".join(f"{name}: {entry.help}" for name, entry in registry.items()) + " (default: %(default)s)"


@dataclass(frozen=True)
class StudySettings:
    """What a study is about; recorded as study user attributes (docs/study-format.md).

    The fields with option metadata are ``study create``'s and ``run``'s options; the others are
    found (the data's checksums), derived or stamped when the study is created.
    """

    dataset: str  # a built-in dataset's name, or a user's .npz file (RunOptions.dataset is what was given)
    dataset_checksum: str = ""
    subset_path: str = ""
    subset_checksum: str = ""
    val_fraction: float = option(0.2, "stratified hold-out inside the subset (default: %(default)s)", check=real())
    split_seed: int = 0
    epochs: int = option(TrainConfig.epochs, "epochs per trial, the pruner's max resource (default: %(default)s)", check=whole_number())
    space: dict | None = None  # the --space restrictions (RunOptions.space names the file or built-in space)
    sampler: str = option("tpe", _choices(SAMPLERS))
    pruner: str = option("hyperband", _choices(PRUNERS))
    n_trials: int | None = option(None, "global trial budget for the whole study, the cross-validation's fold trials included",
                                  check=whole_number())  # fmt: skip
    timeout_s: float | None = option(None, "global time budget in seconds, from the study's creation", check=real(), name="timeout")
    seed: int | None = option(None, "sampler seed (default: random)", check=whole_number(0))
    # A trial's value: mean validation accuracy of its last this many epochs (search/winner.py);
    # None: the last 1/OBJECTIVE_SHARE of the epochs, at least one.
    objective_epochs: int | None = option(None, "a trial's value is the mean validation accuracy of its last this many epochs "
                                          f"(default: the last 1/{OBJECTIVE_SHARE} of --epochs, at least 1)", check=whole_number())  # fmt: skip
    # The top trials re-trained on other folds before the winner is picked (0: none), and the folds
    # each is validated on, fold 0 included. Their fold trials count in n_trials. None and None:
    # as the budget allows, resolved on construction (plan_cross_validation).
    cv_top_k: int | None = option(None, "re-train the top this many trials on other folds and pick the winner by the mean; 0: off "
                                  f"(default: up to {MAX_CV_TOP_K}, as a third of --n-trials allows)", check=whole_number())  # fmt: skip
    cv_folds: int | None = None
    kilotune_version: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is not allowed; choose one of {listing(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner={self.pruner!r} is not allowed; choose one of {listing(PRUNERS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be at least 1")
        if self.objective_epochs is None:
            object.__setattr__(self, "objective_epochs", max(1, self.epochs // OBJECTIVE_SHARE))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"n_trials={self.n_trials} must be at least 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be positive")
        if not 1 <= self.objective_epochs <= self.epochs:  # a trial's value is the mean of that many of its epochs
            raise ValueError(f"objective_epochs={self.objective_epochs} must be from 1 to the {self.epochs} epochs a trial trains")
        if self.cv_top_k and self.folds < 2:  # else the study would silently not cross-validate
            raise ValueError(f"val_fraction={self.val_fraction} leaves {self.folds} fold, too few to cross-validate "
                             f"the top {self.cv_top_k}: give val_fraction <= 0.5, or cv_top_k=0 for no cross-validation")
        if self.cv_folds is None:
            top_k, folds = plan_cross_validation(self.n_trials, self.folds, self.cv_top_k)
            object.__setattr__(self, "cv_top_k", top_k)  # frozen: resolved once, as recorded
            object.__setattr__(self, "cv_folds", folds)
        elif self.cv_top_k is None or self.cv_top_k < 0 or not 1 <= self.cv_folds <= self.folds:
            raise ValueError(f"cv_top_k={self.cv_top_k} and cv_folds={self.cv_folds} must be 0 or more, and 1 to {self.folds} folds")
        if self.search_trials is not None and self.search_trials < 1:
            raise ValueError(f"n_trials={self.n_trials} leaves no search trial beside the {self.fold_trials} fold trials of "
                             f"cv_top_k={self.cv_top_k} on cv_folds={self.cv_folds}; give more trials")

    @property
    def fold_trials(self) -> int:
        """The trials of cross-validation: the top ``cv_top_k`` each on ``cv_folds - 1`` other folds."""
        return (self.cv_top_k or 0) * ((self.cv_folds or 1) - 1)

    @property
    def search_trials(self) -> int | None:
        """The search's share of ``n_trials`` (the rest is cross-validation); None without a trial budget."""
        return None if self.n_trials is None else self.n_trials - self.fold_trials

    def budget_text(self) -> str:
        """What the budget buys, for a header: ``12 trials of 10 epochs (at most 120 epochs): 8 search
        trials, the top 2 of them re-trained on 2 more folds each (4 fold trials)``: no order (a certain
        candidate's folds start while the last search trials run)."""
        time = f"; stops after {self.timeout_s:g} s" if self.timeout_s else ""
        if self.n_trials is None:
            return f"trials of {count_of(self.epochs, 'epoch')} until {self.timeout_s:g} s have passed, not cross-validated"
        text = f"{count_of(self.n_trials, 'trial')} of {count_of(self.epochs, 'epoch')} (at most {count_of(self.n_trials * self.epochs, 'epoch')}): "
        if not self.fold_trials:
            return text + f"{count_of(self.n_trials, 'search trial')}, not cross-validated{time}"
        return (text + f"{count_of(self.search_trials, 'search trial')}, the top {self.cv_top_k} of them re-trained on "
                f"{count_of(self.cv_folds - 1, 'more fold')} each ({count_of(self.fold_trials, 'fold trial')}){time}")

    def differences(self, given: StudySettings) -> list[str]:
        """The settings that ``given`` changes, as ``name=recorded (given new)``.

        Only what decides the search is compared: not where the subset file is on this host
        (its checksum is compared), the version or the creation time.
        """
        ignored = {SUBSET_PATH, KILOTUNE_VERSION, CREATED_AT, DATASET}
        if self.n_trials != given.n_trials:
            ignored |= {CV_TOP_K, CV_FOLDS}  # the cross-validation's share follows from the budget, the difference named
        mine, theirs = (_as_json({**asdict(s), "space": s.space or {}}) for s in (self, given))
        return [f"{k}={mine[k]!r} (given {theirs[k]!r})" for k in mine if k not in ignored and mine[k] != theirs[k]]

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudySettings:
        attrs = study.user_attrs
        names = {f.name for f in fields(cls)}
        missing = {DATASET, SUBSET_PATH} - set(attrs)
        if missing:
            raise ValueError(f"study {study.study_name!r} was not created by kilotune (no {listing(sorted(missing), 'and')} recorded)")
        # Studies from before the noise-aware objective valued a trial by its last epoch alone.
        recorded = {"objective_epochs": 1, **{k: v for k, v in attrs.items() if k in names}}
        if CV_FOLDS not in attrs:
            # From before fold trials counted in the budget: the top cv_top_k (MAX_CV_TOP_K if unrecorded)
            # were validated on every fold beyond the n_trials search trials, which the total now includes.
            folds = fold_count(recorded.get("val_fraction", cls.val_fraction))
            top_k = recorded.get(CV_TOP_K, MAX_CV_TOP_K) if folds > 1 and recorded.get(N_TRIALS) is not None else 0
            recorded.update(cv_top_k=top_k, cv_folds=folds if top_k else 1)
            if top_k:
                recorded[N_TRIALS] += top_k * (folds - 1)
        # Made before a value over the epochs was refused: the mean of every epoch, as now.
        recorded["objective_epochs"] = min(recorded["objective_epochs"], recorded.get("epochs", cls.epochs))
        return cls(**recorded)

    @property
    def folds(self) -> int:
        """The subset's cross-validation folds: disjoint hold-outs of ``val_fraction`` (5 for 0.2)."""
        return fold_count(self.val_fraction)

    def sampler_for(self) -> optuna.samplers.BaseSampler:
        """The study's sampler (search/samplers/), seeded with ``seed``; a worker takes ``worker_sampler`` instead."""
        return SAMPLERS[self.sampler].make(self)

    def worker_sampler(self, stream: str = "") -> optuna.samplers.BaseSampler:
        """The sampler of one worker: ``sampler_for`` with the seed of the worker's own ``stream``.

        Workers with one seed would sample the same start-up trials, and with the same liars the
        same TPE trials too. Each worker's seed is derived from the study's seed and its stream
        (its ``--worker-id``), so a seeded study stays reproducible per worker id and its workers
        differ; the empty stream keeps the study's seed.
        """
        if self.seed is None or not stream:
            return self.sampler_for()
        derived = int.from_bytes(hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()[:4], "big")
        return replace(self, seed=derived).sampler_for()

    def pruner_for(self, storage: BaseStorage | None = None) -> optuna.pruners.BasePruner:
        """The study's pruner (search/pruners/); on an RDB storage, one whose checks read one
        indexed query instead of every running trial."""
        return PRUNERS[self.pruner].make(self, storage)

    def may_prune_at(self, epoch: int) -> bool:
        """Whether the study's pruner can stop a trial after this epoch; asking elsewhere only costs storage reads."""
        return PRUNERS[self.pruner].may_prune_at(self, epoch)


def plan_cross_validation(n_trials: int | None, folds: int, top_k: int | None = None) -> tuple[int, int]:
    """How a trial budget is split: ``(cv_top_k, cv_folds)``, the top trials cross-validated and
    the folds each is validated on (its own fold 0 included). Fold trials take
    ``cv_top_k * (cv_folds - 1)`` of the ``n_trials``, at most a third (``CV_SHARE``); the
    search takes the rest.

    Args:
        n_trials: The study's trial budget; None (a time budget only): no cross-validation.
        folds: The subset's folds (5 for a validation fraction of 0.2).
        top_k: The top trials to cross-validate; None: up to ``MAX_CV_TOP_K``, each on at
            least 2 more folds, as the budget allows, and none where it allows fewer than 2
            (cross-validating one trial changes no decision); 0: none.

    Raises:
        ValueError: if ``top_k`` trials cannot each take one more fold within the share.

    Example: 12 trials, 5 folds: ``(2, 3)``, the top 2 on 2 more folds (4 fold trials, 8 search
    trials); 30 trials: ``(3, 4)``; 45 trials: ``(3, 5)``.
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"cv_top_k={top_k} must be 0 (no cross-validation) or more")
    if n_trials is None or folds < 2 or top_k == 0:
        return 0, 1
    share = n_trials // CV_SHARE
    k = min(MAX_CV_TOP_K, share // 2) if top_k is None else top_k
    if k == 0 or (top_k is None and k < 2):
        return 0, 1
    extra = min(folds - 1, share // k)
    if extra == 0:
        raise ValueError(f"cv_top_k={k} needs at least {k * CV_SHARE} trials (cross-validation takes at most "
                         f"a third of n_trials={n_trials}); give more trials, a smaller cv_top_k, or cv_top_k=0 for none")
    return k, 1 + extra


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """As the study stores them (JSON): tuples become lists, so equal settings compare equal."""
    return json.loads(json.dumps(values))


@dataclass(frozen=True)
class RunOptions:
    """What a local run takes beside its study's settings (``kilotune run``, ``kilotune.run``);
    ``study create`` takes all but ``workers`` and ``presets``. Made by ``search.create.run_options``,
    which checks every value, reads the space file, resolves the storage URL and settles the budget.
    """

    settings: StudySettings  # the study's settings as given (the data's checksums are found when it is created)
    study: str = option("kilotune", "study name (default: %(default)s)")
    storage: str | None = option(None, "storage URL (default: $KILOTUNE_STORAGE, else sqlite:///kilotune.db)")  # made: the URL resolved
    dataset: str = option("cifar10", f"{listing([*DATASETS, 'FILE.npz of your own arrays'])} (default: %(default)s)")
    data_dir: str | None = option(None, "where the dataset files are (default: per dataset, see README)")
    subset: str | None = option(None, "subset file to train on, or all: every training image "
                                "(default: build/reuse the cached default subset, random)", check=subset_file)  # fmt: skip
    space: str | None = option(None, "YAML/JSON file that narrows the space or fixes values, or a built-in: small")
    warm_start: bool = option(True, "do not queue the presets (projected into the space) as a new study's first trials", flag="--no-warm-start")
    keep_settings: bool = option(False, "join an existing study of this name as recorded, though these settings differ (default: refuse)")
    workers: int = option(2, "local worker processes (default: %(default)s)", check=whole_number(1))
    presets: tuple[str, ...] = option((), "enqueue this preset first (repeatable)", flag="--preset")


@dataclass(frozen=True)
class ExportOptions:
    """``kilotune export``'s and ``kilotune.best``'s defaults, declared here only."""

    rank: int = 1  # 1: the cross-validated winner, 2: the runner-up, ...
    ensemble: int = 0  # members of an ensemble written around the winner; 0: none
    selection: str = ENSEMBLE_SELECTIONS[0]  # how members are chosen (measured: bench/ensemble_selection.py)


@dataclass(frozen=True)
class ReportOptions:
    """``kilotune report``'s and ``kilotune.report``'s defaults, declared here only."""

    top: int = 10  # configurations in the report's top table
