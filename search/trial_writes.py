"""A trial's writes (params, reports, user attributes) kept in memory and stored in one transaction.

Optuna stores each suggest, report and user attribute on its own, through its ORM: two reads,
an insert and a commit each. On PostgreSQL a trial's 30 reports cost 50 ms of client CPU and
78 ms of wall time that way, 3 and 8 ms stored together here (``python bench/trial_writes.py``,
docs/bench-storage.md v5). A worker makes ~55 such writes a trial, and nothing reads them
before the next prune check or the end of the trial.

``BufferedWrites`` stands in for a trial's storage (``trial.storage``), so Optuna's own ``Trial``
code still validates each call and updates the trial in memory; only the storage writes wait.
``store`` writes what waited: on PostgreSQL and SQLite one transaction on Optuna's schema
(checks as Optuna's: the trial is unfinished, a param's distribution fits the study's), each
row an upsert, so a retried transaction is harmless. Other storages get Optuna's calls in order.
``tests/search/test_trial_writes.py`` stores the same writes both ways and compares the trials.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json, json_to_distribution
from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.dialects import postgresql, sqlite


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
    _store_rdb(rdb, trial_id, writes)


# (database, study id, param name, distribution JSON) found to fit the study's distribution of
# that param: which never changes once stored, so each worker checks each param once, as
# Optuna's cached storage does, not once per trial.
_FITS_THE_STUDY: set[tuple[str, int, str, str]] = set()


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage under Optuna's cache (``study._storage`` wraps it), or None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def _store_rdb(rdb: RDBStorage, trial_id: int, writes: PendingWrites) -> None:
    from optuna.storages._rdb import models  # Optuna's versioned schema

    insert = postgresql.insert if rdb.engine.name == "postgresql" else sqlite.insert
    with rdb.engine.begin() as conn:
        # The row lock orders these writes with a concurrent tell, which takes the same lock.
        row = conn.execute(
            sqlalchemy.select(models.TrialModel.state, models.TrialModel.study_id)
            .where(models.TrialModel.trial_id == trial_id)
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        state, study_id = row
        rdb.check_trial_is_updatable(trial_id, state)

        if writes.params:
            database = rdb.engine.url.render_as_string(hide_password=True)
            checked = {name: (database, study_id, name, distribution_to_json(d)) for name, (_, d) in writes.params.items()}
            for name, (_, distribution) in writes.params.items():
                if checked[name] in _FITS_THE_STUDY:
                    continue
                previous = conn.execute(
                    sqlalchemy.select(models.TrialParamModel.distribution_json)
                    .join(models.TrialModel, models.TrialModel.trial_id == models.TrialParamModel.trial_id)
                    .where(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name)
                    .limit(1)
                ).scalar_one_or_none()
                if previous is not None:
                    check_distribution_compatibility(json_to_distribution(previous), distribution)
            rows = [
                {"trial_id": trial_id, "param_name": name, "param_value": value, "distribution_json": checked[name][3]}
                for name, (value, _) in writes.params.items()
            ]
            conn.execute(insert(models.TrialParamModel).on_conflict_do_nothing(index_elements=["trial_id", "param_name"]), rows)
            _FITS_THE_STUDY.update(checked.values())  # (if the transaction fails, a fit is still a fit)

        if writes.reports:
            to_stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
            rows = []
            for step, value in writes.reports.items():
                stored, value_type = to_stored(value)
                rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": value_type})
            statement = insert(models.TrialIntermediateValueModel)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["trial_id", "step"],
                    set_={
                        "intermediate_value": statement.excluded.intermediate_value,
                        "intermediate_value_type": statement.excluded.intermediate_value_type,
                    },
                ),
                rows,
            )

        if writes.user_attrs:
            rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in writes.user_attrs.items()]
            statement = insert(models.TrialUserAttributeModel)
            conn.execute(
                statement.on_conflict_do_update(index_elements=["trial_id", "key"], set_={"value_json": statement.excluded.value_json}),
                rows,
            )
