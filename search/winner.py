"""The study's winner: the noise-aware objective, and the top trials cross-validated on other folds.

A trial's value is the mean validation accuracy of its last few epochs (``objective_value``):
one epoch on 200 images moves by several points. Before a study declares its best, its top-k
complete trials are trained again on the other folds of the subset, as "fold trials": ordinary
Optuna trials, enqueued with the candidate's params and exact config and the user attributes
``cv_of`` (the candidate's number) and ``fold``. Workers take them once the search budget is
spent (``search.study.claim_trial``), with the fault tolerance of any trial; they do not count
against the budget and are never pruned. The winner is the candidate with the best mean over
its folds (fold 0 is its own search trial).

TPE sees fold trials as the real observations they are (the same params, another validation
fold); they arrive after the search budget is spent, so at most a straggler's sampling reads them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from kilotune.search.attrs import CONFIG, CV_OF, CV_TOP_K, FOLD, PRESET_CONFIG, STATUS

DEFAULT_OBJECTIVE_EPOCHS = 3
DEFAULT_CV_TOP_K = 3


def objective_value(val_accuracies: Sequence[float], last: int) -> float:
    """A trial's value: the mean validation accuracy of its ``last`` finite epochs (0.0 if none).

    Args:
        val_accuracies: Validation accuracy per epoch, in order (a training history).
        last: How many final epochs to average; fewer if the trial ran fewer.
    """
    finite = [a for a in val_accuracies if math.isfinite(a)]
    return statistics.fmean(finite[-last:]) if finite else 0.0


def is_fold_trial(trial: FrozenTrial) -> bool:
    """Whether ``trial`` re-evaluates a candidate on another fold (user attribute ``cv_of``)."""
    return CV_OF in trial.user_attrs


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE search trials that finished training, best value first (fold trials left out).

    A diverged run is told COMPLETE with its last finite accuracy so the sampler learns from
    it, but it is not a configuration anyone should retrain, so it is left out here.
    """
    return _ranked(study.get_trials(deepcopy=False), study.direction)


def _ranked(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not is_fold_trial(t) and _finished_training(t)]
    sign = -1 if direction == optuna.study.StudyDirection.MAXIMIZE else 1
    # Ties go to the earlier trial, so the ranking does not change as the study grows.
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def _finished_training(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(STATUS) != "diverged" and trial.value is not None and math.isfinite(trial.value)


@dataclass(frozen=True)
class CrossValidated:
    """A search trial with its value on every fold evaluated so far (fold 0: its own value)."""

    trial: FrozenTrial
    values: dict[int, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def stderr(self) -> float | None:
        """Standard error of the mean over folds; None with a single fold."""
        if len(self.values) < 2:
            return None
        return statistics.stdev(self.values.values()) / math.sqrt(len(self.values))

    def describe(self) -> str:
        """``0.8120 ± 0.0110 over 5 folds`` (or ``0.8120 on fold 0 only``)."""
        if self.stderr is None:
            return f"{self.mean:.4f} on fold 0 only"
        return f"{self.mean:.4f} ± {self.stderr:.4f} over {len(self.values)} folds"


def cv_candidates(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best complete search trials: the ones to cross-validate."""
    return ranked_trials(study)[:k]


def ranking(study: optuna.Study, k: int | None = None, trials: list[FrozenTrial] | None = None) -> list[CrossValidated]:
    """Every complete search trial, best first: the cross-validated ones by their mean over folds,
    then the others by their own value.

    Cross-validated are the top ``k`` and any other trial with fold trials (it was in the top
    ``k`` when they were queued), so no fold trial is wasted.

    Args:
        study: The study.
        k: How many top trials are cross-validated; default the study's ``cv_top_k``.
        trials: The study's trials, where the caller has just read them; default read here.
    """
    k = _top_k(study) if k is None else k
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    ranked = _ranked(trials, study.direction)
    folds: dict[int, dict[int, float]] = {}
    for t in trials:
        if is_fold_trial(t) and t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            folds.setdefault(t.user_attrs[CV_OF], {})[t.user_attrs[FOLD]] = t.value
    evaluated = [CrossValidated(t, {0: t.value, **folds.get(t.number, {})}) for t in ranked]
    validated = [c for i, c in enumerate(evaluated) if i < k or c.trial.number in folds]
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    validated.sort(key=lambda c: sign * c.mean)  # stable: equal means keep the search's order
    numbers = {c.trial.number for c in validated}
    return validated + [c for c in evaluated if c.trial.number not in numbers]


def cross_validated_best(study: optuna.Study, k: int | None = None, trials: list[FrozenTrial] | None = None) -> CrossValidated | None:
    """The study's winner: the best cross-validated mean among its top trials; None if none completed."""
    ranked = ranking(study, k, trials)
    return ranked[0] if ranked else None


def enqueue_fold_trials(study: optuna.Study, k: int, folds: int) -> int:
    """Queues the fold trials the current top ``k`` still lack; returns how many it queued.

    Call it under the study's budget lock (``claim_trial`` does), so no two workers queue the
    same fold. A fold trial that exists in any state (a retry carries the attributes) is not
    queued again.

    Args:
        study: The study.
        k: How many top trials to cross-validate.
        folds: The subset's fold count; folds 1 to ``folds - 1`` are queued.
    """
    trials = study.get_trials(deepcopy=False)
    existing = {(t.user_attrs[CV_OF], t.user_attrs[FOLD]) for t in trials if is_fold_trial(t)}
    queued = 0
    for candidate in _ranked(trials, study.direction)[:k]:
        for fold in range(1, folds):
            if (candidate.number, fold) in existing or CONFIG not in candidate.user_attrs:
                continue
            # preset_config makes the fold trial train the candidate's exact config (search/space.py).
            attrs = {CV_OF: candidate.number, FOLD: fold, PRESET_CONFIG: candidate.user_attrs[CONFIG]}
            study.enqueue_trial(candidate.params, user_attrs=attrs)
            queued += 1
    return queued


def winner_line(study: optuna.Study, k: int | None = None, trials: list[FrozenTrial] | None = None) -> str:
    """One line for a progress display: the winner so far and how far cross-validation is.

    E.g. ``best 0.8120 ± 0.0110 over 5 folds (trial 7, resnet9); cross-validation 12/12 fold trials done``.
    ``trials``: as in ``ranking``, so a display's poll reads the study once.
    """
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    best = cross_validated_best(study, k, trials)
    if best is None:
        return "best -"
    line = f"best {best.describe()} (trial {best.trial.number}, {trial_arch(best.trial)})"
    # A fold trial's retries carry its attributes: count folds, not attempts.
    fold_trials = [t for t in trials if is_fold_trial(t)]
    if fold_trials:
        done = {_fold_key(t) for t in fold_trials if _settled(t)}
        line += f"; cross-validation {len(done)}/{len({_fold_key(t) for t in fold_trials})} fold trials done"
    return line


def trial_arch(trial: FrozenTrial) -> str:
    """The architecture a trial trained: its recorded config's, else its sampled param."""
    return str(trial.user_attrs.get(CONFIG, {}).get("arch") or trial.params.get("arch", "?"))


def _fold_key(trial: FrozenTrial) -> tuple[int, int]:
    return trial.user_attrs[CV_OF], trial.user_attrs[FOLD]


def _settled(trial: FrozenTrial) -> bool:
    """Complete, or failed for good (a failure the worker did not queue a retry for)."""
    return trial.state == TrialState.COMPLETE or trial.user_attrs.get(STATUS) == "failed"


def _top_k(study: optuna.Study) -> int:
    return int(study.user_attrs.get(CV_TOP_K, DEFAULT_CV_TOP_K))
