"""Optuna's pruners with a prune check that reads one indexed query (search/pruners/)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Container
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState


RUNG_KEY_PREFIX = "completed_rung_"  # optuna.pruners._successive_halving._completed_rung_key


class _OtherTrial:
    """What a rule reads of another trial: its number, state, rung values and reports."""

    __slots__ = ("number", "state", "system_attrs", "intermediate_values")

    def __init__(self, number: int, state: TrialState) -> None:
        self.number, self.state = number, state
        self.system_attrs: dict[str, Any] = {}
        self.intermediate_values: dict[int, float] = {}


class _StudyView:
    """Stands in for the study inside an Optuna rule: ``get_trials`` runs ``read_trials``.

    The rule's writes (a trial's rung value) go to the study's own storage, so every process
    and Optuna's cache see them.
    """

    def __init__(self, study: optuna.Study, read_trials: Callable[[], list[_OtherTrial]]) -> None:
        self.study_name, self.direction = study.study_name, study.direction
        self._storage, self._read_trials = study._storage, read_trials

    def get_trials(self, deepcopy: bool = False, states: Container[TrialState] | None = None) -> list[_OtherTrial]:
        trials = self._read_trials()
        return trials if states is None else [t for t in trials if t.state in states]


def _rung_values(storage: RDBStorage, study_id: int) -> list[_OtherTrial]:
    """Every trial of the study that recorded a rung value, with those values."""
    from optuna.storages._rdb.models import TrialModel, TrialSystemAttributeModel  # Optuna's versioned schema

    query = (
        sqlalchemy.select(TrialModel.number, TrialModel.state, TrialSystemAttributeModel.key, TrialSystemAttributeModel.value_json)
        .join(TrialSystemAttributeModel, TrialSystemAttributeModel.trial_id == TrialModel.trial_id)
        .where(TrialModel.study_id == study_id, TrialSystemAttributeModel.key.startswith(RUNG_KEY_PREFIX))
    )
    trials: dict[int, _OtherTrial] = {}
    with storage.engine.connect() as conn:
        for number, state, key, value_json in conn.execute(query):
            trials.setdefault(number, _OtherTrial(number, state)).system_attrs[key] = json.loads(value_json)
    return list(trials.values())


def _complete_values_at(storage: RDBStorage, study_id: int, step: int) -> list[_OtherTrial]:
    """Every COMPLETE trial of the study, with its report at ``step`` where it has one."""
    from optuna.storages._rdb.models import TrialIntermediateValueModel as Report  # Optuna's versioned schema
    from optuna.storages._rdb.models import TrialModel

    query = (
        sqlalchemy.select(TrialModel.number, Report.intermediate_value, Report.intermediate_value_type)
        .outerjoin(Report, sqlalchemy.and_(Report.trial_id == TrialModel.trial_id, Report.step == step))
        .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.COMPLETE)
    )
    trials = []
    with storage.engine.connect() as conn:
        for number, value, value_type in conn.execute(query):
            trial = _OtherTrial(number, TrialState.COMPLETE)
            if value_type is not None:
                trial.intermediate_values[step] = Report.stored_repr_to_intermediate_value(value, value_type)
            trials.append(trial)
    return trials


def _with_own_rungs(trial: FrozenTrial, trials: list[_OtherTrial]) -> FrozenTrial:
    """The trial, its system attributes being the rung values ``trials`` holds for it: all the
    rule reads of them. Optuna's trial would read every system attribute with a query of its own
    (``Trial._get_latest_trial``): a quarter to a half of a check's time (``bench/budget_claim.py``, v8)."""
    own = next((t.system_attrs for t in trials if t.number == trial.number), {})
    trial = copy.copy(trial)
    trial.system_attrs = dict(own)
    return trial


def _refuse_auto(kwargs: dict[str, Any], *keys: str) -> None:
    """Optuna's "auto" resources (its default) are estimated from every trial: refused."""
    for key in keys:
        if kwargs.get(key, "auto") == "auto":
            raise ValueError(f"{key}={kwargs.get(key, 'auto')!r} is not allowed; give an epoch count")


class IndexedSuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving (ASHA), its rung values read by one query.

    Args:
        storage: The RDB storage the study lives in.
        **kwargs: ``optuna.pruners.SuccessiveHalvingPruner``'s arguments; ``min_resource``
            must be a number (its "auto" would read every trial).
    """

    def __init__(self, storage: RDBStorage, **kwargs: Any) -> None:
        _refuse_auto(kwargs, "min_resource")
        super().__init__(**kwargs)
        self._rdb = storage

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        trials = _rung_values(self._rdb, study._study_id)
        return super().prune(_StudyView(study, lambda: trials), _with_own_rungs(trial, trials))  # type: ignore[arg-type]


class IndexedHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, each bracket's rung values read by one query.

    A subclass, so Optuna still shows the sampler only the trial's bracket (``_filter_study``).
    Optuna builds that bracket's study anew for every suggest, which costs a query for the
    study's id and, since the new study's cache of trials starts empty, a read of every trial
    (~15 of each a trial). Here each bracket's study is built once (per study object) and shares
    the study's cache, which Optuna empties at each ask and tell, as it does without Hyperband.

    Args:
        storage: The RDB storage the study lives in.
        **kwargs: ``optuna.pruners.HyperbandPruner``'s arguments; ``min_resource`` and
            ``max_resource`` must be numbers ("auto" would read every trial).
    """

    def __init__(self, storage: RDBStorage, **kwargs: Any) -> None:
        _refuse_auto(kwargs, "min_resource", "max_resource")
        super().__init__(**kwargs)
        self._rdb = storage
        self._bracket_studies: dict[int, optuna.Study] = {}

    def _create_bracket_study(self, study: optuna.Study, bracket_index: int) -> optuna.Study:
        cached = self._bracket_studies.get(bracket_index)
        if cached is None or cached._study is not study:  # type: ignore[attr-defined]  # Optuna's _BracketStudy
            cached = self._bracket_studies[bracket_index] = super()._create_bracket_study(study, bracket_index)
            cached._thread_local = study._thread_local
        return cached

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self._pruners:
            self._try_initialization(study)  # with fixed resources it reads nothing
        bracket = self._get_bracket_id(study, trial)
        trials = [t for t in _rung_values(self._rdb, study._study_id)
                  if self._get_bracket_id(study, t) == bracket]  # type: ignore[arg-type]
        return self._pruners[bracket].prune(_StudyView(study, lambda: trials), _with_own_rungs(trial, trials))  # type: ignore[arg-type]


class IndexedMedianPruner(optuna.pruners.MedianPruner):
    """Optuna's median rule, complete trials' values at the step read by one query.

    Args:
        storage: The RDB storage the study lives in.
        **kwargs: ``optuna.pruners.MedianPruner``'s arguments.
    """

    def __init__(self, storage: RDBStorage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rdb = storage

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        view = _StudyView(study, lambda: _complete_values_at(self._rdb, study._study_id, step))
        return super().prune(view, trial)  # type: ignore[arg-type]
