"""What a study is about, recorded in it when it is created: ``StudySettings`` (docs/study-format.md).

Every worker rebuilds the sampler and pruner from the settings recorded in the study, so the
study, not each worker's command line, decides the search.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import optuna
from optuna.storages import BaseStorage

from kilotune.models.names import listing
from kilotune.search import pruners
from kilotune.search.attrs import CREATED_AT, CV_FOLDS, CV_TOP_K, DATASET, KILOTUNE_VERSION, N_TRIALS, SUBSET_PATH
from kilotune.search.samplers import tpe_sampler
from kilotune.search.winner import DEFAULT_OBJECTIVE_EPOCHS, plan_cross_validation
from kilotune.subset.files import count_of
from kilotune.subset.splits import fold_count

SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "successive-halving", "median", "none")
# Small budgets (tens of trials), chosen in docs/search-efficiency.md ("Small budgets"):
TPE_STARTUP_TRIALS = 5  # against Optuna's default 10: better in 5 of 6 cells (search_budget.py kilotune-startup10)
REDUCTION_FACTOR = 3  # replayed against 2 and 4 by bench/rung_choice.py: best or within 1 point


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
    # as the budget allows, resolved on construction (search.winner.plan_cross_validation).
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
            # From before fold trials counted in the budget: the top cv_top_k (3 if unrecorded) were
            # validated on every fold beyond the n_trials search trials, which the total now includes.
            folds = fold_count(recorded.get("val_fraction", 0.2))
            top_k = recorded.get(CV_TOP_K, 3) if folds > 1 and recorded.get(N_TRIALS) is not None else 0
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
        """The study's sampler, seeded with ``seed``; a worker takes ``worker_sampler`` instead."""
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        # group=True keeps multivariate TPE exact over the conditional (define-by-run) space;
        # constant_liar stops parallel workers from sampling the same point (read once a take:
        # search/samplers.py). TPE models from the 6th finished (complete or pruned) trial, the
        # warm-start presets among the first 5: with Optuna's 10, runs of 8-13 trials had 0-2
        # trials sampled by TPE (docs/search-efficiency.md). TPE sees every trial, Hyperband's
        # brackets included (optuna 5.1's TPE reads the study's unfiltered trials, which brackets do not filter).
        return tpe_sampler(
            multivariate=True, group=True, constant_liar=True, n_startup_trials=TPE_STARTUP_TRIALS, seed=self.seed
        )

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

    @property
    def _min_resource(self) -> int:
        # The first rung at 1/9 of a trial (epoch 1 of 9). Replayed on recorded 9-epoch curves
        # at 18-63 epochs a search (bench/rung_choice.py), halving from there kept the best or
        # nearly the best final value: a weak rung (Spearman 0.50-0.65 with the final value) that
        # screens twice the configurations of one at epoch 3 (0.75-0.84). Every halving beat no
        # pruning by 2-4 points. A fraction, as the learning-rate schedules scale with the epochs.
        return max(1, round(self.epochs / 9))

    @property
    def _brackets(self) -> int:
        """Hyperband's bracket count: floor(log_eta(max / min)) + 1."""
        brackets, rung = 1, self._min_resource * REDUCTION_FACTOR
        while rung <= self.epochs:
            brackets, rung = brackets + 1, rung * REDUCTION_FACTOR
        return brackets

    @property
    def _warmup_steps(self) -> int:
        return max(1, self.epochs // 5)

    def pruner_for(self, storage: BaseStorage | None = None) -> optuna.pruners.BasePruner:
        """The study's pruner; on an RDB storage, one whose checks read one indexed query
        (search/pruners.py) instead of every running trial."""
        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        optuna_pruner, kwargs = {
            "hyperband": (optuna.pruners.HyperbandPruner,
                          dict(min_resource=self._min_resource, max_resource=self.epochs, reduction_factor=REDUCTION_FACTOR)),
            "successive-halving": (optuna.pruners.SuccessiveHalvingPruner,
                                   dict(min_resource=self._min_resource, reduction_factor=REDUCTION_FACTOR)),
            "median": (optuna.pruners.MedianPruner, dict(n_startup_trials=5, n_warmup_steps=self._warmup_steps)),
        }[self.pruner]
        return pruners.pruner(optuna_pruner, storage, **kwargs)

    def may_prune_at(self, epoch: int) -> bool:
        """Whether the pruner can stop a trial after this epoch; asking elsewhere only costs storage reads.

        Hyperband's brackets and successive halving decide only at their rungs,
        ``min_resource * REDUCTION_FACTOR**k``; the median pruner decides after its warm-up; "none" never does.
        """
        if self.pruner in ("hyperband", "successive-halving"):
            rung = self._min_resource
            while rung < epoch:
                rung *= REDUCTION_FACTOR
            return rung == epoch
        if self.pruner == "median":
            return epoch > self._warmup_steps
        return False



def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """As the study stores them (JSON): tuples become lists, so equal settings compare equal."""
    return json.loads(json.dumps(values))


