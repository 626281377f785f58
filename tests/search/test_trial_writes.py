"""Buffered writes store exactly what Optuna's own calls store, with Optuna's checks."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage

from kilotune.search.trial_writes import BufferedWrites, PendingWrites, store

PARAMS = {"x": 0.3, "arch": "wrn", "width": 4}
REPORTS = [0.1, math.nan, math.inf, -math.inf, 0.5]


def write_everything(trial: optuna.Trial) -> None:
    """What a worker writes: params by suggests, reports (odd values too), attributes set twice."""
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("arch", ["vgg8", "wrn"])
    trial.suggest_int("width", 1, 16, log=True)
    for step, value in enumerate(REPORTS):
        trial.report(value, step)
    trial.set_user_attr("status", "running")
    trial.set_user_attr("config", {"arch": "wrn", "layers": [1, 2]})
    trial.set_user_attr("status", "complete")


def stored(storage: optuna.storages.BaseStorage, trial_id: int) -> dict:
    frozen = storage.get_trial(trial_id)
    reports = {step: ("nan" if math.isnan(v) else v) for step, v in frozen.intermediate_values.items()}
    return {"params": frozen.params, "distributions": frozen.distributions, "reports": reports, "user_attrs": frozen.user_attrs}


def compare_with_optuna(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage)
    for _ in range(2):
        study.enqueue_trial(PARAMS)
    by_optuna, buffered = study.ask(), study.ask()
    write_everything(by_optuna)
    buffer = BufferedWrites(buffered.storage, buffered._trial_id)
    buffered.storage = buffer
    write_everything(buffered)
    if isinstance(storage, RDBStorage):  # (in memory, the trial and the storage share one object)
        assert stored(study._storage, buffered._trial_id)["reports"] == {}, "nothing is stored before store()"
    writes = buffer.take()
    assert len(writes) == 3 + len(REPORTS) + 2 and len(buffer.take()) == 0
    store(buffer.storage, buffered._trial_id, writes)
    store(buffer.storage, buffered._trial_id, writes)  # a retried transaction changes nothing
    assert stored(study._storage, buffered._trial_id) == stored(study._storage, by_optuna._trial_id)


def test_same_as_optuna_on_sqlite(tmp_path):
    compare_with_optuna(RDBStorage(f"sqlite:///{tmp_path / 'a.db'}"))


def test_same_as_optuna_on_postgresql(pg_url):
    storage = RDBStorage(pg_url)
    compare_with_optuna(storage)
    storage.engine.dispose()


def test_other_storages_get_optunas_calls():
    compare_with_optuna(optuna.storages.InMemoryStorage())


@pytest.fixture
def trial(tmp_path) -> optuna.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=RDBStorage(f"sqlite:///{tmp_path / 'b.db'}")).ask()


def test_a_finished_trial_is_refused(trial):
    trial.study.tell(trial, 0.5)
    with pytest.raises(UpdateFinishedTrialError):
        store(trial.study._storage, trial._trial_id, PendingWrites(reports={1: 0.5}))


def test_an_unknown_trial_is_refused(trial):
    with pytest.raises(KeyError, match="No trial with trial_id 999"):
        store(trial.study._storage, 999, PendingWrites(reports={1: 0.5}))


def test_a_distribution_unlike_the_studys_is_refused(trial):
    trial.suggest_float("x", 0.0, 1.0)
    other = trial.study.ask()
    writes = PendingWrites(params={"x": (0.0, optuna.distributions.CategoricalDistribution(["a", "b"]))})
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        store(trial.study._storage, other._trial_id, writes)
    assert trial.study._storage.get_trial(other._trial_id).params == {}, "nothing of a refused transaction is stored"


def test_a_buffer_keeps_one_trials_writes(trial):
    buffer = BufferedWrites(trial.storage, trial._trial_id)
    with pytest.raises(ValueError, match="trial_id=999"):
        buffer.set_trial_intermediate_value(999, 1, 0.5)
    with pytest.raises(TypeError, match="not JSON serializable"):
        buffer.set_trial_user_attr(trial._trial_id, "bad", object())
    assert buffer.get_trial(trial._trial_id).number == trial.number, "reads go to the storage"
