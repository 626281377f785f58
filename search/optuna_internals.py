"""The one gate to Optuna's internals: every private Optuna name kilotune uses is used here.

kilotune's fast paths read and write Optuna's RDB schema directly and reach into private
attributes of Optuna's studies, trials, storages and pruners (docs/bench-storage.md measures
what each saves). Those are not Optuna's API and may change in any release, so they are used
only inside the range of Optuna releases kilotune is tested with (pyproject's ``optuna>=5.1,<5.2``,
``TESTED_RANGE``). Outside it ``fast_paths()`` is False, kilotune falls back to Optuna's public
API (its ``TPESampler`` and pruners, ``study.get_trials``, ``study.ask``, the storage's public
methods) and says so once, as a warning.

``tests/search/test_optuna_internals.py`` checks the gate both ways and that no other module
of kilotune uses a private Optuna name.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import warnings
from collections.abc import Callable, Container
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json, json_to_distribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("kilotune.optuna_internals")
TESTED_RANGE = ((5, 1), (5, 2))  # [low, high) of Optuna's (major, minor): pyproject's optuna>=5.1,<5.2
_warned = False  # the warning outside the tested range is said once a process


def in_tested_range(version: str) -> bool:
    """Whether Optuna ``version`` (``"5.1.0"``, ``"5.1.1.dev0"``) is in ``TESTED_RANGE``."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    low, high = TESTED_RANGE
    return low <= major_minor < high


def fast_paths() -> bool:
    """Whether the installed Optuna is in the tested range, so its internals may be used.

    Outside it kilotune uses Optuna's public API only, and warns once (logging and warnings).
    """
    if in_tested_range(optuna.__version__):
        return True
    global _warned
    if not _warned:
        _warned = True
        low, high = (".".join(map(str, v)) for v in TESTED_RANGE)
        message = (f"optuna {optuna.__version__} is outside kilotune's tested range (>={low},<{high}): "
                   "using Optuna's public API only, without kilotune's faster storage paths")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return False


# -- Studies, trials and storages ------------------------------------------------------------


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage under Optuna's cache (a study's storage wraps it), or None; always
    None outside the tested range, which turns off every path that reads Optuna's schema."""
    if not fast_paths():
        return None
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def study_id(study: optuna.Study, storage: BaseStorage) -> int:
    """The study's id in ``storage`` (the storage it was loaded from)."""
    if fast_paths():
        return study._study_id
    return storage.get_study_id_from_name(study.study_name)


def trial_id(trial: optuna.Trial) -> int:
    """The trial's id in its storage."""
    if fast_paths():
        return trial._trial_id
    storage = trial.storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(trial.study.study_name), trial.number)


def frozen_trial_id(trial: FrozenTrial, study: optuna.Study, storage: BaseStorage) -> int:
    """A frozen trial's id in ``storage``, the storage ``study`` was loaded from."""
    if fast_paths():
        return trial._trial_id
    return storage.get_trial_id_from_study_id_trial_number(study_id(study, storage), trial.number)


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The trial as Optuna's ``Trial`` holds it in memory (outside the range: as stored)."""
    if fast_paths():
        return trial._cached_frozen_trial
    return trial.storage.get_trial(trial_id(trial))


def new_trial(study: optuna.Study, storage: RDBStorage) -> optuna.Trial:
    """A new RUNNING trial of the study, as ``study.ask()`` makes one without popping a
    WAITING trial or reading the study (the caller knows none waits); ``study.ask()`` outside
    the tested range."""
    if not fast_paths():
        return study.ask()
    created = study._storage.create_new_trial(study._study_id)
    study._thread_local.cached_all_trials = None  # as Study.ask: the sampler re-reads the study once per trial
    return optuna.Trial(study, created)


def budget_rows(storage: RDBStorage, study_id: int, *, status_key: str = "status", fold_key: str = "cv_of") -> tuple[int, list[int]]:
    """Trials counting toward the budget (``search.budget.counts_toward_budget``: not fold
    trials, which have ``fold_key``, and not failed trials unless their ``status_key`` is
    "failed"), and the WAITING trials' ids: two indexed queries on Optuna's schema."""
    from optuna.storages._rdb.models import TrialModel, TrialUserAttributeModel  # Optuna's versioned schema

    failed_for_good = sqlalchemy.select(TrialUserAttributeModel.trial_id).where(
        TrialUserAttributeModel.key == status_key, TrialUserAttributeModel.value_json == '"failed"'
    )
    fold_trials = sqlalchemy.select(TrialUserAttributeModel.trial_id).where(TrialUserAttributeModel.key == fold_key)
    in_study = TrialModel.study_id == study_id
    with storage.engine.connect() as conn:
        counted = conn.execute(
            sqlalchemy.select(sqlalchemy.func.count()).where(
                in_study,
                TrialModel.trial_id.not_in(fold_trials),
                sqlalchemy.or_(TrialModel.state != TrialState.FAIL, TrialModel.trial_id.in_(failed_for_good)),
            )
        ).scalar_one()
        waiting = conn.execute(
            sqlalchemy.select(TrialModel.trial_id).where(in_study, TrialModel.state == TrialState.WAITING).order_by(TrialModel.trial_id)
        ).scalars().all()
    return counted, list(waiting)


def beaten_trial_ids(storage: RDBStorage, trial_ids: Container[int]) -> set[int] | None:
    """Which of these trials recorded a heartbeat; None outside the tested range (Optuna's
    public API does not tell a trial that never beat)."""
    if not fast_paths():
        return None
    from optuna.storages._rdb.models import TrialHeartbeatModel  # Optuna's versioned schema

    with storage.engine.connect() as conn:
        return set(conn.execute(sqlalchemy.select(TrialHeartbeatModel.trial_id).where(TrialHeartbeatModel.trial_id.in_(trial_ids))).scalars())


def study_storage(study: optuna.Study) -> BaseStorage | None:
    """The storage the study reads and writes through (Optuna's cache over the backend); None
    outside the tested range."""
    return study._storage if fast_paths() else None


def has_system_attr(storage: RDBStorage, study_id: int, key: str, value_json: str) -> bool:
    """Whether a trial of the study has system attribute ``key`` set to ``value_json``: one
    indexed query on Optuna's schema."""
    from optuna.storages._rdb.models import TrialModel, TrialSystemAttributeModel  # Optuna's versioned schema

    with storage.engine.connect() as conn:
        return conn.execute(
            sqlalchemy.select(TrialSystemAttributeModel.trial_id)
            .join(TrialModel, TrialModel.trial_id == TrialSystemAttributeModel.trial_id)
            .where(TrialModel.study_id == study_id, TrialSystemAttributeModel.key == key, TrialSystemAttributeModel.value_json == value_json)
            .limit(1)
        ).first() is not None


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int] | None:
    """The study's running trials with a stale heartbeat, as Optuna's ``fail_stale_trials``
    finds them; None outside the tested range (Optuna's public API only fails them)."""
    if not fast_paths():
        return None
    return list(storage._get_stale_trial_ids(study_id))  # type: ignore[attr-defined]


# -- A trial's writes in one transaction (search/trial_writes.py) ---------------------------

# (database, study id, param name, distribution JSON) found to fit the study's distribution of
# that param: which never changes once stored, so each worker checks each param once, as
# Optuna's cached storage does, not once per trial.
_FITS_THE_STUDY: set[tuple[str, int, str, str]] = set()


def store_rdb(rdb: RDBStorage, trial_id: int, writes: Any) -> None:
    """Stores ``writes`` (``search.trial_writes.PendingWrites``) in one transaction on Optuna's schema."""
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


# -- TPE reading the study once a trial (search/samplers/tpe.py) -----------------------------

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


# -- Pruners with indexed checks (search/pruners/) -----------------------------------------

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
