"""The objective, the cross-validated ranking, and the fold trials a spent budget queues."""

import math
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.search.winner import (
    cross_validated_best,
    cv_candidates,
    enqueue_fold_trials,
    is_fold_trial,
    objective_value,
    ranking,
    winner_line,
)
from kilotune.workers.config import TrainConfig


def test_the_value_is_the_mean_of_the_last_k_finite_epochs():
    assert objective_value([0.1, 0.5, 0.6, 0.7], 3) == pytest.approx(0.6)
    assert objective_value([0.1, 0.5, 0.6, 0.7], 1) == 0.7
    assert objective_value([0.4, 0.6], 3) == pytest.approx(0.5), "fewer epochs than k: all of them"
    assert objective_value([0.4, 0.6, math.nan], 2) == pytest.approx(0.5), "a diverged epoch is not a value"
    assert objective_value([], 3) == 0.0


def search_trial(study: optuna.Study, value: float, arch: str = "vgg8") -> int:
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    trial.set_user_attr("config", TrainConfig(arch=arch, epochs=3).to_dict())
    trial.set_user_attr("status", "complete")
    study.tell(trial, value)
    return trial.number


def run_fold_trials(study: optuna.Study, values: dict[tuple[int, int], float]) -> None:
    """Takes every queued trial and tells it the value given for its (cv_of, fold)."""
    while any(t.state == TrialState.WAITING for t in study.get_trials()):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        study.tell(trial, values[trial.user_attrs["cv_of"], trial.user_attrs["fold"]])


def test_fold_trials_retrain_the_top_k_and_the_winner_is_the_best_mean():
    study = optuna.create_study(direction="maximize")
    lucky, steady, third, fourth = (search_trial(study, v) for v in (0.80, 0.78, 0.70, 0.60))
    assert [t.number for t in cv_candidates(study, 3)] == [lucky, steady, third]
    assert cross_validated_best(study).trial.number == lucky, "before any fold: the best fold-0 value"

    assert enqueue_fold_trials(study, 3, 5) == 12
    assert enqueue_fold_trials(study, 3, 5) == 0, "queued once"
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert all(is_fold_trial(t) for t in queued)
    assert sorted((t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in queued) == [(n, f) for n in (lucky, steady, third) for f in (1, 2, 3, 4)]
    assert {t.system_attrs["fixed_params"]["lr"] for t in queued} == {study.trials[n].params["lr"] for n in (lucky, steady, third)}
    assert all(t.user_attrs["preset_config"] == study.trials[t.user_attrs["cv_of"]].user_attrs["config"] for t in queued)

    # The lucky trial's fold 0 was its best fold; the steady one holds up on the others.
    folds = {(lucky, f): 0.70 for f in range(1, 5)} | {(steady, f): 0.78 for f in range(1, 5)} | {(third, f): 0.69 for f in range(1, 5)}
    run_fold_trials(study, folds)
    ranked = ranking(study)
    assert [c.trial.number for c in ranked] == [steady, lucky, third, fourth]
    winner = cross_validated_best(study)
    assert winner.trial.number == steady and winner.mean == pytest.approx(0.78) and winner.stderr == pytest.approx(0.0)
    lucky_cv = ranked[1]
    assert lucky_cv.values == {0: 0.80, 1: 0.70, 2: 0.70, 3: 0.70, 4: 0.70}
    assert lucky_cv.mean == pytest.approx(0.72)
    assert lucky_cv.stderr == pytest.approx(statistics.stdev([0.80, 0.70, 0.70, 0.70, 0.70]) / math.sqrt(5))
    assert ranked[3].stderr is None and ranked[3].values == {0: 0.60}, "not cross-validated: fold 0 only"
    assert winner_line(study) == (f"best {winner.mean:.4f} ± 0.0000 over 5 folds (trial {steady}, vgg8); "
                                  "cross-validation 12/12 fold trials done")  # fmt: skip


def test_a_trial_that_was_a_candidate_keeps_its_folds_when_a_later_one_passes_it():
    study = optuna.create_study(direction="maximize")
    first = search_trial(study, 0.70)
    enqueue_fold_trials(study, 1, 3)
    run_fold_trials(study, {(first, 1): 0.69, (first, 2): 0.71})
    later = search_trial(study, 0.75, arch="resnet9")  # finished after the budget was spent
    assert winner_line(study).startswith(f"best 0.7500 on fold 0 only (trial {later}, resnet9)")
    assert enqueue_fold_trials(study, 1, 3) == 2, "the new top trial's folds"
    run_fold_trials(study, {(later, 1): 0.60, (later, 2): 0.62})
    assert [c.trial.number for c in ranking(study, 1)] == [first, later], "both cross-validated, by their means"
