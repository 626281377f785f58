"""Trials of dead workers: failed (stale heartbeat, or none at all) and retried from their checkpoint.

A worker beats every ``HEARTBEAT_SECONDS`` for its trial; a trial whose worker has not beaten for
``GRACE_SECONDS`` is failed and queued again by ``RetryKilledTrials`` (docs/study-format.md).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from kilotune.search import optuna_internals
from kilotune.search.attrs import (
    DEVICE, EPOCH_SECONDS, FAIL_REASON, IMAGES_PER_SECOND, PARAMS_COUNT, RESUMED_FROM_EPOCH, RETRY_OF, STATUS, TIME_SPLIT, WORKER, WORKER_ID,
)

log = logging.getLogger("kilotune.study")
# A trial whose worker has not beaten for GRACE seconds is failed and retried; tests shorten both.
HEARTBEAT_SECONDS = int(os.environ.get("KILOTUNE_HEARTBEAT_SECONDS", 10))
GRACE_SECONDS = int(os.environ.get("KILOTUNE_GRACE_SECONDS", 40))


# User attributes of one attempt, which its retry must not show as its own (its worker writes them anew).
ATTEMPT_ATTRS = (WORKER, WORKER_ID, DEVICE, STATUS, FAIL_REASON, RESUMED_FROM_EPOCH, RETRY_OF,
                 EPOCH_SECONDS, IMAGES_PER_SECOND, PARAMS_COUNT, TIME_SPLIT)


class RetryKilledTrials(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial, where only attempts killed after training use up ``max_retry``.

    An attempt that never trained an epoch (killed while starting, taken ahead, handed back, or
    interrupted by a signal) is retried without limit: the configuration is not to blame. Each
    retry is a WAITING copy with the trial's params, reports and configuration, without the dead
    attempt's worker and status. Once a configuration was killed after training more than
    ``max_retry`` times it is given up, recorded as a FAIL trial with status "failed" and a
    ``fail_reason`` (a finished attempt takes no more attributes), which counts toward the budget.

    Args:
        max_retry: Kills after training that a configuration is retried for.
    """

    KILLS = "kills_after_training"  # system attribute: the count so far, carried from copy to copy
    INHERITED = "inherited_epochs"  # system attribute: reports the copy started with
    RETRY_OF = "retry_of"  # system attribute: the number of the attempt this copy retries

    def __init__(self, max_retry: int = 3) -> None:
        super().__init__(max_retry=None, inherit_intermediate_values=True)
        self.max_kills = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Queues the retry of ``trial`` (or its FAIL record), unless one is queued already.

        One copy per failed attempt, so a caller may call again when it cannot know whether its
        call stored the copy (a database error at the commit) and no budgeted trial is doubled.
        """
        if _retried(study, trial.number):
            return
        history = [*self.retry_history(trial), trial.number]
        system_attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history, self.RETRY_OF: trial.number}
        trained = len(trial.intermediate_values) > trial.system_attrs.get(self.INHERITED, 0)
        signalled = trial.user_attrs.get(STATUS) in ("interrupted", "returned")
        kills = trial.system_attrs.get(self.KILLS, 0) + (trained and not signalled)
        system_attrs.update({self.KILLS: kills, self.INHERITED: len(trial.intermediate_values)})
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        state = TrialState.WAITING
        if kills > self.max_kills:
            state = TrialState.FAIL
            user_attrs.update(status="failed", fail_reason=f"given up: its worker was killed after training {kills} times "
                                                           f"(trials {history}; max_retry={self.max_kills})")
            log.error("trial %d: %s", trial.number, user_attrs[FAIL_REASON])
        study.add_trial(optuna.create_trial(
            state=state, params=trial.params, distributions=trial.distributions, user_attrs=user_attrs,
            system_attrs=system_attrs, intermediate_values=trial.intermediate_values,
        ))


def _retried(study: optuna.Study, number: int) -> bool:
    """Whether a retry (or the FAIL record) of attempt ``number`` is in the study: one indexed
    query on an RDB storage, else a scan of the study's trials."""
    key, value = RetryKilledTrials.RETRY_OF, number
    storage = optuna_internals.study_storage(study)
    rdb = optuna_internals.rdb_of(storage) if storage is not None else None
    if rdb is None:
        return any(t.system_attrs.get(key) == value for t in study.get_trials(deepcopy=False))
    return optuna_internals.has_system_attr(rdb, optuna_internals.study_id(study, storage), key, json.dumps(value))


def stale_trial_ids(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Running trials whose last heartbeat is older than the grace period, as Optuna's
    ``fail_stale_trials`` finds them (one indexed query); none without heartbeats.

    Outside Optuna's tested range this runs Optuna's public ``fail_stale_trials`` itself (which
    fails and retries them without the budget lock) and returns none.
    """
    if not _heartbeat_enabled(storage):
        return []
    ids = optuna_internals.stale_trial_ids(storage, optuna_internals.study_id(study, storage))
    if ids is None:
        optuna.storages.fail_stale_trials(study)
        return []
    return ids


def _heartbeat_enabled(storage: BaseStorage) -> bool:
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def unbeaten_trial_ids(study: optuna.Study, storage: BaseStorage, running: list[optuna.trial.FrozenTrial]) -> list[int]:
    """Running trials that never beat although they started a grace period ago.

    A worker killed between its ask and its trial's first heartbeat leaves a RUNNING trial that
    Optuna's ``fail_stale_trials`` never fails (it judges only trials that beat once); at the
    end of a study the last workers would wait for it for ever.
    """
    if not isinstance(storage, RDBStorage) or storage.get_heartbeat_interval() is None or not optuna_internals.fast_paths():
        return []  # (outside Optuna's tested range nothing public tells a trial that never beat)
    cutoff = datetime.now() - timedelta(seconds=GRACE_SECONDS)  # Optuna records datetime_start in local time
    old = {optuna_internals.frozen_trial_id(t, study, storage)
           for t in running if t.datetime_start is not None and t.datetime_start < cutoff}
    if not old:
        return []
    return sorted(old - (optuna_internals.beaten_trial_ids(storage, old) or set()))


def fail_and_retry(study: optuna.Study, storage: BaseStorage, trial_ids: list[int], failed: set[int]) -> None:
    """Fails running trials of dead workers and queues their retries; call it under ``budget_lock``.

    Under the lock that every claim takes, no claim comes between a trial's fail and its retry's
    queuing. One that did counted neither (a failed trial does not count, its retry was not there
    yet) and took a new trial in the retry's place, one over the budget once the retry ran
    (issue 17: 13 budgeted trials for 12). Optuna's ``fail_stale_trials`` does the same without
    the lock, and drops the retry of a trial it failed when the database fails before the retry
    is queued (the trial is no longer running, so a second call never finds it).

    Args:
        study: The study.
        storage: The storage it was loaded from.
        trial_ids: Its trials to fail (``stale_trial_ids``, ``unbeaten_trial_ids``); one
            another worker finished or failed first is left to it.
        failed: The trials this caller failed so far, kept across ``with_retry``'s attempts:
            each attempt queues their retries again, which ``RetryKilledTrials`` stores once.
    """
    newly = set()
    for trial_id in set(trial_ids) - failed:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.add(trial_id)
                newly.add(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished or failed it first
            pass
    callback = storage.get_heartbeat_stale_trial_callback() if _heartbeat_enabled(storage) else None  # type: ignore[attr-defined]
    for trial_id in sorted(failed):
        trial = storage.get_trial(trial_id)
        if trial_id in newly:
            log.warning("trial %d: its worker died (its heartbeat is stale, or it never beat): failed, and retried", trial.number)
        if callback is not None:
            callback(study, trial)


