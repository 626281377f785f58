"""TPE reading the study once a trial (search/samplers/tpe.py)."""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Container
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from kilotune.search.optuna_internals.gate import rdb_of


TPE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # the states TPE reads
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
READ_CHUNK = 500  # trials a query reads at most: a worker joining a big study stays within SQLite's bound-variable limit


class _Snapshot:
    """A study whose reads of the states TPE reads answer from one snapshot of its trials."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study, self._trials = study, trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        if states is None or any(state not in TPE_STATES for state in states):  # type: ignore[attr-defined]
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        trials = [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


class SnapshotTPESampler(optuna.samplers.TPESampler):
    """``optuna.samplers.TPESampler`` that reads the study once per trial it samples.

    Takes the same arguments as ``TPESampler``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()  # (study id, trial id) and its snapshot, per sampling thread
        self._finished: dict[int, dict[int, FrozenTrial]] = {}  # study id -> trial id -> finished trial
        self._finished_lock = threading.Lock()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return super().infer_relative_search_space(self._snapshot(study, trial), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return super().sample_relative(self._snapshot(study, trial), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return super().sample_independent(self._snapshot(study, trial), trial, param_name,  # type: ignore[arg-type]
                                          param_distribution)

    def _snapshot(self, study: optuna.Study, trial: FrozenTrial) -> _Snapshot:
        key = (study._study_id, trial._trial_id)
        if getattr(self._local, "key", None) != key:
            rdb = rdb_of(study._storage)
            self._local.trials = (self._read(rdb, study._study_id) if rdb is not None
                                  else study._get_trials(deepcopy=False, states=TPE_STATES, use_cache=True))
            self._local.key = key
        return _Snapshot(study, self._local.trials)

    def _read(self, rdb: RDBStorage, study_id: int) -> list[FrozenTrial]:
        """The study's trials in the states TPE reads, holding only what TPE reads of them, in
        trial-number order. Finished trials are read once per worker and remembered."""
        from optuna.storages._rdb.models import TrialModel  # Optuna's versioned schema

        with rdb.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(TrialModel.trial_id, TrialModel.number, TrialModel.state)
                                .where(TrialModel.study_id == study_id, TrialModel.state.in_(TPE_STATES))).all()
            with self._finished_lock:
                finished = self._finished.setdefault(study_id, {})
                new = [row for row in rows if row.state in FINISHED and row.trial_id not in finished]
                finished.update((t._trial_id, t) for t in _read_for_tpe(conn, new))
                trials = [finished[row.trial_id] for row in rows if row.state in FINISHED]
            trials += _read_for_tpe(conn, [row for row in rows if row.state == TrialState.RUNNING])
        return sorted(trials, key=lambda t: t.number)


def _read_for_tpe(conn: sqlalchemy.Connection, rows: list[Any]) -> list[FrozenTrial]:
    """What TPE reads of these trials (rows of trial_id, number, state): params, values, system
    attributes (the liar's relative params, constraints) and, of a pruned trial, its last report
    (TPE ranks pruned trials by it). No other reports, no user attributes, no timestamps."""
    return [t for start in range(0, len(rows), READ_CHUNK) for t in _read_chunk(conn, rows[start:start + READ_CHUNK])]


def _read_chunk(conn: sqlalchemy.Connection, rows: list[Any]) -> list[FrozenTrial]:
    from optuna.storages._rdb.models import TrialIntermediateValueModel as Report  # Optuna's versioned schema
    from optuna.storages._rdb.models import TrialParamModel as Param
    from optuna.storages._rdb.models import TrialSystemAttributeModel as SystemAttr
    from optuna.storages._rdb.models import TrialValueModel as Value

    ids = [row.trial_id for row in rows]
    params: dict[int, dict[str, Any]] = {i: {} for i in ids}
    distributions: dict[int, dict[str, BaseDistribution]] = {i: {} for i in ids}
    for trial_id, name, internal, distribution_json in conn.execute(
            sqlalchemy.select(Param.trial_id, Param.param_name, Param.param_value, Param.distribution_json)
            .where(Param.trial_id.in_(ids)).order_by(Param.param_id)):
        distribution = _distribution(distribution_json)
        params[trial_id][name], distributions[trial_id][name] = distribution.to_external_repr(internal), distribution
    system_attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for trial_id, key, value_json in conn.execute(
            sqlalchemy.select(SystemAttr.trial_id, SystemAttr.key, SystemAttr.value_json).where(SystemAttr.trial_id.in_(ids))):
        system_attrs[trial_id][key] = json.loads(value_json)
    values: dict[int, dict[int, float]] = {i: {} for i in ids}
    for trial_id, objective, value, value_type in conn.execute(
            sqlalchemy.select(Value.trial_id, Value.objective, Value.value, Value.value_type).where(Value.trial_id.in_(ids))):
        values[trial_id][objective] = Value.stored_repr_to_value(value, value_type)
    last_report: dict[int, dict[int, float]] = {i: {} for i in ids}
    pruned = [row.trial_id for row in rows if row.state == TrialState.PRUNED]
    if pruned:
        last = (sqlalchemy.select(Report.trial_id, sqlalchemy.func.max(Report.step).label("step"))
                .where(Report.trial_id.in_(pruned)).group_by(Report.trial_id).subquery())
        for trial_id, step, value, value_type in conn.execute(
                sqlalchemy.select(Report.trial_id, Report.step, Report.intermediate_value, Report.intermediate_value_type)
                .join(last, sqlalchemy.and_(Report.trial_id == last.c.trial_id, Report.step == last.c.step))):
            last_report[trial_id][step] = Report.stored_repr_to_intermediate_value(value, value_type)
    return [FrozenTrial(row.number, row.state, None, None, None, params[row.trial_id], distributions[row.trial_id], {},
                        system_attrs[row.trial_id], last_report[row.trial_id], row.trial_id,
                        values=[values[row.trial_id][k] for k in sorted(values[row.trial_id])] or None)
            for row in rows]


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)
