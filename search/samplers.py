"""Optuna's TPE sampler, reading the trials it samples from once per trial.

With ``constant_liar=True``, ``TPESampler._sample`` bypasses the study's per-ask cache and
re-reads every trial from the storage for each parameter group (kilotune's conditional space has
~9) and each independently sampled param, so that the liar sees the trials running now. Through
Optuna's cached storage each read loads every unfinished trial with all its reports, user and
system attributes: with 64 workers, ~10 reads of 128 running trials a take.

``SnapshotTPESampler`` reads once per trial, at its first sample, and hands Optuna's TPE code a
study whose ``_get_trials`` answers from that snapshot. On an RDB storage the snapshot holds
only what TPE reads: finished (COMPLETE, PRUNED) trials, read in full once per worker, since a
finished trial never changes, and RUNNING trials' numbers, params and system attributes (the
liar's relative params), read anew each time without their reports. The liar then sees the
trials running when this trial began sampling, not those that start during its sampling (well
under a second), which do not see it either. ``tests/search/test_samplers.py`` checks that it
samples what Optuna's TPE samples, on SQLite, PostgreSQL and in memory.
"""

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

from search.trial_writes import rdb_of

TPE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # all TPE ever reads
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
        """The study's finished trials (new ones read in full, the rest remembered) and running
        trials without their reports, attributes or timestamps, in trial-number order."""
        from optuna.storages._rdb.models import TrialModel, TrialParamModel, TrialSystemAttributeModel  # Optuna's schema

        with rdb.engine.connect() as conn:
            states = conn.execute(sqlalchemy.select(TrialModel.trial_id, TrialModel.number, TrialModel.state)
                                  .where(TrialModel.study_id == study_id, TrialModel.state.in_(TPE_STATES))).all()
            running = {trial_id: (number, {}, {}, {}) for trial_id, number, state in states if state == TrialState.RUNNING}
            if running:  # each a (number, params, distributions, system attributes)
                param_rows = conn.execute(sqlalchemy.select(TrialParamModel.trial_id, TrialParamModel.param_name,
                                                        TrialParamModel.param_value, TrialParamModel.distribution_json)
                                      .where(TrialParamModel.trial_id.in_(running)).order_by(TrialParamModel.param_id))
                for trial_id, name, internal, distribution_json in param_rows:
                    distribution = _distribution(distribution_json)
                    running[trial_id][1][name] = distribution.to_external_repr(internal)
                    running[trial_id][2][name] = distribution
                attr_rows = conn.execute(sqlalchemy.select(TrialSystemAttributeModel.trial_id, TrialSystemAttributeModel.key,
                                                       TrialSystemAttributeModel.value_json)
                                     .where(TrialSystemAttributeModel.trial_id.in_(running)))
                for trial_id, key, value_json in attr_rows:
                    running[trial_id][3][key] = json.loads(value_json)
        trials = [FrozenTrial(number, TrialState.RUNNING, None, None, None, params, distributions, {}, system_attrs, {}, trial_id)
                  for trial_id, (number, params, distributions, system_attrs) in running.items()]
        with self._finished_lock:
            finished = self._finished.setdefault(study_id, {})
            new = {trial_id for trial_id, _, state in states if state in FINISHED and trial_id not in finished}
            if new:
                # Optuna's own read and FrozenTrial builder, for the few trials finished since the last take.
                for t in rdb._get_trials(study_id, states=FINISHED, included_trial_ids=new, trial_id_greater_than=max(new)):
                    finished[t._trial_id] = t
            trials += [finished[trial_id] for trial_id, _, state in states if state in FINISHED and trial_id in finished]
        return sorted(trials, key=lambda t: t.number)


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)
