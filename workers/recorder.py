"""Writes a trial's reports and user attributes off the training thread.

Each report and user attribute is a database write (an ORM round trip of ~5 ms on PostgreSQL,
docs/bench-storage.md) that nothing on this worker reads until the next prune check or the end
of the trial. Made inline, 30 reports and 8 attributes cost a trial more than the 1% of a
10-second trial the service allows for storage. The recorder hands them to one background thread
that writes them in order, and ``flush`` waits for them exactly where they are read: before
``should_prune`` and before ``tell``. Training never waits on a write otherwise.

Imports only optuna and search.study, so bench/storage_scale.py measures the worker's own
protocol without loading a deep-learning backend.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna

from search.study import with_retry

_STOP = object()


class TrialRecorder:
    """Queues one trial's writes to a background thread; ``flush`` waits for them.

    Writes keep their order, and each goes through ``with_retry``, so a restarting database
    delays them rather than losing them. The first write that fails for good is raised by the
    next ``flush``. Use as a context manager: leaving it flushes and stops the thread.

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
