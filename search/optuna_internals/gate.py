"""The gate (Optuna's version inside the tested range) and the study, trial and storage internals
the rest of search/ reads through it: ids, the cached trial, budget and heartbeat queries."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Container

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("kilotune.optuna_internals")
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
