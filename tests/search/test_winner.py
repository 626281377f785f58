"""The objective, the budget's split, the cross-validated ranking, and the fold trials that
live in a companion study."""

import math
import statistics

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from kilotune.search.ensemble import encode_predictions
from kilotune.search.winner import (
    StudyTrials,
    cross_validated_best,
    cv_study_name,
    enqueue_fold_trials,
    load_cv_study,
    objective_value,
    ranking,
    winner_line,
    winner_note,
)
from kilotune.training.config import TrainConfig


def test_the_value_is_the_mean_of_the_last_k_finite_epochs():
    assert objective_value([0.1, 0.5, 0.6, 0.7], 3) == pytest.approx(0.6)
    assert objective_value([0.1, 0.5, 0.6, 0.7], 1) == 0.7
    assert objective_value([0.4, 0.6], 3) == pytest.approx(0.5), "fewer epochs than k: all of them"
    assert objective_value([0.4, 0.6, math.nan], 2) == pytest.approx(0.5), "a diverged epoch is not a value"
    assert objective_value([], 3) == 0.0


def search_trial(study: optuna.Study, value: float, arch: str = "vgg8", preset: str | None = None, val_images: int | None = None) -> int:
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    trial.set_user_attr("config", TrainConfig(arch=arch, epochs=3).to_dict())
    trial.set_user_attr("status", "complete")
    if preset:  # as the warm start enqueues it (search/create.py)
        trial.set_user_attr("preset", preset)
    if val_images:  # as a worker records them: the noise is read from their count
        labels = np.arange(val_images) % 10
        trial.set_user_attr("val_predictions", encode_predictions(np.eye(10)[labels], labels))
    study.tell(trial, value)
    return trial.number


def run_fold_trials(cv: optuna.Study, values: dict[tuple[int, int], float]) -> None:
    """Takes every queued fold trial and tells it the value given for its (cv_of, fold)."""
    while cv.get_trials(states=(TrialState.WAITING,)):
        trial = cv.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        cv.tell(trial, values[trial.user_attrs["cv_of"], trial.user_attrs["fold"]])


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


def test_fold_trials_live_in_a_companion_study_and_the_winner_is_the_best_mean(storage):
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    lucky, steady, third, fourth = (search_trial(study, v) for v in (0.80, 0.78, 0.70, 0.60))
    assert load_cv_study(study, storage) is None, "no companion before cross-validation"
    trials = StudyTrials.read(study, storage)
    assert [t.number for t in trials.ranked()[:3]] == [lucky, steady, third]
    assert cross_validated_best(trials, 3).trial.number == lucky, "before any fold: the best fold-0 value"

    cv = load_cv_study(study, storage, create=True)
    assert cv.study_name == cv_study_name("s") == "s.cv"
    assert enqueue_fold_trials(trials, cv, 3, 5) == 12
    assert enqueue_fold_trials(StudyTrials.read(study, storage), cv, 3, 5) == 0, "queued once"
    queued = cv.get_trials()
    assert sorted((t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in queued) == [(n, f) for n in (lucky, steady, third) for f in (1, 2, 3, 4)]
    assert {t.system_attrs["fixed_params"]["lr"] for t in queued} == {study.trials[n].params["lr"] for n in (lucky, steady, third)}
    assert all(t.user_attrs["preset_config"] == study.trials[t.user_attrs["cv_of"]].user_attrs["config"] for t in queued)

    # The lucky trial's fold 0 was its best fold; the steady one holds up on the others.
    folds = {(lucky, f): 0.70 for f in range(1, 5)} | {(steady, f): 0.78 for f in range(1, 5)} | {(third, f): 0.69 for f in range(1, 5)}
    folds[lucky, 4] = 0.99  # the best value of all trials, on one fold only
    run_fold_trials(cv, folds)
    assert len(study.trials) == 4 and study.best_trial.number == lucky, "the study's best trial is a search trial"
    trials = StudyTrials.read(study, storage)
    ranked = ranking(trials, 3)
    assert [c.trial.number for c in ranked] == [steady, lucky, third, fourth]
    winner = cross_validated_best(trials, 3)
    assert winner.trial.number == steady and winner.mean == pytest.approx(0.78) and winner.stderr == pytest.approx(0.0)
    lucky_cv = ranked[1]
    assert lucky_cv.values == {0: 0.80, 1: 0.70, 2: 0.70, 3: 0.70, 4: 0.99}
    assert lucky_cv.stderr == pytest.approx(statistics.stdev(lucky_cv.values.values()) / math.sqrt(5))
    assert ranked[3].stderr is None and ranked[3].values == {0: 0.60}, "not cross-validated: fold 0 only"
    assert winner_line(trials, 3) == (f"best {winner.mean:.4f} ± 0.0000 over 5 folds (trial {steady}, vgg8); "
                                      "cross-validation 12/12 fold trials done")  # fmt: skip
    assert winner_line(trials, 3, fold_trials=16).endswith("12/16 fold trials done"), "the planned total while folds are still to be queued"


def test_the_note_names_the_cross_validated_winner_and_why_the_best_trial_differs(storage):
    study = optuna.create_study(study_name="n", storage=storage, direction="maximize")
    lucky, steady = search_trial(study, 0.80), search_trial(study, 0.78, arch="resnet9")
    cv = load_cv_study(study, storage, create=True)
    enqueue_fold_trials(StudyTrials.read(study, storage), cv, 2, 3)
    run_fold_trials(cv, {(lucky, 1): 0.70, (lucky, 2): 0.71, (steady, 1): 0.79, (steady, 2): 0.77})
    note = winner_note(StudyTrials.read(study, storage), 2, "n")
    assert note.startswith(f"## kilotune winner: trial {steady} (resnet9)")
    assert "0.7800 ± 0.0058 over 3 folds" in note and f"Best Trial card shows trial {lucky}" in note
    assert "study `n.cv`" in note and len(note) < 2045, "one stored attribute in optuna-dashboard"


def test_a_companion_name_taken_by_another_study_is_refused(storage):
    study = optuna.create_study(study_name="x", storage=storage)
    optuna.create_study(study_name="x.cv", storage=storage).set_user_attr("cv_study_of", "y")
    with pytest.raises(ValueError, match="'x.cv' exists and is not the cross-validation of study 'x'"):
        load_cv_study(study, storage)


def test_a_trial_that_was_a_candidate_keeps_its_folds_when_a_later_one_passes_it(storage):
    study = optuna.create_study(study_name="k", storage=storage, direction="maximize")
    cv = load_cv_study(study, storage, create=True)
    first = search_trial(study, 0.70)
    enqueue_fold_trials(StudyTrials.read(study, storage), cv, 1, 3)
    run_fold_trials(cv, {(first, 1): 0.69, (first, 2): 0.71})
    later = search_trial(study, 0.75, arch="resnet9")  # finished after the budget was spent
    assert winner_line(StudyTrials.read(study, storage), 1).startswith(f"best 0.7500 on fold 0 only (trial {later}, resnet9)")
    assert enqueue_fold_trials(StudyTrials.read(study, storage), cv, 1, 3) == 2, "the new top trial's folds"
    run_fold_trials(cv, {(later, 1): 0.60, (later, 2): 0.62})
    assert [c.trial.number for c in ranking(StudyTrials.read(study, storage), 1)] == [first, later], "both cross-validated, by their means"


def test_an_old_study_keeps_its_fold_trials_among_its_own(storage):
    """Studies from before the companion study: fold trials are read from the study itself."""
    study = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    first, second = search_trial(study, 0.80), search_trial(study, 0.75)
    for candidate, value in ((first, 0.60), (second, 0.75)):
        study.enqueue_trial(study.trials[candidate].params, user_attrs={"cv_of": candidate, "fold": 1})
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        study.tell(trial, value)
    trials = StudyTrials.read(study, storage)
    assert [t.number for t in trials.search] == [first, second] and len(trials.folds) == 2
    assert cross_validated_best(trials, 2).trial.number == second


def test_a_preset_within_one_standard_error_of_the_best_wins_and_the_note_says_why(storage):
    """The one-standard-error rule: at 0.735 on 200 images the error is 0.0312, so a preset at 0.705
    stays the winner and one at 0.70 does not; the ranking below it is unchanged."""
    study = optuna.create_study(study_name="p", storage=storage, direction="maximize")
    preset = search_trial(study, 0.705, arch="resnet9", preset="resnet9-davidnet", val_images=200)
    best, third = search_trial(study, 0.735, val_images=200), search_trial(study, 0.60, val_images=200)
    trials = StudyTrials.read(study, storage)
    assert [c.trial.number for c in ranking(trials, 0)] == [preset, best, third]
    assert [c.trial.number for c in ranking(trials, 0, prefer_presets=False)] == [best, preset, third]
    assert ranking(trials, 0)[1].noise == pytest.approx(math.sqrt(0.735 * 0.265 / 200))
    assert ranking(trials, 0)[0].kept_over.trial.number == best, "the preset says whom it was kept over"
    assert all(c.kept_over is None for c in ranking(trials, 0)[1:] + ranking(trials, 0, prefer_presets=False))
    assert winner_line(trials, 0) == (f"best 0.7050 on fold 0 only (trial {preset}, resnet9), "
                                      f"the preset kept over trial {best}'s 0.7350 (within the noise)")
    note = winner_note(trials, 0, "p")
    assert note.startswith(f"## kilotune winner: trial {preset} (resnet9)")
    assert f"Trial {best} scored higher (0.7350 on fold 0 only) by less than one standard error (0.0312" in note
    assert "resnet9-davidnet is a recipe measured at long training" in note

    far = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    search_trial(far, 0.70, preset="vgg8-reference", val_images=200)
    leader = search_trial(far, 0.735, val_images=200)
    assert cross_validated_best(StudyTrials.read(far, storage), 0).trial.number == leader, "0.035 behind: more than the noise"
    assert "scored higher" not in winner_note(StudyTrials.read(far, storage), 0, "f")
    assert "kept over" not in winner_line(StudyTrials.read(far, storage), 0)


def test_the_noise_shrinks_with_the_folds_and_is_unknown_without_predictions(storage):
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")
    preset = search_trial(study, 0.76, preset="resnet9-davidnet", val_images=200)
    best = search_trial(study, 0.80, val_images=200)
    cv = load_cv_study(study, storage, create=True)
    enqueue_fold_trials(StudyTrials.read(study, storage), cv, 1, 3)  # only the best is cross-validated
    run_fold_trials(cv, {(best, 1): 0.78, (best, 2): 0.79})
    ranked = ranking(StudyTrials.read(study, storage), 1)
    assert ranked[0].trial.number == best, "0.79 over 600 images: the error is 0.0166, the preset 0.03 behind"
    assert ranked[0].noise == pytest.approx(math.sqrt(0.79 * 0.21 / 600))

    old = optuna.create_study(study_name="o", storage=storage, direction="maximize")
    search_trial(old, 0.73, preset="resnet9-davidnet")
    leader = search_trial(old, 0.735)  # a study from before trials recorded their predictions
    assert cross_validated_best(StudyTrials.read(old, storage), 0).trial.number == leader, "no noise known: the best value wins"
