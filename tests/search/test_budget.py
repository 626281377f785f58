"""The global budget against real storages: counted as the trials say, claimed under its lock, extended while workers run."""

import time

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.search.budget import _budget_rows, budget_left, claim_trial, counts_toward_budget, current_budget, study_timed_out
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study, extend_budget, load_study
from kilotune.training.config import TrainConfig
from tests.search.test_settings import settings


def test_budget_counts_finished_and_queued_trials_but_not_dead_workers(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/b.db")
    study, _ = create_study("b", settings(n_trials=2), storage)
    study.tell(study.ask(), 0.5)
    dead = study.ask()
    study.tell(dead, state=optuna.trial.TrialState.FAIL)  # a stale trial: no "failed" status
    assert budget_left(study, settings(n_trials=2), 0.0)
    study.enqueue_trial({})
    study.tell(study.ask(), 0.6)
    assert not budget_left(study, settings(n_trials=2), 0.0)
    study.enqueue_trial({})  # a retry queued after the budget was reached still runs
    assert budget_left(study, settings(n_trials=2), 0.0)


def test_claim_counts_the_budget_as_the_trials_say_and_takes_queued_trials_first(pg_url):
    storage = open_storage(pg_url)
    study, _ = create_study("claims", settings(n_trials=6, cv_top_k=0), storage)
    for state, status in [(TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"), (TrialState.FAIL, "failed"),
                          (TrialState.FAIL, "interrupted"), (TrialState.FAIL, "returned")]:
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.set_user_attr("status", status)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # running
    study.enqueue_trial({"lr": 0.25})  # a queued retry or preset
    counted, waiting = _budget_rows(storage, study._study_id)
    trials = study.get_trials()
    assert counted == sum(counts_toward_budget(t) for t in trials) == 5, "interrupted and returned trials are retried, not counted"
    assert waiting == [t._trial_id for t in trials if t.state == TrialState.WAITING]

    queued = claim_trial(study, study_settings := load_study("claims", storage)[1], storage, time.time())
    assert queued.number == 6 and queued.suggest_float("lr", 1e-3, 1.0) == 0.25, "the queued trial comes first"
    fresh = claim_trial(study, study_settings, storage, time.time())
    assert fresh.number == 7 and study.get_trials()[7].state == TrialState.RUNNING
    assert 1e-3 <= fresh.suggest_float("lr", 1e-3, 1.0) <= 1.0, "a claimed trial samples and stores its params"
    assert claim_trial(study, study_settings, storage, time.time()) is None, "6 counted: the budget is spent"
    assert budget_left(study, study_settings, time.time()) is False, "the generic check agrees"


@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_the_search_trials_spent_the_budget_hands_out_fold_trials_of_a_companion_study(backend, pg_url, tmp_path):
    storage = open_storage(pg_url if backend == "postgresql" else str(tmp_path / "cv.journal"))
    study, _ = create_study(f"cv-{backend}", settings(n_trials=11, cv_top_k=2, cv_folds=5), storage)
    recorded = load_study(study.study_name, storage)[1]
    assert (recorded.search_trials, recorded.fold_trials) == (3, 8)
    running = [claim_trial(study, recorded, storage, time.time()) for _ in range(3)]
    for trial in running[:2]:
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.set_user_attr("config", TrainConfig(epochs=3).to_dict())
        study.tell(trial, 0.5 + trial.number / 100)
    # Trial 2 still runs: it may pass trial 1 (0.51) but cannot push it out of the top 2; trial 0 it may.
    early = [claim_trial(study, recorded, storage, time.time()) for _ in range(4)]
    assert [(t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in early] == [(1, f) for f in (1, 2, 3, 4)], "the certain candidate's folds"
    assert claim_trial(study, recorded, storage, time.time()) is None, "no fold of a candidate the running trial may push out"
    for trial in early:
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.study.tell(trial, 0.99)
    last = running[2]
    last.suggest_float("lr", 1e-3, 1.0)
    last.set_user_attr("config", TrainConfig(epochs=3).to_dict())
    study.tell(last, 0.6)
    folds = [(t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in early]
    while (trial := claim_trial(study, recorded, storage, time.time())) is not None:
        assert trial.study.study_name == f"cv-{backend}.cv", "fold trials live in the companion study"
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.study.tell(trial, 0.99)  # better than any search trial, on its fold
        folds.append((trial.user_attrs["cv_of"], trial.user_attrs["fold"]))
        assert len(folds) <= 8, "claims never end"
    assert sorted(folds) == [(n, f) for n in (1, 2) for f in (1, 2, 3, 4)], "the top 2, on folds 1-4"
    assert len(study.get_trials()) == 3 and study.best_trial.number == 2, "the study's best trial is a search trial"
    if backend == "postgresql":
        assert _budget_rows(storage, study._study_id) == (3, [])
    assert not budget_left(study, recorded, time.time())

    plain, _ = create_study(f"no-cv-{backend}", settings(n_trials=1, cv_top_k=0), storage)
    plain_settings = load_study(plain.study_name, storage)[1]
    plain.tell(claim_trial(plain, plain_settings, storage, time.time()), 0.5)
    assert claim_trial(plain, plain_settings, storage, time.time()) is None, "cv_top_k=0: no fold trials"


def test_a_queued_fold_trial_is_handed_out_while_search_trials_run(pg_url):
    """A fold trial already queued (a killed fold trial's retry, say) is inside the budget: it
    is handed out even while enough search trials run that no candidate is certain."""
    from kilotune.search.winner import load_cv_study

    storage = open_storage(pg_url)
    study, _ = create_study("cv-queued", settings(n_trials=7, cv_top_k=2, cv_folds=3), storage)
    recorded = load_study(study.study_name, storage)[1]
    assert all(claim_trial(study, recorded, storage, time.time()) for _ in range(3)), "the search's 3 trials"
    assert claim_trial(study, recorded, storage, time.time()) is None, "3 search trials run: no candidate is certain"
    load_cv_study(study, storage, create=True).enqueue_trial({}, user_attrs={"cv_of": 0, "fold": 1})
    retry = claim_trial(study, recorded, storage, time.time())
    assert retry is not None and retry.user_attrs == {"cv_of": 0, "fold": 1}


def test_an_extension_is_recorded_and_running_workers_follow_it(pg_url):
    storage = open_storage(pg_url)
    study, _ = create_study("grow", settings(n_trials=1), storage)
    stale = load_study("grow", storage)[1]  # what a running worker loaded when it started
    first = claim_trial(study, stale, storage, time.time())
    study.tell(first, 0.5)
    assert claim_trial(study, stale, storage, time.time()) is None, "1 of 1 spent"
    entry = extend_budget(study, n_trials=3)
    assert entry["from"] == {"n_trials": 1, "timeout_s": None} and entry["to"] == {"n_trials": 3, "timeout_s": None}
    assert [claim_trial(study, stale, storage, time.time()) is not None for _ in range(3)] == [True, True, False]
    extend_budget(study, timeout_s=0.001)  # a timeout, from the study's creation, has passed: nothing more
    extend_budget(study, n_trials=10)
    assert claim_trial(study, stale, storage, time.time()) is None
    assert budget_left(study, stale, time.time()) is False, "the generic check reads the budget too"
    history = optuna.load_study(study_name="grow", storage=storage).user_attrs["budget_history"]
    assert [h["to"] for h in history] == [{"n_trials": 3, "timeout_s": None}, {"n_trials": 3, "timeout_s": 0.001},
                                          {"n_trials": 10, "timeout_s": 0.001}]  # fmt: skip
    with pytest.raises(ValueError, match="n_trials=0 must be at least 1"):
        extend_budget(study, n_trials=0)
    with pytest.raises(ValueError, match="nothing to change"):
        extend_budget(study)
    assert len(optuna.load_study(study_name="grow", storage=storage).user_attrs["budget_history"]) == 3, "a refused change is not recorded"


def test_the_budget_reads_wait_out_a_restarting_database(monkeypatch):
    """The slow suite's restart test: a worker read the study's timeout between trials while the
    server restarted and exited with a traceback (StorageInternalError)."""
    from kilotune.search import storage as storage_module

    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.set_user_attr("timeout_s", 60.0)
    study.set_user_attr("n_trials", 7)
    real, calls = storage.get_study_user_attrs, []

    def restarting(study_id):
        calls.append(study_id)
        if len(calls) % 2:  # every other read finds the server down
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        return real(study_id)

    monkeypatch.setattr(storage, "get_study_user_attrs", restarting)
    assert study_timed_out(study, settings(), time.time()) is False
    assert current_budget(study, settings()).n_trials == 7
    assert len(calls) == 4
