"""The worker's side of the study protocol: taking a trial, beating for it, recording it, giving it back.

Kept apart from the training loop and free of any deep-learning backend (it imports only optuna
and search/), so bench/storage_scale.py measures exactly these calls in 64 light processes.

Where the storage time goes, and why the calls are arranged this way (docs/bench-storage.md):
taking a trial (budget lock, ask, ~15 suggests with TPE's reads) costs ~0.2-0.3 s, so the worker
takes the next one while the current one trains; reports and user attributes are ~40 writes a
trial that nothing reads until the next prune check, so a ``TrialRecorder`` thread stores them
a few at a time. Params, reports and attributes are stored by ``search.trial_writes``: one
transaction for many writes, where Optuna makes one each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from kilotune.search.attrs import STATUS
from kilotune.search.space import SearchSpace
from kilotune.search.budget import budget_lock, claim_trial, study_timed_out
from kilotune.search.retries import fail_and_retry, stale_trial_ids, unbeaten_trial_ids, GRACE_SECONDS, HEARTBEAT_SECONDS, RetryKilledTrials
from kilotune.search.settings import StudySettings
from kilotune.search.storage import with_retry
from kilotune.search import optuna_internals
from kilotune.search.trial_writes import BufferedWrites, store
from kilotune.search.winner import load_cv_study
from kilotune.training.config import TrainConfig

log = logging.getLogger("kilotune.worker")
RUNNING_POLL_SECONDS = 1.0  # at a study's end, how often a waiting worker reads whether the last trials ran out
# Reports are read at prune checks (which flush) and by the dashboard; the chaos test shortens it.
RECORDER_LINGER_SECONDS = float(os.environ.get("KILOTUNE_RECORDER_LINGER_SECONDS", 5.0))


class Heartbeat:
    """Records a trial's heartbeat every few seconds; a dead worker's trial goes stale and is retried."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def start(self) -> None:
        if hasattr(self.storage, "record_heartbeat"):
            with_retry(lambda: self.storage.record_heartbeat(self.trial_id), what="heartbeat")
            self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # the database may be restarting; the next beat tries again
                log.warning("heartbeat failed: %s", type(e).__name__)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()


@dataclass
class TakenTrial:
    """A trial a worker took: its heartbeat runs, its config is sampled (or failed to be)."""

    trial: optuna.Trial
    heartbeat: Heartbeat
    config: TrainConfig | None = None
    error: Exception | None = None

    def sampled_config(self) -> TrainConfig:
        """The config, or the error sampling it raised, so it fails the trial like a failed training."""
        if self.error is not None:
            raise self.error
        assert self.config is not None
        return self.config


class TrialSource:
    """Takes trials from one study within its global budget, and gives back those not trained.

    Args:
        url: The storage URL (it picks the budget lock: PostgreSQL advisory lock or a file lock).
        storage: The storage opened from ``url``.
        study: The study, loaded from ``storage``.
        settings: The study's recorded settings (budget, epochs, space).
        stop: Set to stop waiting for the last running trials (see ``take``).

    Attributes:
        training: Set by the worker while it trains a trial. A take meanwhile (the next trial,
            taken ahead) claims search trials only and waits for a fold trial until it is clear.
    """

    def __init__(
        self, url: str, storage: BaseStorage, study: optuna.Study, settings: StudySettings, stop: threading.Event | None = None
    ) -> None:
        self.url, self.storage, self.study, self.settings = url, storage, study, settings
        self.stop = stop or threading.Event()
        self.training = threading.Event()
        self.space = SearchSpace.from_spec(settings.space)
        self.retry_callback = RetryKilledTrials(max_retry=3)
        self.lock_held_seconds = 0.0  # by the last take
        self._cv_study: optuna.Study | None = None

    def _wait_while_running(self, running: set[tuple[str, int]], seconds: float, *, ahead: bool = False) -> None:
        """Waits up to ``seconds`` (a heartbeat, to fail stale trials), less once ``stop`` is set,
        a trial of ``running`` (study name, trial number) ends, this worker's or another's, or,
        for a take ``ahead`` of this worker's trial, once ``training`` is clear.

        The worker takes its next trial while one trains, so at a study's end its take waits for
        the running trials, its own among them. Reading them every ``RUNNING_POLL_SECONDS`` (a
        read, not a claim of the budget lock) lets the last workers stop within a second of the
        last trial, not a heartbeat after it."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.stop.wait(min(left, RUNNING_POLL_SECONDS)):
            if ahead and not self.training.is_set():
                return
            if not running <= {(study.study_name, t.number) for study, trials in self._running_trials() for t in trials}:
                return

    def _running_trials(self) -> list[tuple[optuna.Study, list[FrozenTrial]]]:
        """Each study (the search's, the fold trials') with its running trials."""
        return [(study, with_retry(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), what="reading running trials"))
                for study in self.studies()]

    def studies(self) -> list[optuna.Study]:
        """The study, and its companion study of fold trials once there is one (search/winner.py)."""
        if self._cv_study is None:
            self._cv_study = with_retry(lambda: load_cv_study(self.study, self.storage), what="reading the study")
        return [self.study] if self._cv_study is None else [self.study, self._cv_study]

    def take(self, started: float) -> TakenTrial | None:
        """Asks for a trial and samples its config; None when the study's budget is spent.

        A budget spent while trials still run is not yet spent for good: a dead worker's trial
        counts until its heartbeat goes stale, and then it is failed and a retry queued. So
        until no trial runs (or the study times out, or ``stop`` is set) the last workers wait,
        failing stale trials every heartbeat, and take the retries.

        Args:
            started: When this worker started (the timeout's origin if the study has no record of it).
        """
        told = False
        while True:
            ahead = self.training.is_set()  # this worker's trial trains: fold trials are for a free worker
            trial = self._claim(started, fold_trials=not ahead)
            if trial is not None:
                break
            if self.stop.is_set() or study_timed_out(self.study, self.settings, started):
                return None
            running: set[tuple[str, int]] = set()
            for study, trials in self._running_trials():
                self._fail_and_retry(study, with_retry(lambda: unbeaten_trial_ids(study, self.storage, trials), what="reading running trials"))
                running |= {(study.study_name, t.number) for t in trials}
            if not running and not ahead:
                return None
            if not told:
                told = True
                log.info("the search trials of study %r are spent but %d trials run: waiting for them to finish or go stale (%ds)",
                         self.study.study_name, len(running), GRACE_SECONDS)
            self._wait_while_running(running, HEARTBEAT_SECONDS, ahead=ahead)
        heartbeat = Heartbeat(self.storage, optuna_internals.trial_id(trial))  # from now on a dead worker's trial is retried
        heartbeat.start()
        try:
            return TakenTrial(trial, heartbeat, config=self._suggest(trial))
        except Exception as e:
            return TakenTrial(trial, heartbeat, error=e)

    def _claim(self, started: float, *, fold_trials: bool = True) -> optuna.Trial | None:
        """Fails stale trials (queuing their retries), then asks within the budget, under its lock
        (``claim_trial``: a fold trial too unless ``fold_trials`` is False)."""
        for study in self.studies():
            self._fail_and_retry(study, with_retry(lambda: stale_trial_ids(study, self.storage), what="reading stale trials"))

        def ask() -> optuna.Trial | None:
            with self.budget_lock():
                locked = time.perf_counter()
                try:
                    return claim_trial(self.study, self.settings, self.storage, started, fold_trials=fold_trials)
                finally:
                    # Every worker's ask queues for this lock: the fleet asks at most 1/hold trials a second.
                    self.lock_held_seconds = time.perf_counter() - locked

        return with_retry(ask, what="ask")

    def _suggest(self, trial: optuna.Trial) -> TrainConfig:
        """The space's ~15 suggests, their params stored in one transaction, not one each."""
        buffer = BufferedWrites(trial.storage, optuna_internals.trial_id(trial))
        trial.storage = buffer  # type: ignore[assignment]
        try:
            config = self.space.suggest(trial, self.settings.epochs)
        finally:
            trial.storage = buffer.storage
            with_retry(lambda: store(buffer.storage, optuna_internals.trial_id(trial), buffer.take()), what="storing the trial's params")
        return config

    def budget_lock(self) -> contextlib.AbstractContextManager[None]:
        """The study's budget lock (``search.budget.budget_lock``), which every claim takes."""
        return budget_lock(self.url, self.study.study_name, self.storage)

    def _fail_and_retry(self, study: optuna.Study, trial_ids: list[int]) -> None:
        """Fails dead workers' trials of ``study`` (the study or its fold trials' companion) and
        queues their retries under the budget lock (``fail_and_retry``); the lock is taken only
        when there are some (rarely)."""
        if not trial_ids:
            return
        failed: set[int] = set()

        def locked() -> None:
            with self.budget_lock():
                fail_and_retry(study, self.storage, trial_ids, failed)

        with_retry(locked, what="failing and retrying dead workers' trials")

    def fail_and_retry(self, trial: optuna.Trial, tell: Callable[[], None]) -> None:
        """Fails a trial with ``tell`` and queues its WAITING copy (same params and reports) for any worker.

        Both under the budget lock, so no claim counts the study between them (``fail_and_retry``
        in search/retries.py). ``tell`` must be idempotent (``skip_if_finished``): a database error
        repeats both, and the copy is queued once.
        """
        def locked() -> None:
            with self.budget_lock():
                tell()
                self.retry_callback(trial.study, self.storage.get_trial(optuna_internals.trial_id(trial)))

        with_retry(locked, what="retry")

    def hand_back(self, taken: TakenTrial, *, requeue: bool = True) -> None:
        """Gives back a trial taken but not trained: FAIL "returned" (outside the budget).

        Args:
            taken: The trial.
            requeue: Queue a WAITING copy for another worker; not when the study's time is up.
        """
        trial = taken.trial
        with_retry(lambda: trial.set_user_attr(STATUS, "returned"), what="set_user_attr")
        tell = lambda: trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)  # noqa: E731
        if requeue:
            self.fail_and_retry(trial, tell)
        else:
            with_retry(tell, what="tell")
        taken.heartbeat.stop()
        log.info("trial %d returned to the study untrained", trial.number)


class TrialRecorder:
    """Keeps one trial's reports and user attributes, and stores them from a background thread.

    ``report`` and ``set_user_attr`` are the trial's own (Optuna checks the value and updates
    the trial in memory, which is what its pruner reads), but their storage writes wait in a
    ``BufferedWrites``. The thread stores what waits in one transaction once the oldest write
    has waited ``linger_s``, or at a ``flush``, which waits for it (before a prune check, which
    reads other trials' values, and before tell). So a trial makes ~6 transactions, not ~40,
    and training never waits for one (docs/bench-storage.md v5). Each store
    goes through ``with_retry``, so a restarting database delays writes rather than losing
    them; a store that fails for good is raised by the next ``flush``, and later writes are
    dropped (they would store a gap). Use as a context manager: leaving it flushes, stops the
    thread and gives the trial its storage back.

    Args:
        trial: The trial to record. Until ``close``, ``trial.should_prune`` and ``study.tell``
            must come after a ``flush``.
        linger_s: The longest a write waits unstored unless flushed. A worker killed meanwhile
            loses those reports; its retry re-reports them from the checkpoint.
    """

    def __init__(self, trial: optuna.Trial, linger_s: float = RECORDER_LINGER_SECONDS) -> None:
        self.trial, self.linger_s = trial, linger_s
        self.buffer = BufferedWrites(trial.storage, optuna_internals.trial_id(trial))
        trial.storage = self.buffer  # type: ignore[assignment]  # a stand-in: writes wait, reads pass
        self.write_seconds = 0.0  # time the thread spent storing: storage work taken off the caller
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._written = self._taken = self._stored = self._wanted = 0  # counts of write calls
        self._oldest: float | None = None  # when the oldest write not yet taken was made; None: none waits
        self._closing = False
        self._thread = threading.Thread(target=self._drain, daemon=True, name=f"recorder-{trial.number}")
        self._thread.start()

    def report(self, value: float, step: int) -> None:
        """``trial.report(value, step)``; the value is stored later."""
        self._write(lambda: self.trial.report(value, step), "report")

    def set_user_attr(self, key: str, value: Any) -> None:
        """``trial.set_user_attr(key, value)``; the attribute is stored later."""
        self._write(lambda: self.trial.set_user_attr(key, value), "set_user_attr")

    def flush(self) -> None:
        """Waits until every write made so far is stored; raises a store that failed."""
        with self._cond:
            target = self._wanted = self._written
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._stored >= target)
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Flushes, stops the thread, and gives the trial its own storage back."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join()
            self.trial.storage = self.buffer.storage

    def __enter__(self) -> TrialRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
            return
        # Already unwinding: stop the thread, but never hide the original exception.
        try:
            self.close()
        except Exception:
            pass

    def _write(self, call: Callable[[], None], what: str) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError(f"recorder of trial {self.trial.number} is closed; {what=} not written")
            call()  # raises here, in the caller, on a value Optuna refuses
            self._written += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._cond.notify_all()

    def _due(self) -> bool:
        """Writes wait, and a flush wants them, the recorder is closing, or they waited linger_s."""
        if self._oldest is None:
            return False
        return self._closing or self._wanted > self._taken or time.monotonic() >= self._oldest + self.linger_s

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._oldest is None and self._closing:
                        return
                    self._cond.wait(None if self._oldest is None else max(0.0, self._oldest + self.linger_s - time.monotonic()))
                writes, upto = self.buffer.take(), self._written
                self._taken, self._oldest = upto, None
            try:
                if self._error is None:  # after a lost store, later ones would store a gap
                    started = time.perf_counter()
                    with_retry(lambda: store(self.buffer.storage, optuna_internals.trial_id(self.trial), writes), what="storing the trial's writes")
                    self.write_seconds += time.perf_counter() - started
            except BaseException as e:  # handed to the caller at flush
                self._error = e
            finally:
                with self._cond:
                    self._stored = upto
                    self._cond.notify_all()
