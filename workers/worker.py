"""The worker: pulls trials from a study, trains them, reports every epoch, survives faults.

One loop, read top to bottom in ``Worker.run``: fail stale trials, take the budget lock and
ask, train with per-epoch reports (and pruning), tell. Every storage call goes through
``with_retry``, so a database restart costs a wait, not the trial.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

import keras
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from search.space import SearchSpace
from search.study import (
    HEARTBEAT_SECONDS,
    budget_left,
    budget_lock,
    check_same_data,
    load_study,
    open_storage,
    storage_url,
    with_retry,
)
from subset.datasets import load_dataset
from subset.subsetfile import load_subset
from workers.data import holdout_data
from workers.gpu import is_out_of_memory
from workers.checkpoint import Checkpoint
from workers.recorder import TrialRecorder
from workers.train import EpochReport, TrainingInterrupted, train

log = logging.getLogger("kilotune.worker")


def checkpoint_root() -> Path:
    return Path(os.environ.get("KILOTUNE_CHECKPOINT_DIR", "kilotune-checkpoints"))


class Worker:
    """Trains trials of one study until its budget is spent or ``stop`` is set."""

    def __init__(
        self,
        study_name: str,
        storage: str | None = None,
        *,
        worker_id: str | None = None,
        device: str = "cpu",
        data_dir: str | None = None,
        subset_path: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.url = storage_url(storage)
        self.storage = open_storage(self.url)
        self.study, self.settings = load_study(study_name, self.storage)
        self.stop = stop or threading.Event()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.worker_id, self.device = worker_id, device
        self.space = SearchSpace.from_spec(self.settings.space)
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)

        dataset = load_dataset(self.settings.dataset, data_dir)
        subset = load_subset(subset_path or self.settings.subset_path, dataset)
        check_same_data(self.settings, dataset.checksum, subset.checksum, study_name)
        self.data = holdout_data(dataset, subset.indices, self.settings.val_fraction, self.settings.split_seed)

    def run(self, max_trials: int | None = None) -> int:
        """Returns the number of trials this worker finished (complete, pruned or failed)."""
        started, done = time.time(), 0
        while not self.stop.is_set() and (max_trials is None or done < max_trials):
            trial = self._ask(started)
            if trial is None:
                log.info("budget of study %r spent; worker %s stops", self.study.study_name, self.name)
                break
            if self._run_trial(trial) != "interrupted":
                done += 1
        return done

    def _ask(self, started: float) -> optuna.Trial | None:
        with_retry(lambda: fail_stale_trials(self.study), what="failing stale trials")

        def ask() -> optuna.Trial | None:
            with budget_lock(self.url, self.study.study_name, self.storage):
                if not budget_left(self.study, self.settings, started):
                    return None
                return self.study.ask()

        return with_retry(ask, what="ask")

    def _run_trial(self, trial: optuna.Trial) -> str:
        frozen = self.storage.get_trial(trial._trial_id)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        # Every retry of a trial shares the first attempt's checkpoint directory.
        checkpoint = Checkpoint(checkpoint_root() / self.study.study_name / str(history[0] if history else trial.number))
        heartbeat = _Heartbeat(self.storage, trial._trial_id)
        heartbeat.start()
        try:
            with TrialRecorder(trial) as recorder:
                return self._train_trial(trial, recorder, history, checkpoint)
        finally:
            heartbeat.stop()
            keras.backend.clear_session()  # free the graph and memory before the next model

    def _train_trial(self, trial: optuna.Trial, recorder: TrialRecorder, history: list[int], checkpoint: Checkpoint) -> str:
        epoch_seconds: list[float] = []
        try:
            config = self.space.suggest(trial, self.settings.epochs)
            attrs = {"config": config.to_dict(), "worker": self.name, "device": self.device, "status": "running"}
            if self.worker_id:
                attrs["worker_id"] = self.worker_id
            if history:
                attrs["retry_of"] = history[-1]
            if checkpoint.exists():
                attrs["resumed_from_epoch"] = checkpoint.epoch()
            for key, value in attrs.items():
                recorder.set_user_attr(key, value)

            def report(r: EpochReport) -> None:
                epoch_seconds.append(r.seconds)
                recorder.report(r.val_accuracy, r.epoch)
                if self.settings.may_prune_at(r.epoch):
                    recorder.flush()  # the pruner reads the reports
                    if with_retry(trial.should_prune, what="should_prune"):
                        raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")

            result = train(config, self.data, [report], checkpoint_dir=checkpoint.directory, stop=self.stop)
        except optuna.TrialPruned:
            self._finish(trial, recorder, TrialState.PRUNED, "pruned", epoch_seconds)
            checkpoint.clear()
            return "pruned"
        except TrainingInterrupted:
            # Not a result: fail it now and queue its retry, which resumes from the checkpoint.
            self._finish(trial, recorder, TrialState.FAIL, "interrupted", epoch_seconds)
            with_retry(lambda: self.retry(self.study, self.storage.get_trial(trial._trial_id)), what="retry")
            return "interrupted"
        except Exception as e:  # one bad trial must not end the worker
            reason = "out of memory" if is_out_of_memory(e) else " ".join(f"{type(e).__name__}: {e}".split())[:500]
            log.error("trial %d failed: %s\n%s", trial.number, reason, traceback.format_exc())
            recorder.set_user_attr("fail_reason", reason)
            self._finish(trial, recorder, TrialState.FAIL, "failed", epoch_seconds)
            checkpoint.clear()
            return "failed"
        # A diverged run is a result (a bad one: its last finite epoch), so the sampler learns to avoid it.
        value = result.val_accuracy if result.history else 0.0
        recorder.set_user_attr("params_count", result.params)
        self._finish(trial, recorder, TrialState.COMPLETE, result.status, epoch_seconds, value)
        checkpoint.clear()
        return result.status

    def _finish(
        self,
        trial: optuna.Trial,
        recorder: TrialRecorder,
        state: TrialState,
        status: str,
        epoch_seconds: list[float],
        value: float | None = None,
    ) -> None:
        recorder.set_user_attr("status", status)
        recorder.set_user_attr("epoch_seconds", [round(s, 3) for s in epoch_seconds])
        if epoch_seconds:
            recorder.set_user_attr("images_per_second", round(len(self.data.x_train) * len(epoch_seconds) / sum(epoch_seconds), 1))
        recorder.flush()  # a finished trial takes no more writes
        with_retry(lambda: self.study.tell(trial, value, state=state, skip_if_finished=True), what="tell")
        log.info("trial %d %s%s", trial.number, status, f" value={value:.4f}" if value is not None else "")


class _Heartbeat:
    """Records the trial's heartbeat every few seconds; a dead worker's trial goes stale."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def start(self) -> None:
        if hasattr(self.storage, "record_heartbeat"):
            with_retry(lambda: self.storage.record_heartbeat(self.trial_id), what="heartbeat")
            self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # the database may be restarting; the next beat tries again
                log.warning("heartbeat failed: %s", type(e).__name__)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
