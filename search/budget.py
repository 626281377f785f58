"""The study's global budget: trials and seconds for the whole study, claimed one trial at a time
under a lock every worker queues for, so the count is exact (``claim_trial``, ``budget_lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from kilotune.search import optuna_internals
from kilotune.search.attrs import CREATED_AT, CV_OF, N_TRIALS, STATUS, TIMEOUT_S
from kilotune.search.settings import StudySettings
from kilotune.search.storage import local_path, with_retry
from kilotune.search.winner import StudyTrials, enqueue_fold_trials, is_fold_trial, load_cv_study
from kilotune.subset.files import file_lock


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, running and queued search trials count; a trial failed by a dead worker does not,
    because Optuna queues its retry, which does. Fold trials (cross-validation) never count."""
    if is_fold_trial(trial):
        return False
    if trial.state != TrialState.FAIL:
        return True
    return trial.user_attrs.get(STATUS) == "failed"


def study_timed_out(study: optuna.Study, settings: StudySettings, started: float) -> bool:
    """Whether the study's ``--timeout`` (for the study as a whole) has passed.

    The timeout is read from the study (the read that gives its age), so a ``study extend``
    applies to running workers, whose ``settings`` were loaded when they started.
    """
    attrs = with_retry(lambda: study.user_attrs, what="reading the study's timeout")  # a worker asks between trials
    timeout_s = attrs.get(TIMEOUT_S, settings.timeout_s)
    return timeout_s is not None and _study_age(attrs, started) >= timeout_s


def current_budget(study: optuna.Study, settings: StudySettings) -> StudySettings:
    """``settings`` with the budget the study records now (``kilotune study extend`` changes it):
    one read of the study's attributes, a single indexed query on an RDB storage."""
    attrs = with_retry(lambda: study.user_attrs, what="reading the study's budget")
    return replace(settings, n_trials=attrs.get(N_TRIALS, settings.n_trials), timeout_s=attrs.get(TIMEOUT_S, settings.timeout_s))


def budget_left(study: optuna.Study, settings: StudySettings, started: float) -> bool:
    settings = current_budget(study, settings)
    if study_timed_out(study, settings, started):
        return False
    if settings.search_trials is None:
        return True
    trials = study.get_trials(deepcopy=False)
    # A queued trial (a retry, an enqueued preset) is already inside the budget: ask() pops it.
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return sum(counts_toward_budget(t) for t in trials) < settings.search_trials


def claim_trial(
    study: optuna.Study, settings: StudySettings, storage: BaseStorage, started: float, *, fold_trials: bool = True
) -> optuna.Trial | None:
    """``study.ask()`` within the study's global budget; None when it is spent. Call it under
    ``budget_lock``, which every worker's claim queues for.

    On an RDB storage the budget is counted by two indexed queries (9-27 ms from 0 to 128 running trials).
    ``budget_left`` and ``study.ask`` each re-read every unfinished trial with its attributes
    and reports (Optuna's cached storage re-reads those on every call): 14 ms in an idle study,
    368 ms with 128 unfinished trials, which capped a 64-worker fleet below the rate it starts
    10-second trials (bench/budget_claim.py, docs/bench-storage.md).

    Args:
        study: The study.
        settings: Its settings (the budget: ``n_trials``, ``timeout_s``).
        storage: The storage the study was loaded from.
        started: When this worker started (the timeout's origin if the study has no record of it).
        fold_trials: False: a search trial or nothing. A worker taking its next trial while one
            trains passes it, so that a fold trial (a fixed few, at the study's end) goes to a
            free worker rather than waiting behind a trial.
    """
    settings = current_budget(study, settings)  # running workers see a `study extend` at their next claim
    if not isinstance(storage, RDBStorage) or not optuna_internals.fast_paths():  # (outside Optuna's tested range: its public API)
        if budget_left(study, settings, started):
            return study.ask()
        return _cross_validation_trial(study, settings, storage, started) if fold_trials else None
    if study_timed_out(study, settings, started):
        return None
    counted, waiting = _budget_rows(storage, optuna_internals.study_id(study, storage))
    if waiting:
        # A queued trial (a retry, an enqueued preset, an old study's fold trial) is already inside
        # the budget; Study.ask takes it (and reads the study, which is rare enough here).
        return study.ask()
    if settings.search_trials is not None and counted >= settings.search_trials:
        return _cross_validation_trial(study, settings, storage, started) if fold_trials else None
    return optuna_internals.new_trial(study, storage)


def _cross_validation_trial(study: optuna.Study, settings: StudySettings, storage: BaseStorage, started: float) -> optuna.Trial | None:
    """Once the search's trials are spent: a fold trial of a top candidate from the companion
    study (``search.winner``), queued now if it is missing. None when every fold is taken, or when
    the study is not cross-validated.

    While search trials still run, only the candidates they cannot push out of the top ``k`` get
    their folds: each unfinished trial may enter the top and push every candidate one place down,
    so with ``r`` of them the first ``k - r`` are certain (folds queued for a candidate later
    passed would overrun the budget). So a worker free before the last search trials end trains a
    fold trial, not nothing. A fold trial already queued (a retry too) is inside the budget: it is
    handed out whatever runs."""
    if not settings.fold_trials or study_timed_out(study, settings, started):
        return None
    # Each study read once a claim: workers call this every second at a study's end.
    trials = study.get_trials(deepcopy=False)
    certain = settings.cv_top_k - sum(not t.state.is_finished() for t in trials if not is_fold_trial(t))
    cv_study = load_cv_study(study, storage, create=certain > 0)
    if cv_study is None:
        return None
    cv_trials = cv_study.get_trials(deepcopy=False)
    queued = enqueue_fold_trials(StudyTrials.of(trials, cv_trials, study.direction), cv_study, certain, settings.cv_folds) if certain > 0 else 0
    if not queued and not any(t.state == TrialState.WAITING for t in cv_trials):
        return None
    return cv_study.ask()


def _budget_rows(storage: RDBStorage, study_id: int) -> tuple[int, list[int]]:
    """Trials counting toward the budget (``counts_toward_budget``), and the WAITING trials' ids."""
    return optuna_internals.budget_rows(storage, study_id, status_key=STATUS, fold_key=CV_OF)


def _study_age(attrs: dict[str, Any], fallback: float) -> float:
    """Seconds since the study was created (the timeout is for the study as a whole)."""
    created = attrs.get(CREATED_AT)
    if not created:
        return time.time() - fallback
    return (datetime.now(timezone.utc) - datetime.fromisoformat(created)).total_seconds()


@contextlib.contextmanager
def budget_lock(url: str, study_name: str, storage: BaseStorage) -> Iterator[None]:
    """Serialises "is there budget left? then ask" across workers, so the budget is exact.

    PostgreSQL: a session advisory lock keyed by the study, on a connection from the
    storage's own pool (so a worker never holds more than that pool). SQLite and journal
    files: an fcntl lock beside the file (all their workers share one host). Other
    databases: no lock, and the budget may be overshot by up to one trial per worker.
    """
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    if url.startswith("postgresql") and isinstance(storage, RDBStorage):
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)" % key)
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)" % key)
        return
    path = local_path(url)
    if path is None:
        yield
        return
    with file_lock(f"{path}.{key & 0xFFFFFFFF:08x}.lock"):
        yield


