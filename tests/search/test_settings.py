"""A study's recorded settings: checked when made, read back from old studies, what the budget buys."""

from dataclasses import asdict

import optuna
import pytest

from kilotune.cli.main import main
from kilotune.search.settings import StudySettings, plan_cross_validation
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study, extend_budget


def settings(**changes) -> StudySettings:
    base = dict(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json", subset_checksum="sha256:bb", epochs=3)
    return StudySettings(**{**base, **changes})


@pytest.mark.parametrize("flag", ["--pruner", "--sampler"])
def test_a_wrong_choice_is_refused_before_storage_or_data(flag, tmp_path, capsys):
    """Neither the unreachable storage nor the missing dataset is touched: the choice is checked first."""
    code = main(["study", "create", "--study", "s", "--storage", "postgresql://nobody@127.0.0.1:1/none",
                 "--data-dir", str(tmp_path / "nothing-here"), flag, "asha"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"kilotune study: error: {flag[2:]}='asha' is not allowed; choose one of ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"sampler": "grid"}, "sampler='grid' is not allowed"), ({"pruner": "x"}, "pruner='x'"), ({"n_trials": 0}, "n_trials=0"),
     ({"epochs": 0}, "epochs=0 must be at least 1"),
     ({"val_fraction": 0.6, "cv_top_k": 3}, r"val_fraction=0.6 leaves 1 fold, too few to cross-validate the top 3: give val_fraction <= 0.5, or cv_top_k=0"),
     ({"n_trials": 6, "cv_top_k": 3}, r"cv_top_k=3 needs at least 9 trials"),
     ({"n_trials": 4, "cv_top_k": 1, "cv_folds": 5}, r"n_trials=4 leaves no search trial beside the 4 fold trials")],
)
def test_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        settings(**changes)


def test_a_hold_out_over_half_is_allowed_without_cross_validation(tmp_path):
    assert settings(val_fraction=0.6, cv_top_k=0).folds == 1
    assert settings(val_fraction=0.6, n_trials=30).fold_trials == 0, "as the budget allows: one fold allows none"
    old = optuna.create_study(study_name="half", storage=open_storage(f"sqlite:///{tmp_path}/h.db"))
    for key, value in {**asdict(settings(val_fraction=0.6, n_trials=8, cv_top_k=0)), "cv_top_k": 3}.items():
        if key != "cv_folds":  # as a study made before such settings were refused recorded them
            old.set_user_attr(key, value)
    assert StudySettings.from_study(old).cv_top_k == 0, "it still loads, as the study it was: never cross-validated"


def test_an_old_study_reads_its_fold_trials_as_beyond_its_search_budget(tmp_path):
    old = optuna.create_study(study_name="old", storage=open_storage(f"sqlite:///{tmp_path}/o.db"))
    for key, value in asdict(settings(n_trials=8, cv_top_k=0)).items():
        if key not in ("cv_top_k", "cv_folds"):  # recorded before either was
            old.set_user_attr(key, value)
    recorded = StudySettings.from_study(old)
    assert (recorded.cv_top_k, recorded.cv_folds, recorded.search_trials, recorded.n_trials) == (3, 5, 8, 20)
    extend_budget(old, n_trials=24)
    assert StudySettings.from_study(old).search_trials == 12, "extend records the total and the split from then on"


def test_the_budget_says_what_it_buys():
    assert settings(n_trials=12, epochs=10).budget_text() == (
        "12 trials of 10 epochs (at most 120 epochs): 8 search trials, the top 2 of them re-trained on 2 more folds each (4 fold trials)")
    assert settings(n_trials=3).budget_text() == "3 trials of 3 epochs (at most 9 epochs): 3 search trials, not cross-validated"
    assert settings(timeout_s=60).budget_text() == "trials of 3 epochs until 60 s have passed, not cross-validated"


def test_objective_epochs_over_the_epochs_are_refused_and_the_default_is_the_last_tenth(tmp_path):
    """A trial's value is the mean of its last ``objective_epochs`` epochs: more than it trains was accepted;
    by default a tenth of the trial, so a short trial is valued by its last epoch, where its schedule ends."""
    assert [settings(epochs=e).objective_epochs for e in (2, 6, 19, 20, 30, 100)] == [1, 1, 1, 2, 3, 10]
    with pytest.raises(ValueError, match=r"^objective_epochs=4 must be from 1 to the 3 epochs a trial trains$"):
        settings(epochs=3, objective_epochs=4)
    study, _ = create_study("old", settings(epochs=2), open_storage(f"sqlite:///{tmp_path}/old.db"))
    study.set_user_attr("objective_epochs", 3)  # as a study made before the refusal records it
    assert StudySettings.from_study(study).objective_epochs == 2, "it loads, valued by the mean of every epoch as before"


@pytest.mark.parametrize(("n_trials", "top_k", "plan"), [
    (12, None, (2, 3)),  # the main job: 8 search trials, the top 2 on 2 more folds
    (30, None, (3, 4)),
    (45, None, (3, 5)),
    (200, None, (3, 5)),  # never more folds than the subset has
    (6, None, (0, 1)),  # a third of 6: the top 1 on 2 more folds would change no decision
    (5, None, (0, 1)),  # a third of 5 is 1 fold trial: too few to compare two candidates
    (6, 1, (1, 3)),  # asked for: the winner's mean over 3 folds
    (3, None, (0, 1)),
    (None, None, (0, 1)),  # a time budget only
    (30, 0, (0, 1)),
    (12, 1, (1, 5)),
    (12, 4, (4, 2)),
])
def test_cross_validation_takes_at_most_a_third_of_the_trial_budget(n_trials, top_k, plan):
    k, folds = plan_cross_validation(n_trials, 5, top_k)
    assert (k, folds) == plan
    if n_trials:
        assert k * (folds - 1) <= n_trials // 3


def test_a_top_k_the_budget_cannot_cross_validate_is_refused_by_name():
    with pytest.raises(ValueError, match=r"cv_top_k=3 needs at least 9 trials"):
        plan_cross_validation(6, 5, 3)
    with pytest.raises(ValueError, match=r"cv_top_k=-1"):
        plan_cross_validation(30, 5, -1)
    assert plan_cross_validation(30, 1, None) == (0, 1), "one fold: nothing to cross-validate on"
