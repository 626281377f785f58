"""The study's winner: the noise-aware objective, and the top trials cross-validated on other folds.

A trial's value is the mean validation accuracy of its last few epochs (``objective_value``):
one epoch on 200 images moves by several points. Before a study declares its winner, its top
``cv_top_k`` complete search trials are trained again on ``cv_folds - 1`` other folds of the
subset, as "fold trials". They are Optuna trials of a companion study, ``<study>.cv``
(``cv_study_name``), so that the study itself holds only search trials: its best trial (Optuna's
``study.best_trial``, optuna-dashboard's "Best Trial") is a search trial, and TPE models the
search alone. A fold trial carries the candidate's params and exact config, and the user
attributes ``cv_of`` (the candidate's number) and ``fold``. Workers take fold trials once the
search's share of the trial budget is spent and every search trial has finished
(``search.budget.claim_trial``), with the fault tolerance of any trial; they are never pruned. The
winner is the candidate with the best mean over its folds (fold 0 is its own search trial), and
the study's note in optuna-dashboard says which it is (``winner_note``).

A warm-start preset whose value is within one standard error of the best's (the binomial error
of the best's accuracy over the validation images behind it) is the winner instead: the
one-standard-error rule (Breiman et al. 1984), with the presets as the simpler model. They are
recipes measured at long training, which a short trial ranks by early progress (a one-cycle
schedule still climbs when a 6-epoch trial ends), and a lead smaller than the split's noise is not
evidence against them (docs/benchmarks.md section 9).

Studies made before the companion study kept their fold trials among their own trials, outside
the budget; ``StudyTrials.read`` reads those as fold trials too.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from kilotune.search.attrs import CONFIG, CV_OF, CV_STUDY_OF, FOLD, PRESET, PRESET_CONFIG, STATUS, VAL_PREDICTIONS

CV_STUDY_SUFFIX = ".cv"


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


def cv_study_name(study_name: str) -> str:
    """The name of the companion study that holds the fold trials of study ``study_name``."""
    return study_name + CV_STUDY_SUFFIX


def is_cv_study(user_attrs: dict) -> bool:
    """Whether a study with these user attributes is a companion study of fold trials."""
    return CV_STUDY_OF in user_attrs


def load_cv_study(study: optuna.Study, storage: BaseStorage, *, create: bool = False) -> optuna.Study | None:
    """The companion study of ``study``'s fold trials; None if it has none yet (and not ``create``).

    Its sampler is random: a fold trial's params are all fixed by its candidate's.
    """
    name = cv_study_name(study.study_name)
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    try:
        cv = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        if not create:
            return None
        cv = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                 direction=study.direction, load_if_exists=True)
        cv.set_user_attr(CV_STUDY_OF, study.study_name)
    if cv.user_attrs.get(CV_STUDY_OF, study.study_name) != study.study_name:
        raise ValueError(f"study {name!r} exists and is not the cross-validation of study {study.study_name!r}")
    return cv


@dataclass(frozen=True)
class StudyTrials:
    """A study's trials in one read: its search trials, and the fold trials of its cross-validation."""

    search: list[FrozenTrial]
    folds: list[FrozenTrial]
    direction: optuna.study.StudyDirection = optuna.study.StudyDirection.MAXIMIZE

    @classmethod
    def read(cls, study: optuna.Study, storage: BaseStorage) -> StudyTrials:
        """Reads ``study`` and its companion study of fold trials (``load_cv_study``)."""
        cv = load_cv_study(study, storage)
        return cls.of(study.get_trials(deepcopy=False), cv.get_trials(deepcopy=False) if cv is not None else [], study.direction)

    @classmethod
    def of(cls, trials: list[FrozenTrial], cv_trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> StudyTrials:
        """A study's trials (its search trials, and fold trials from before the companion study)
        and its companion study's, as read by a caller that holds both studies."""
        folds = [t for t in trials if is_fold_trial(t)] + cv_trials
        return cls([t for t in trials if not is_fold_trial(t)], folds, direction)

    def ranked(self) -> list[FrozenTrial]:
        """COMPLETE search trials that finished training, best value first.

        A diverged run is told COMPLETE with its last finite accuracy so the sampler learns from
        it, but it is not a configuration anyone should retrain, so it is left out here.
        """
        complete = [t for t in self.search if t.state == TrialState.COMPLETE and _finished_training(t)]
        # Ties go to the earlier trial, so the ranking does not change as the study grows.
        return sorted(complete, key=lambda t: (self._sign * t.value, t.number))

    @property
    def _sign(self) -> int:
        return -1 if self.direction == optuna.study.StudyDirection.MAXIMIZE else 1


def _finished_training(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(STATUS) != "diverged" and trial.value is not None and math.isfinite(trial.value)


@dataclass(frozen=True)
class CrossValidated:
    """A search trial with its value on every fold evaluated so far (fold 0: its own value)."""

    trial: FrozenTrial
    values: dict[int, float]
    kept_over: CrossValidated | None = None  # a preset's: the better trial the one-SE rule ranked it above

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def stderr(self) -> float | None:
        """Standard error of the mean over folds; None with a single fold."""
        if len(self.values) < 2:
            return None
        return statistics.stdev(self.values.values()) / math.sqrt(len(self.values))

    @property
    def noise(self) -> float | None:
        """The binomial standard error of ``mean`` over the validation images behind it (every
        fold's; a fold's count from the trial's recorded predictions); None if it recorded none."""
        stored = self.trial.user_attrs.get(VAL_PREDICTIONS)
        if not stored or not 0.0 <= self.mean <= 1.0:
            return None
        images = stored["shape"][0] * len(self.values)
        return math.sqrt(self.mean * (1.0 - self.mean) / images)

    def describe(self) -> str:
        """``0.8120 ± 0.0110 over 5 folds`` (or ``0.8120 on fold 0 only``)."""
        if self.stderr is None:
            return f"{self.mean:.4f} on fold 0 only"
        return f"{self.mean:.4f} ± {self.stderr:.4f} over {len(self.values)} folds"


def ranking(trials: StudyTrials, k: int, *, prefer_presets: bool = True) -> list[CrossValidated]:
    """Every complete search trial, best first: the cross-validated ones by their mean over folds,
    then the others by their own value; first of all, a preset within one standard error of the
    best (``preferred_preset``) unless ``prefer_presets`` is False.

    Cross-validated are the top ``k`` and any other trial with fold trials (it was in the top
    ``k`` when they were queued), so no fold trial is wasted.

    Args:
        trials: The study's trials (``StudyTrials.read``).
        k: How many top trials are cross-validated (the study's ``cv_top_k``).
    """
    ranked = trials.ranked()
    folds: dict[int, dict[int, float]] = {}
    for t in trials.folds:
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            folds.setdefault(t.user_attrs[CV_OF], {})[t.user_attrs[FOLD]] = t.value
    evaluated = [CrossValidated(t, {0: t.value, **folds.get(t.number, {})}) for t in ranked]
    validated = [c for i, c in enumerate(evaluated) if i < k or c.trial.number in folds]
    validated.sort(key=lambda c: trials._sign * c.mean)  # stable: equal means keep the search's order
    numbers = {c.trial.number for c in validated}
    ordered = validated + [c for c in evaluated if c.trial.number not in numbers]
    if prefer_presets and trials.direction == optuna.study.StudyDirection.MAXIMIZE and (preset := preferred_preset(ordered)):
        ordered.remove(preset)
        ordered.insert(0, dataclasses.replace(preset, kept_over=ordered[0]))
    return ordered


def preferred_preset(ranked: list[CrossValidated]) -> CrossValidated | None:
    """The best warm-start preset within one standard error (``noise``) of the best of ``ranked``,
    if the best is no preset (the one-standard-error rule; module docstring); else None."""
    if not ranked or PRESET in ranked[0].trial.user_attrs or (noise := ranked[0].noise) is None:
        return None
    near = [c for c in ranked[1:] if PRESET in c.trial.user_attrs and c.mean >= ranked[0].mean - noise]
    return near[0] if near else None


def cross_validated_best(trials: StudyTrials, k: int) -> CrossValidated | None:
    """The study's winner: the best cross-validated mean among its top trials, or a preset within
    one standard error of it (``ranking``); None if none completed."""
    ranked = ranking(trials, k)
    return ranked[0] if ranked else None


def enqueue_fold_trials(trials: StudyTrials, cv_study: optuna.Study, k: int, cv_folds: int) -> int:
    """Queues in ``cv_study`` the fold trials the current top ``k`` still lack; returns how many.

    Call it under the study's budget lock (``claim_trial`` does), so no two workers queue the
    same fold. A fold trial that exists in any state (a retry carries the attributes) is not
    queued again.

    Args:
        trials: The study's trials, just read.
        cv_study: Its companion study (``load_cv_study``).
        k: How many top trials to cross-validate.
        cv_folds: The folds each is validated on: folds 1 to ``cv_folds - 1`` are queued.
    """
    existing = {_fold_key(t) for t in trials.folds}
    queued = 0
    for candidate in trials.ranked()[:k]:
        for fold in range(1, cv_folds):
            if (candidate.number, fold) in existing or CONFIG not in candidate.user_attrs:
                continue
            # preset_config makes the fold trial train the candidate's exact config (search/space.py).
            attrs = {CV_OF: candidate.number, FOLD: fold, PRESET_CONFIG: candidate.user_attrs[CONFIG]}
            cv_study.enqueue_trial(candidate.params, user_attrs=attrs)
            queued += 1
    return queued


def winner_line(trials: StudyTrials, k: int, fold_trials: int = 0) -> str:
    """One line for a progress display: the winner so far and how far cross-validation is.

    E.g. ``best 0.8120 ± 0.0110 over 5 folds (trial 7, resnet9); cross-validation 12/12 fold trials done``;
    a preset the one-standard-error rule kept names the trial it was kept over.

    Args:
        trials: The study's trials (``StudyTrials.read``).
        k: How many top trials are cross-validated (the study's ``cv_top_k``).
        fold_trials: The fold trials the budget plans (``StudySettings.fold_trials``): the count's
            total while the leaders' folds are queued before the others'.
    """
    best = cross_validated_best(trials, k)
    if best is None:
        return "best -"
    line = f"best {best.describe()} (trial {best.trial.number}, {trial_arch(best.trial)})"
    if (ahead := best.kept_over) is not None:  # else "best 0.74" right after "trial 2 complete 0.745" reads as a bug
        line += f", the preset kept over trial {ahead.trial.number}'s {ahead.mean:.4f} (within the noise)"
    # A fold trial's retries carry its attributes: count folds, not attempts.
    if trials.folds:
        done = {_fold_key(t) for t in trials.folds if _settled(t)}
        planned = max(fold_trials, len({_fold_key(t) for t in trials.folds}))  # a straggler's folds come on top
        line += f"; cross-validation {len(done)}/{planned} fold trials done"
    return line


def winner_note(trials: StudyTrials, k: int, study_name: str) -> str:
    """The study's note in optuna-dashboard (Markdown): the cross-validated winner, the top
    trials' means, and why the dashboard's "Best Trial" (the best on fold 0 alone) may differ.

    Kept under optuna-dashboard's 2,045 characters, so a note is one stored attribute.
    """
    ranked = ranking(trials, k)
    if not ranked:
        return f"## kilotune: {study_name}\n\nNo trial has completed yet."
    best, validated = ranked[0], [c for c in ranked if c.stderr is not None][:5]
    lines = [f"## kilotune winner: trial {best.trial.number} ({trial_arch(best.trial)})", "",
             f"Validation accuracy **{best.describe()}**: what `kilotune export` writes and `kilotune retrain` trains."]
    top = trials.ranked()[0]
    if (displaced := best.kept_over) is not None:
        lines += ["", f"Trial {displaced.trial.number} scored higher ({displaced.describe()}) by less than one standard "
                      f"error ({displaced.noise:.4f}, the validation images' noise). The preset "
                      f"{best.trial.user_attrs[PRESET]} is a recipe measured at long training: a short trial's lead "
                      "within the noise does not displace it."]
    elif top.number != best.trial.number:
        lines += ["", f"The Best Trial card shows trial {top.number}, the best on fold 0 alone ({top.value:.4f}); "
                      "on the other folds it did worse than the winner."]
    if validated:
        lines += ["", "| trial | arch | mean | std. error | folds |", "| ---: | --- | ---: | ---: | ---: |"]
        lines += [f"| {c.trial.number} | {trial_arch(c.trial)} | {c.mean:.4f} | {c.stderr:.4f} | {len(c.values)} |" for c in validated]
        lines += ["", f"Fold trials: study `{cv_study_name(study_name)}`."]
    else:
        lines += ["", "Not cross-validated yet: this is the best on fold 0 (200 images, about 3 points of noise)."]
    return "\n".join(lines)


def trial_arch(trial: FrozenTrial) -> str:
    """The architecture a trial trained: its recorded config's, else its sampled param."""
    return str(trial.user_attrs.get(CONFIG, {}).get("arch") or trial.params.get("arch", "?"))


def fold_label(trial: FrozenTrial) -> str:
    """How a display names a fold trial: ``fold trial 2 (trial 3 on fold 2)``."""
    return f"fold trial {trial.number} (trial {trial.user_attrs[CV_OF]} on fold {trial.user_attrs[FOLD]})"


def _fold_key(trial: FrozenTrial) -> tuple[int, int]:
    return trial.user_attrs[CV_OF], trial.user_attrs[FOLD]


def _settled(trial: FrozenTrial) -> bool:
    """Complete, or failed for good (a failure the worker did not queue a retry for)."""
    return trial.state == TrialState.COMPLETE or trial.user_attrs.get(STATUS) == "failed"
