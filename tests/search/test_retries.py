"""Retries of dead workers' trials: a copy without the dead attempt's worker, given up after too many kills after training."""

import optuna
from optuna.trial import TrialState

from kilotune.search.budget import counts_toward_budget
from kilotune.search.retries import RetryKilledTrials


def attempt_killed(study: optuna.Study, *, trains: bool) -> optuna.trial.FrozenTrial:
    """The next attempt (a queued retry, else a new trial) dies running: FAIL, as ``fail_stale_trials`` leaves it."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0)
    trial.set_user_attr("config", {"lr": trial.params["lr"]})
    for key, value in {"worker": "host:1", "worker_id": "w1", "status": "running"}.items():
        trial.set_user_attr(key, value)
    if trains:
        trial.report(0.5, len(trial._cached_frozen_trial.intermediate_values) + 1)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[-1]


def test_a_retry_is_queued_without_the_dead_attempts_worker_and_status():
    study = optuna.create_study(direction="maximize")
    RetryKilledTrials()(study, attempt_killed(study, trains=True))
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.intermediate_values == {1: 0.5}
    assert retry.user_attrs == {"config": {"lr": study.trials[0].params["lr"]}}, "no worker, worker_id or status of the dead attempt"
    assert RetryKilledTrials.retry_history(retry) == [0]


def test_attempts_killed_before_training_do_not_use_up_the_retries():
    study = optuna.create_study(direction="maximize")
    callback = RetryKilledTrials(max_retry=3)
    for _ in range(6):
        callback(study, attempt_killed(study, trains=False))
    callback(study, attempt_killed(study, trains=True))
    assert study.trials[-1].state == TrialState.WAITING, "six kills before training and one after: still retried"
    assert len({t.params["lr"] for t in study.trials}) == 1


def test_a_configuration_killed_after_training_too_often_is_given_up_with_a_reason():
    study = optuna.create_study(direction="maximize")
    callback = RetryKilledTrials(max_retry=3)
    for kill in range(1, 5):
        callback(study, attempt_killed(study, trains=True))
        assert study.trials[-1].state == (TrialState.WAITING if kill <= 3 else TrialState.FAIL)
    record = study.trials[-1]
    assert record.user_attrs["status"] == "failed" and "killed after training 4 times" in record.user_attrs["fail_reason"]
    assert "[0, 1, 2, 3]" in record.user_attrs["fail_reason"] and counts_toward_budget(record)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    assert sum(counts_toward_budget(t) for t in study.trials) == 1, "one configuration, one trial of the budget"
