"""A trial's writes (params, reports, user attributes) kept in memory and stored in one transaction.

Optuna stores each suggest, report and user attribute on its own, through its ORM: two reads,
an insert and a commit each. On PostgreSQL a trial's 30 reports cost 50 ms of client CPU and
78 ms of wall time that way, 3 and 8 ms stored together here (``python bench/trial_writes.py``,
docs/bench-storage.md v5). A worker makes ~55 such writes a trial, and nothing reads them
before the next prune check or the end of the trial.

``BufferedWrites`` stands in for a trial's storage (``trial.storage``), so Optuna's own ``Trial``
code still validates each call and updates the trial in memory; only the storage writes wait.
``store`` writes what waited: on PostgreSQL and SQLite one transaction on Optuna's schema
(``optuna_internals.store_rdb``, inside Optuna's tested range)
(checks as Optuna's: the trial is unfinished, a param's distribution fits the study's), each
row an upsert, so a retried transaction is harmless. Other storages, and any outside the range, get Optuna's calls in order.
``tests/search/test_trial_writes.py`` stores the same writes both ways and compares the trials.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage

from kilotune.search.optuna_internals import rdb_of, store_rdb


@dataclass
class PendingWrites:
    """Writes of one trial not yet stored; a later write of the same key replaces an earlier one."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)  # internal repr
    reports: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params) + len(self.reports) + len(self.user_attrs)


class BufferedWrites:
    """A trial's storage whose param, report and user-attribute writes wait in memory.

    Everything else (reads, system attributes, heartbeats) goes to the storage at once.

    Args:
        storage: The trial's storage (``trial.storage``).
        trial_id: The trial whose writes are kept; a write for another trial is refused.
    """

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._pending = PendingWrites()
        self._lock = threading.Lock()  # the caller writes while the recorder's thread takes

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution) -> None:
        with self._lock:
            self._own(trial_id).params[param_name] = (param_value_internal, distribution)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            self._own(trial_id).reports[step] = intermediate_value

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        json.dumps(value)  # refused now, in the caller, as Optuna's own write would
        with self._lock:
            self._own(trial_id).user_attrs[key] = value

    def take(self) -> PendingWrites:
        """The writes kept so far; the buffer starts empty again."""
        with self._lock:
            pending, self._pending = self._pending, PendingWrites()
        return pending

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def _own(self, trial_id: int) -> PendingWrites:
        if trial_id != self.trial_id:
            raise ValueError(f"this buffer keeps trial {self.trial_id}'s writes; {trial_id=}")
        return self._pending


def store(storage: BaseStorage, trial_id: int, writes: PendingWrites) -> None:
    """Stores ``writes``: one transaction on PostgreSQL or SQLite, Optuna's calls elsewhere.

    Raises:
        KeyError: No such trial (as Optuna).
        optuna.exceptions.UpdateFinishedTrialError: The trial is finished (as Optuna).
        ValueError: A param's distribution does not fit the one the study has (as Optuna).
    """
    if not writes:
        return
    rdb = rdb_of(storage)
    if rdb is None or rdb.engine.name not in ("postgresql", "sqlite"):
        for name, (value, distribution) in writes.params.items():
            storage.set_trial_param(trial_id, name, value, distribution)
        for step, value in writes.reports.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        for key, value in writes.user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    store_rdb(rdb, trial_id, writes)
