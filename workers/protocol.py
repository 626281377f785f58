"""The worker's side of the study protocol: taking a trial, beating for it, recording it, giving it back.

Kept apart from the training loop and free of any deep-learning backend (it imports only optuna
and search/), so bench/storage_scale.py measures exactly these calls in 64 light processes.

Where the storage time goes, and why the calls are arranged this way (docs/bench-storage.md):
taking a trial (budget lock, ask, ~15 suggests with TPE's reads) costs ~0.2-0.3 s, so the worker
takes the next one while the current one trains; reports and user attributes are ~40 writes a
trial that nothing reads until the next prune check, so a ``TrialRecorder`` thread writes them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from search.space import SearchSpace
from search.study import HEARTBEAT_SECONDS, StudySettings, budget_lock, claim_trial, with_retry
from workers.config import TrainConfig

log = logging.getLogger("kilotune.worker")
_STOP = object()


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
    """

    def __init__(self, url: str, storage: BaseStorage, study: optuna.Study, settings: StudySettings) -> None:
        self.url, self.storage, self.study, self.settings = url, storage, study, settings
        self.space = SearchSpace.from_spec(settings.space)
        self.retry_callback = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
        self.lock_held_seconds = 0.0  # by the last take

    def take(self, started: float) -> TakenTrial | None:
        """Asks for a trial and samples its config; None when the study's budget is spent.

        Args:
            started: When this worker started (the timeout's origin if the study has no record of it).
        """
        with_retry(lambda: fail_stale_trials(self.study), what="failing stale trials")

        def ask() -> optuna.Trial | None:
            with budget_lock(self.url, self.study.study_name, self.storage):
                locked = time.perf_counter()
                try:
                    return claim_trial(self.study, self.settings, self.storage, started)
                finally:
                    # Every worker's ask queues for this lock: the fleet asks at most 1/hold trials a second.
                    self.lock_held_seconds = time.perf_counter() - locked

        trial = with_retry(ask, what="ask")
        if trial is None:
            return None
        heartbeat = Heartbeat(self.storage, trial._trial_id)  # from now on a dead worker's trial is retried
        heartbeat.start()
        try:
            return TakenTrial(trial, heartbeat, config=self.space.suggest(trial, self.settings.epochs))
        except Exception as e:
            return TakenTrial(trial, heartbeat, error=e)

    def retry(self, trial: optuna.Trial) -> None:
        """Queues a WAITING copy of a failed trial (same params and reports) for any worker."""
        with_retry(lambda: self.retry_callback(self.study, self.storage.get_trial(trial._trial_id)), what="retry")

    def hand_back(self, taken: TakenTrial, *, requeue: bool = True) -> None:
        """Gives back a trial taken but not trained: FAIL "returned" (outside the budget).

        Args:
            taken: The trial.
            requeue: Queue a WAITING copy for another worker; not when the study's time is up.
        """
        trial = taken.trial
        with_retry(lambda: trial.set_user_attr("status", "returned"), what="set_user_attr")
        with_retry(lambda: self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True), what="tell")
        if requeue:
            self.retry(trial)
        taken.heartbeat.stop()
        log.info("trial %d returned to the study untrained", trial.number)


class TrialRecorder:
    """Queues one trial's reports and user attributes to a background thread; ``flush`` waits for them.

    Each is a database write (~1-5 ms on PostgreSQL) that nothing reads until the next prune
    check or the end of the trial, so training does not wait for them. Writes keep their order
    and each goes through ``with_retry``, so a restarting database delays them rather than losing
    them. The first write that fails for good is raised by the next ``flush``. Use as a context
    manager: leaving it flushes and stops the thread.

    Args:
        trial: The trial to write to. Only the recorder's thread writes to it until ``flush``
            returns, so ``trial.should_prune`` and ``study.tell`` must come after a ``flush``.
    """
    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self._writes: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self.write_seconds = 0.0  # time the thread spent writing: storage work taken off the caller
        self._thread = threading.Thread(target=self._drain, daemon=True, name=f"recorder-{trial.number}")
        self._thread.start()

    def report(self, value: float, step: int) -> None:
        """Queues ``trial.report(value, step)``."""
        self._put(lambda: self.trial.report(value, step), "report")

    def set_user_attr(self, key: str, value: Any) -> None:
        """Queues ``trial.set_user_attr(key, value)``."""
        self._put(lambda: self.trial.set_user_attr(key, value), "set_user_attr")

    def flush(self) -> None:
        """Waits until every queued write is stored; raises the first write that failed."""
        self._writes.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Flushes, then stops the thread."""
        try:
            self.flush()
        finally:
            self._writes.put(_STOP)
            self._thread.join()

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

    def _put(self, write: Callable[[], None], what: str) -> None:
        if not self._thread.is_alive():
            raise RuntimeError(f"recorder of trial {self.trial.number} is closed; {what=} not written")
        self._writes.put((write, what))

    def _drain(self) -> None:
        while True:
            item = self._writes.get()
            try:
                if item is _STOP:
                    return
                write, what = item
                if self._error is None:  # after a lost write, later ones would store a gap
                    started = time.perf_counter()
                    with_retry(write, what=what)
                    self.write_seconds += time.perf_counter() - started
            except BaseException as e:  # handed to the caller at flush
                self._error = e
            finally:
                self._writes.task_done()
