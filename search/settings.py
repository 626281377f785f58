"""What a study is about, recorded in it when it is created: ``StudySettings`` (docs/study-format.md).

Every worker rebuilds the sampler and pruner from the settings recorded in the study, so the
study, not each worker's command line, decides the search.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from typing import TYPE_CHECKING

from kilotune.models.names import listing
from kilotune.search.attrs import CREATED_AT, CV_FOLDS, CV_TOP_K, DATASET, KILOTUNE_VERSION, N_TRIALS, SUBSET_PATH
from kilotune.search.pruners import PRUNERS
from kilotune.search.samplers import SAMPLERS
from kilotune.subset.files import count_of
from kilotune.subset.splits import fold_count

if TYPE_CHECKING:  # Optuna loads where a study is opened, not where the command line is read
    import optuna
    from optuna.storages import BaseStorage

DEFAULT_OBJECTIVE_EPOCHS = 3
MAX_CV_TOP_K = 3  # the top trials cross-validated when the budget allows (``plan_cross_validation``)
CV_SHARE = 3  # cross-validation takes at most 1/CV_SHARE of a trial budget


@dataclass(frozen=True)
class StudySettings:
    """What a study is about; recorded as study user attributes (docs/study-format.md)."""

    dataset: str
    dataset_checksum: str
    subset_path: str
    subset_checksum: str
    val_fraction: float = 0.2
    split_seed: int = 0
    epochs: int = 40
    space: dict | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    n_trials: int | None = None
    timeout_s: float | None = None
    seed: int | None = None
    # A trial's value: mean validation accuracy of its last this many epochs (search/winner.py);
    # None: DEFAULT_OBJECTIVE_EPOCHS, or every epoch where a trial trains fewer.
    objective_epochs: int | None = None
    # The top trials re-trained on other folds before the winner is picked (0: none), and the folds
    # each is validated on, fold 0 included. Their fold trials count in n_trials. None and None:
    # as the budget allows, resolved on construction (plan_cross_validation).
    cv_top_k: int | None = None
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
            object.__setattr__(self, "objective_epochs", min(DEFAULT_OBJECTIVE_EPOCHS, self.epochs))
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
        trials, then the top 2 re-trained on 2 more folds each (4 fold trials)``."""
        time = f"; stops after {self.timeout_s:g} s" if self.timeout_s else ""
        if self.n_trials is None:
            return f"trials of {count_of(self.epochs, 'epoch')} until {self.timeout_s:g} s have passed, not cross-validated"
        text = f"{count_of(self.n_trials, 'trial')} of {count_of(self.epochs, 'epoch')} (at most {count_of(self.n_trials * self.epochs, 'epoch')}): "
        if not self.fold_trials:
            return text + f"{count_of(self.n_trials, 'search trial')}, not cross-validated{time}"
        return (text + f"{count_of(self.search_trials, 'search trial')}, then the top {self.cv_top_k} re-trained on "
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
            least 2 more folds, as the budget allows; 0: none.

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
    if k == 0:
        return 0, 1
    extra = min(folds - 1, share // k)
    if extra == 0:
        raise ValueError(f"cv_top_k={k} needs at least {k * CV_SHARE} trials (cross-validation takes at most "
                         f"a third of n_trials={n_trials}); give more trials, a smaller cv_top_k, or cv_top_k=0 for none")
    return k, 1 + extra


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """As the study stores them (JSON): tuples become lists, so equal settings compare equal."""
    return json.loads(json.dumps(values))


