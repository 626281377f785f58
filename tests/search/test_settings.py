"""A study's recorded settings: checked when made, read back from old studies, what the budget buys."""

from dataclasses import asdict

import optuna
import pytest

from kilotune.cli.main import main
from kilotune.search.settings import StudySettings
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
        "12 trials of 10 epochs (at most 120 epochs): 8 search trials, then the top 2 re-trained on 2 more folds each (4 fold trials)")
    assert settings(n_trials=3).budget_text() == "3 trials of 3 epochs (at most 9 epochs): 3 search trials, not cross-validated"
    assert settings(timeout_s=60).budget_text() == "trials of 3 epochs until 60 s have passed, not cross-validated"


def test_prune_checks_only_where_the_pruner_can_decide():
    assert [e for e in range(1, 31) if settings(epochs=30).may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 41) if settings(epochs=40, pruner="hyperband").may_prune_at(e)] == [4, 12, 36]
    assert [e for e in range(1, 31) if settings(epochs=30, pruner="successive-halving").may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 11) if settings(epochs=10, pruner="median").may_prune_at(e)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert not any(settings(epochs=10, pruner="none").may_prune_at(e) for e in range(1, 11))


@pytest.mark.parametrize("pruner", ["hyperband", "successive-halving"])
def test_rung_pruners_decide_only_at_their_rungs(pruner):
    """The rung rule above matches what Optuna's pruners actually do: a trial that reports
    worse than every other at each epoch is pruned at a rung epoch, never in between."""
    study = optuna.create_study(direction="maximize", pruner=settings(epochs=30, pruner=pruner).pruner_for(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned_at = []
    for i in range(60):
        trial = study.ask()
        for epoch in range(1, 31):
            trial.report(float(i % 7) / 10 + epoch / 100, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(i % 7))
    assert pruned_at and set(pruned_at) <= {3, 9, 27}


def test_small_budgets_get_an_early_first_rung_and_a_short_tpe_start_up():
    """The rungs are at 1/9 of a trial times powers of 3, and TPE models from the 6th trial (see sampler_for)."""
    assert [e for e in range(1, 10) if settings(epochs=9).may_prune_at(e)] == [1, 3, 9]
    assert [e for e in range(1, 16) if settings(epochs=15).may_prune_at(e)] == [2, 6]
    assert settings(epochs=9)._brackets == 3 and settings(epochs=15)._brackets == 2 and settings(epochs=2)._brackets == 1
    assert settings(epochs=9).pruner_for()._min_resource == 1
    for pruner in ("hyperband", "median", "none"):
        assert settings(epochs=30, pruner=pruner).sampler_for()._n_startup_trials == 5


def test_objective_epochs_over_the_epochs_are_refused_and_the_default_fits_short_trials(tmp_path):
    """A trial's value is the mean of its last ``objective_epochs`` epochs: more than it trains was accepted."""
    assert settings(epochs=2).objective_epochs == 2 and settings(epochs=5).objective_epochs == 3
    with pytest.raises(ValueError, match=r"^objective_epochs=4 must be from 1 to the 3 epochs a trial trains$"):
        settings(epochs=3, objective_epochs=4)
    study, _ = create_study("old", settings(epochs=2), open_storage(f"sqlite:///{tmp_path}/old.db"))
    study.set_user_attr("objective_epochs", 3)  # as a study made before the refusal records it
    assert StudySettings.from_study(study).objective_epochs == 2, "it loads, valued by the mean of every epoch as before"
