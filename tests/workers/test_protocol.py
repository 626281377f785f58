"""The worker's study protocol: TrialSource takes trials within the budget and gives them back;
TrialRecorder stores writes together off the training thread, in order, all of them after flush,
errors not lost."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from kilotune.search.retries import stale_trial_ids, RetryKilledTrials
from kilotune.search.settings import StudySettings
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study
from kilotune.search.trial_writes import BufferedWrites, store
from tests.conftest import wait_for
from kilotune.training.config import TrainConfig
from kilotune.workers.protocol import TrialRecorder, TrialSource


def new_trial(storage: optuna.storages.BaseStorage) -> optuna.Trial:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage).ask()


@pytest.fixture
def sqlite_trial(tmp_path) -> optuna.Trial:
    """A trial on SQLite: the recorder stores its writes in one transaction on Optuna's schema."""
    return new_trial(open_storage(f"sqlite:///{tmp_path / 'trial.db'}"))


@pytest.fixture(params=["memory", "sqlite"])
def trial(request) -> optuna.Trial:
    """A trial on Optuna's in-memory storage (Optuna's own calls store the writes) or on SQLite."""
    return new_trial(optuna.storages.InMemoryStorage()) if request.param == "memory" else request.getfixturevalue("sqlite_trial")


@pytest.fixture
def source(tmp_path) -> TrialSource:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    settings = StudySettings(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json",
                             subset_checksum="sha256:bb", epochs=3, n_trials=2, space={"arch": ["vgg8", "resnet9"]})
    study, _ = create_study("protocol", settings, storage)
    return TrialSource(url, storage, study, settings)


def test_take_samples_a_config_beats_and_stops_at_the_budget(source):
    started = time.time()
    first, second = source.take(started), source.take(started)
    for taken in (first, second):
        assert isinstance(taken.sampled_config(), TrainConfig) and taken.config.arch in ("vgg8", "resnet9")
        assert taken.heartbeat.thread.is_alive(), "a taken trial must beat, or a dead worker's trial is never retried"
        assert source.storage.get_trial(taken.trial._trial_id).state == TrialState.RUNNING
        source.study.tell(taken.trial, 0.5)
        taken.heartbeat.stop()
    assert source.take(started) is None, "n_trials=2: a third trial is over the budget"


@pytest.mark.parametrize("waiter", ["its own worker", "another worker"])
def test_a_take_waiting_for_the_last_running_trial_returns_soon_after_it_ends(source, monkeypatch, waiter):
    """At a study's end an ask-ahead take waits for the running trials. It slept a whole heartbeat
    between looks, keeping the last workers up to 10 s after the last trial: now it reads the
    running trials once a second, whichever worker's trial it waits on."""
    from kilotune.workers import protocol

    monkeypatch.setattr(protocol, "HEARTBEAT_SECONDS", 60)
    started = time.time()
    first, second = source.take(started), source.take(started)
    source.study.tell(first.trial, 0.5)
    first.heartbeat.stop()
    waiting_source = source if waiter == "its own worker" else TrialSource(source.url, source.storage, source.study, source.settings)
    result: list[object] = []
    waiting = threading.Thread(target=lambda: result.append(waiting_source.take(started)))
    waiting.start()
    waiting.join(timeout=1.5)
    assert waiting.is_alive(), "trial 1 runs: the budget of 2 is not spent for good, the take waits"
    source.study.tell(second.trial, 0.5)
    ended = time.monotonic()
    second.heartbeat.stop()
    waiting.join(timeout=10)  # far less than the 60 s heartbeat it would otherwise sleep
    assert not waiting.is_alive() and result == [None], f"the take of {waiter} still waits after the last trial ended"
    assert time.monotonic() - ended < 5.0, "a poll of 1 s, not the 60 s heartbeat"


def test_a_fold_trial_goes_to_a_free_worker_not_to_a_take_ahead_of_a_training_one(tmp_path):
    """A worker takes its next trial while one trains. At a study's end that take would hold a
    fold trial (a fixed few) for the whole of its worker's trial while another worker sat idle:
    it leaves fold trials to a free worker, and takes one as soon as its own trial ends."""
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    storage = open_storage(url)
    settings = StudySettings(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json", subset_checksum="sha256:bb",
                             epochs=3, n_trials=4, cv_top_k=2, cv_folds=2, space={"arch": ["vgg8", "resnet9"]})
    study, _ = create_study("cv-ahead", settings, storage)
    busy, free = (TrialSource(url, storage, study, settings) for _ in range(2))
    started = time.time()
    training, done = busy.take(started), free.take(started)  # the search's 2 trials
    for taken in (training, done):
        taken.trial.set_user_attr("config", taken.sampled_config().to_dict())
    study.tell(done.trial, 0.6)
    done.heartbeat.stop()
    busy.training.set()
    result: list[object] = []
    ahead = threading.Thread(target=lambda: result.append(busy.take(started)))
    ahead.start()
    ahead.join(timeout=1.5)
    assert ahead.is_alive(), "the take ahead of a training trial waits: no fold trial for it"
    fold = free.take(started)
    assert fold is not None and fold.trial.user_attrs["cv_of"] == done.trial.number, "the free worker trains the certain candidate's fold"
    study.tell(training.trial, 0.5)
    training.heartbeat.stop()
    busy.training.clear()
    ended = time.monotonic()
    ahead.join(timeout=10)
    assert not ahead.is_alive() and result[0] is not None, "its own trial over, the worker takes the fold trial left"
    assert result[0].trial.user_attrs["cv_of"] == training.trial.number and time.monotonic() - ended < 5.0
    for taken in (fold, result[0]):
        taken.heartbeat.stop()


def test_a_handed_back_trial_is_taken_again_with_the_same_config(source):
    started = time.time()
    taken = source.take(started)
    source.hand_back(taken)
    assert not taken.heartbeat.thread.is_alive()
    returned = source.storage.get_trial(taken.trial._trial_id)
    assert returned.state == TrialState.FAIL and returned.user_attrs["status"] == "returned"
    again = source.take(started)
    assert again.trial.params == taken.trial.params and again.sampled_config() == taken.sampled_config()
    again.heartbeat.stop()


def test_a_trial_handed_back_after_the_timeout_is_not_queued_again(source):
    taken = source.take(time.time())
    source.hand_back(taken, requeue=False)
    states = [t.state for t in source.study.get_trials()]
    assert states == [TrialState.FAIL], "no WAITING copy: no worker would ever take it"


def test_a_config_the_space_cannot_build_fails_when_its_turn_comes(source, monkeypatch):
    def broken(space, trial, epochs):
        raise ValueError("width=3.0 is out of range")

    monkeypatch.setattr(type(source.space), "suggest", broken)
    taken = source.take(time.time())
    with pytest.raises(ValueError, match="width=3.0"):
        taken.sampled_config()
    taken.heartbeat.stop()


def test_writes_are_stored_in_order_after_flush(sqlite_trial):
    trial = sqlite_trial
    with TrialRecorder(trial) as recorder:
        for step in range(30):
            recorder.report(step / 100, step)
        recorder.set_user_attr("status", "running")
        recorder.set_user_attr("status", "done")  # the later write wins: order is kept
        recorder.flush()
        stored = trial.study._storage.get_trial(trial._trial_id)
        assert stored.intermediate_values == {step: step / 100 for step in range(30)}
        assert stored.user_attrs == {"status": "done"}
    assert not isinstance(trial.storage, BufferedWrites), "after close the trial writes to its storage again"


def test_writes_are_stored_together_on_the_recorders_thread(trial, monkeypatch):
    stores: list[tuple[str, int]] = []
    monkeypatch.setattr("kilotune.workers.protocol.store", lambda storage, trial_id, writes: stores.append((threading.current_thread().name, len(writes))))
    with TrialRecorder(trial, linger_s=60) as recorder:
        for step in range(30):
            recorder.report(step / 100, step)
        recorder.set_user_attr("status", "running")
        assert stores == [], "nothing asked for them yet: they wait"
        recorder.flush()
        assert stores == [(f"recorder-{trial.number}", 31)], "one store, off the caller's thread"


def test_a_write_waits_at_most_linger_s(sqlite_trial):
    trial = sqlite_trial
    stored = lambda: trial.study._storage.get_trial(trial._trial_id).intermediate_values  # noqa: E731
    with TrialRecorder(trial, linger_s=0.3) as recorder:
        recorder.report(0.5, 1)
        assert stored() == {}
        wait_for(lambda: stored() == {1: 0.5}, 5.0, "the report, stored after linger_s without a flush", poll_s=0.05)


def test_a_value_optuna_refuses_is_refused_at_the_call(trial):
    with TrialRecorder(trial) as recorder:
        with pytest.raises(TypeError, match="supposed to be a float"):
            recorder.report("not a number", 0)
        with pytest.raises(TypeError, match="not JSON serializable"):
            recorder.set_user_attr("bad", object())
    assert trial.study._storage.get_trial(trial._trial_id).intermediate_values == {}


def test_a_failed_store_is_raised_at_flush_and_later_writes_are_not_stored(sqlite_trial, monkeypatch):
    trial = sqlite_trial
    monkeypatch.setattr("kilotune.workers.protocol.store", lambda *args: (_ for _ in ()).throw(ValueError("disk full")))
    recorder = TrialRecorder(trial, linger_s=0.1)
    recorder.report(0.5, 1)
    wait_for(lambda: recorder._error is not None, 5.0, "the store to fail", poll_s=0.05)
    monkeypatch.undo()  # the database is back, but a gap must not be stored
    recorder.report(0.6, 2)
    with pytest.raises(ValueError, match="disk full"):
        recorder.flush()
    recorder.close()
    assert trial.study._storage.get_trial(trial._trial_id).intermediate_values == {}


def test_a_transient_database_error_is_retried_not_lost(sqlite_trial, monkeypatch):
    trial = sqlite_trial
    monkeypatch.setattr("kilotune.search.storage.time.sleep", lambda s: None)
    failures = [sqlalchemy.exc.OperationalError("insert", {}, Exception("server closed the connection"))]

    def flaky_store(storage, trial_id, writes) -> None:
        if failures:
            raise failures.pop()
        store(storage, trial_id, writes)

    monkeypatch.setattr("kilotune.workers.protocol.store", flaky_store)
    with TrialRecorder(trial) as recorder:
        recorder.report(0.25, 3)
    assert trial.study._storage.get_trial(trial._trial_id).intermediate_values == {3: 0.25}
    assert failures == []


def test_a_closed_recorder_refuses_writes(trial):
    recorder = TrialRecorder(trial)
    recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.set_user_attr("late", 1)


def test_leaving_on_an_exception_keeps_that_exception(trial, monkeypatch):
    monkeypatch.setattr("kilotune.workers.protocol.store", lambda *args: (_ for _ in ()).throw(ValueError("disk full")))
    with pytest.raises(KeyError, match="training broke"):
        with TrialRecorder(trial) as recorder:
            recorder.report(0.5, 0)  # its store fails at close: the training error must win
            raise KeyError("training broke")


def test_take_stores_the_params_in_one_transaction(source, monkeypatch):
    calls: list[int] = []

    def counted_store(storage, trial_id, writes) -> None:
        calls.append(len(writes.params))
        store(storage, trial_id, writes)

    monkeypatch.setattr("kilotune.workers.protocol.store", counted_store)
    taken = source.take(time.time())
    stored = source.storage.get_trial(taken.trial._trial_id)
    assert stored.params == taken.trial.params and stored.distributions == taken.trial.distributions
    assert calls == [len(stored.params)] and len(stored.params) > 5
    assert not isinstance(taken.trial.storage, BufferedWrites)
    taken.heartbeat.stop()


def test_progress_tells_training_from_taken_ahead_and_failed_from_handed_back(source):
    from kilotune.search.report import outcome
    from kilotune.workers.display import Snapshot

    started = time.time()
    training, ahead = source.take(started), source.take(started)
    training.trial.set_user_attr("status", "running")  # what the worker writes when training starts
    snapshot = Snapshot.read(source.study, source.storage, source.settings, 1.0)
    assert [r.trial for r in snapshot.running] == [f"trial {training.trial.number}"], "a trial taken ahead is not training"
    source.hand_back(ahead)  # FAIL "returned": handed back, outside the budget, not failed
    training.trial.set_user_attr("status", "failed")
    source.study.tell(training.trial, state=TrialState.FAIL)
    snapshot = Snapshot.read(source.study, source.storage, source.settings, 2.0)
    assert snapshot.running == [] and snapshot.finished == 1, "the failed trial counts, the handed-back one does not"
    assert [outcome(t) for t in snapshot.trials.search] == ["fail", "handed back", "waiting"]
    for taken in (training, ahead):
        taken.heartbeat.stop()


@pytest.fixture
def beating_source(tmp_path, monkeypatch) -> TrialSource:
    """A source whose storage fails a trial 1 s after its last heartbeat (the worker's is 0.2 s)."""
    monkeypatch.setattr("kilotune.workers.protocol.HEARTBEAT_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path / 'beating.db'}"
    open_storage(url)  # Optuna's schema, and WAL
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1, heartbeat_stale_trial_callback=RetryKilledTrials())
    settings = StudySettings(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json",
                             subset_checksum="sha256:bb", epochs=3, n_trials=2, space={"arch": ["vgg8", "resnet9"]})
    study, _ = create_study("beating", settings, storage)
    return TrialSource(url, storage, study, settings)


def test_the_last_take_waits_for_a_dead_workers_trial_and_takes_its_retry(beating_source):
    source, started = beating_source, time.time()
    dead, alive = source.take(started), source.take(started)
    dead.trial.set_user_attr("worker", "host:1")
    dead.trial.set_user_attr("status", "running")
    dead.heartbeat.stop()  # its worker died: the trial stays RUNNING, counted against the budget
    source.study.tell(alive.trial, 0.5)
    alive.heartbeat.stop()
    retry = source.take(started)  # the budget is all taken, but a trial runs: wait, fail it stale, take its retry
    assert retry is not None, "a dead worker's trial must not stay RUNNING when the budget is spent"
    assert retry.trial.params == dead.trial.params and retry.sampled_config() == dead.sampled_config()
    assert source.storage.get_trial(dead.trial._trial_id).state == TrialState.FAIL
    assert {"worker", "status"}.isdisjoint(retry.trial._cached_frozen_trial.user_attrs), "the dead attempt's worker and status"
    source.study.tell(retry.trial, 0.6)
    retry.heartbeat.stop()
    assert source.take(started) is None, "nothing runs and the budget is spent"


def test_a_stop_ends_the_wait_for_running_trials(beating_source):
    source, started = beating_source, time.time()
    taken = [source.take(started), source.take(started)]
    source.stop.set()
    assert source.take(started) is None
    for t in taken:
        t.heartbeat.stop()


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(beating_source, monkeypatch):
    monkeypatch.setattr("kilotune.search.retries.GRACE_SECONDS", 1)
    source, started = beating_source, time.time()
    never_beat = source._claim(started)  # killed between its ask and its heartbeat: Optuna never judges it stale
    alive = source.take(started)
    source.study.tell(alive.trial, 0.5)
    alive.heartbeat.stop()
    guard = threading.Timer(120, source.stop.set)  # without the fix the take would wait for ever: stop it, and fail
    guard.start()
    try:
        retry = source.take(started)
    finally:
        guard.cancel()
    assert retry is not None and RetryKilledTrials.retry_history(retry.trial._cached_frozen_trial) == [never_beat.number]
    assert source.storage.get_trial(never_beat._trial_id).state == TrialState.FAIL
    retry.heartbeat.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def two_workers(request, tmp_path, monkeypatch) -> tuple[TrialSource, TrialSource]:
    """Two workers' sources (each its own storage, as two processes) on one study of 2 trials,
    whose trials go stale 1 s after their last heartbeat (the workers beat every 0.2 s)."""
    monkeypatch.setattr("kilotune.search.retries.HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr("kilotune.search.retries.GRACE_SECONDS", 1)
    monkeypatch.setattr("kilotune.workers.protocol.HEARTBEAT_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path / 'two.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_server")()
    settings = StudySettings(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json",
                             subset_checksum="sha256:bb", epochs=3, n_trials=2, space={"arch": ["vgg8", "resnet9"]})
    sources = []
    for _ in range(2):
        storage = open_storage(url)
        study, _ = create_study("two", settings, storage)
        sources.append(TrialSource(url, storage, study, settings))
    yield tuple(sources)
    for source in sources:
        source.storage.engine.dispose()


def budgeted(source: TrialSource) -> list[tuple[int, str, list[int] | None]]:
    from kilotune.search.budget import counts_toward_budget

    return [(t.number, t.state.name, t.system_attrs.get("retry_history")) for t in source.study.get_trials() if counts_toward_budget(t)]


@pytest.mark.parametrize("failed_by", ["a stale heartbeat", "a hand-back"])
def test_a_claim_while_another_worker_fails_and_retries_a_trial_takes_the_retry_not_a_new_trial(two_workers, failed_by, monkeypatch):
    # Issue 17: a worker failed a trial (stale, interrupted or handed back), and before it queued
    # the retry another worker's claim counted neither (a FAIL trial does not count, its retry
    # was not there yet) and took a new trial: 13 budgeted trials for 12 once the retry ran.
    a, b = two_workers
    started = time.time()
    failing = a.take(started)
    done = b.take(started)
    b.study.tell(done.trial, 0.5)
    done.heartbeat.stop()
    if failed_by == "a stale heartbeat":
        failing.heartbeat.stop()  # its worker died: RUNNING, and stale a grace period after its last beat
        # SQLite's clock, which judges heartbeats, counts whole seconds: 1-2 s from the last beat.
        wait_for(lambda: stale_trial_ids(a.study, a.storage) == [failing.trial._trial_id], 10.0, "trial 0 to go stale", poll_s=0.1)

    queue_retry, claims = RetryKilledTrials.__call__, []

    def retry_while_b_claims(self, study, trial) -> None:
        if not claims:  # b claims between a's fail of trial 0 and a's retry of it
            claiming = threading.Thread(target=lambda: claims.append(b._claim(started)))
            claims.append(claiming)
            claiming.start()
            claiming.join(timeout=2.0)  # b's claim takes ~10 ms; with the fix it waits for a's retry
        queue_retry(self, study, trial)

    monkeypatch.setattr(RetryKilledTrials, "__call__", retry_while_b_claims)
    if failed_by == "a stale heartbeat":
        ours = a._claim(started)
    else:
        a.hand_back(failing)
        ours = None
    claims[0].join(timeout=30)
    theirs = claims[1]
    monkeypatch.undo()
    taken = [t for t in (ours, theirs) if t is not None]
    assert budgeted(a) == [(1, "COMPLETE", None), (2, "RUNNING", [0])], "one retry of trial 0, and no new trial in its place"
    assert [t.number for t in taken] == [2], "one of the two workers takes the retry; the budget is spent for the other"
    failing.heartbeat.stop()


@pytest.mark.parametrize("stored", [False, True], ids=["before the retry is stored", "as it is committed"])
def test_a_database_error_between_failing_a_stale_trial_and_queuing_its_retry_loses_no_retry_and_doubles_none(two_workers, stored, monkeypatch):
    # Optuna's fail_stale_trials, run again after the error, no longer finds the failed trial (it
    # is not running): the retry was lost, and a new trial took its place. And a retry whose
    # commit's answer was lost must not be queued twice when the worker tries again.
    a, b = two_workers
    started = time.time()
    dead = a.take(started)
    dead.heartbeat.stop()
    wait_for(lambda: stale_trial_ids(a.study, a.storage) == [dead.trial._trial_id], 10.0, "trial 0 to go stale", poll_s=0.1)
    monkeypatch.setattr("kilotune.search.storage.time.sleep", lambda s: None)
    queue_retry, errors = RetryKilledTrials.__call__, [sqlalchemy.exc.OperationalError("insert", {}, Exception("server closed the connection"))]

    def lose_the_connection(self, study, trial) -> None:
        if stored:
            queue_retry(self, study, trial)
        if errors:
            raise errors.pop()
        queue_retry(self, study, trial)

    monkeypatch.setattr(RetryKilledTrials, "__call__", lose_the_connection)
    retry = a.take(started)
    monkeypatch.undo()
    assert errors == [] and RetryKilledTrials.retry_history(retry.trial._cached_frozen_trial) == [0]
    assert budgeted(a) == [(1, "RUNNING", [0])], "the retry queued once, and taken"
    retry.heartbeat.stop()


def test_a_retry_is_queued_once_however_often_it_is_asked_for(two_workers):
    a, _ = two_workers
    taken = a.take(time.time())
    a.hand_back(taken)
    a.retry_callback(a.study, a.storage.get_trial(taken.trial._trial_id))  # a second worker, or a second attempt
    assert [(t.number, t.state.name) for t in a.study.get_trials()] == [(0, "FAIL"), (1, "WAITING")]
    taken.heartbeat.stop()
