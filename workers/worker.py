"""The worker: pulls trials from a study, trains them, reports every epoch, survives faults.

One loop, read top to bottom in ``Worker.run``: take a trial (fail stale trials, take the
budget lock, ask, sample its config), train it with per-epoch reports (and pruning), tell.
The next trial is taken in the background while this one trains, and reports are written by
a recorder thread, so a trial waits on the database only for prune checks and tell
(docs/bench-storage.md). Every storage call goes through ``with_retry``, so a database
restart costs a wait, not the trial.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import keras
import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note

from kilotune.search.attrs import (
    CONFIG, CV_OF, DEVICE, EPOCH_SECONDS, FAIL_REASON, FOLD, IMAGES_PER_SECOND, PARAMS_COUNT, PRESET, RESUMED_FROM_EPOCH, RETRY_OF, STATUS,
    TIME_SPLIT, VAL_PREDICTIONS, WORKER, WORKER_ID,
)
from kilotune.search.optuna_internals import frozen_trial
from kilotune.search.budget import study_timed_out
from kilotune.search.ensemble import encode_predictions
from kilotune.search.retries import RetryKilledTrials
from kilotune.search.storage import open_storage, with_retry
from kilotune.search.study import check_same_data, load_study, stored_subset
from kilotune.search.winner import StudyTrials, objective_value, winner_note
from kilotune.subset.datasets import load_dataset
from kilotune.subset.subsetfile import find_subset
from kilotune.training.checkpoint import Checkpoint, check_writable
from kilotune.training.data import holdout_data
from kilotune.training.gpu import is_out_of_memory
from kilotune.training.timing import CALLBACKS, OTHER, VALIDATION, PhaseClock
from kilotune.workers.protocol import TakenTrial, TrialRecorder, TrialSource
from kilotune.training.train import EpochReport, TrainData, TrainingInterrupted, probabilities, train

log = logging.getLogger("kilotune.worker")
STORAGE, STARTUP, WALL = "storage", "startup", "wall"  # time_split's keys beside training.timing's phases


def process_age() -> float:
    """Seconds since this process started: from /proc on Linux (10 ms ticks), elsewhere since this module loaded."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _LOADED


_LOADED = time.perf_counter()


def checkpoint_root() -> Path:
    return Path(os.environ.get("KILOTUNE_CHECKPOINT_DIR", "kilotune-checkpoints"))


def finished_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials of the study have finished; 0 for an unknown study (load_study names it)."""
    try:
        study_id = with_retry(lambda: storage.get_study_id_from_name(study_name), what="reading the study")
    except KeyError:
        return 0
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return len(with_retry(lambda: storage.get_all_trials(study_id, deepcopy=False, states=states), what="reading the study"))


class Worker:
    """Trains trials of one study until its budget is spent or ``stop`` is set."""

    def __init__(
        self,
        study_name: str,
        url: str,
        *,
        worker_id: str | None = None,
        device: str = "cpu",
        data_dir: str | None = None,
        subset_path: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        check_writable(checkpoint_root())  # before any trial is taken, which would fail and count
        self.url = url  # resolved by the process's entry point (workers/process.py)
        self.storage = open_storage(self.url, must_exist=True, patient=True)  # compose may start it while PostgreSQL restarts
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Each worker samples its own stream of a seeded study (reproducible per --worker-id), and a
        # worker joining a study with finished trials (a resumed run) another one: the same stream
        # again would repeat the start-up trials it sampled before.
        stream = f"{worker_id or self.name}@{finished_trials(self.storage, study_name)}"
        self.study, self.settings = with_retry(lambda: load_study(study_name, self.storage, sampler_stream=stream), what="loading the study")
        self.stop = stop or threading.Event()
        self.worker_id, self.device = worker_id, device
        self.source = TrialSource(self.url, self.storage, self.study, self.settings, stop=self.stop)

        dataset = load_dataset(self.settings.dataset, data_dir)
        # Another host may lack the creator's file: the study carries a copy (find_subset's order).
        stored = with_retry(lambda: stored_subset(study_name, self.storage), what="reading the study's subset")
        subset = find_subset(dataset, self.settings.subset_checksum, given=subset_path, recorded=self.settings.subset_path, stored=stored)
        check_same_data(self.settings, dataset.checksum, subset.checksum, study_name)
        self.data = holdout_data(dataset, subset.indices, self.settings.val_fraction, self.settings.split_seed)
        self._dataset, self._chosen, self._folds = dataset, subset.indices, {0: self.data}

    def data_for(self, trial: optuna.Trial) -> TrainData:
        """The trial's split: fold 0 for the search, its ``fold`` for a fold trial (search/winner.py)."""
        fold = trial.user_attrs.get(FOLD, 0)
        if fold not in self._folds:
            self._folds[fold] = holdout_data(self._dataset, self._chosen, self.settings.val_fraction, self.settings.split_seed, fold)
        return self._folds[fold]

    def run(self, max_trials: int | None = None) -> int:
        """Returns the number of trials this worker finished (complete, pruned or failed)."""
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials={max_trials} must be at least 1 (leave it out to train until the budget is spent)")
        started, done, startup = time.time(), 0, process_age()  # startup: the first trial records it
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ask-ahead") as ahead:
            upcoming: Future[TakenTrial | None] | None = ahead.submit(self.source.take, started)
            while upcoming is not None:
                clock = PhaseClock(STORAGE)  # the trial's clock starts with the wait for it (taken ahead)
                taken = upcoming.result()
                clock.switch(OTHER)
                if taken is None:
                    if not self.stop.is_set():
                        log.info("budget of study %r spent; worker %s stops", self.study.study_name, self.name)
                        self._write_note()  # the final one: nothing runs any more
                    break
                timed_out = study_timed_out(self.study, self.settings, started)
                if self.stop.is_set() or timed_out:
                    self.source.hand_back(taken, requeue=not timed_out)
                    break
                # Take the next trial while this one trains: the claim, the ask and the space's
                # ~15 suggests are ~0.2-0.3 s of storage and sampling (docs/bench-storage.md).
                wants_more = max_trials is None or done + 1 < max_trials
                self.source.training.set()  # a fold trial taken ahead would wait behind this one: left to a free worker
                upcoming = ahead.submit(self.source.take, started) if wants_more else None
                try:
                    status, startup = self._run_trial(taken, clock, startup), None
                finally:
                    self.source.training.clear()
                if status != "interrupted":
                    done += 1
        return done

    def _run_trial(self, taken: TakenTrial, clock: PhaseClock, startup: float | None = None) -> str:
        trial = taken.trial
        history = RetryKilledTrials.retry_history(frozen_trial(trial))
        # Every retry of a trial shares the first attempt's checkpoint directory (a fold trial's study is the companion).
        checkpoint = Checkpoint(checkpoint_root() / trial.study.study_name / str(history[0] if history else trial.number))
        try:
            with TrialRecorder(trial) as recorder:
                return self._train_trial(taken, recorder, history, checkpoint, clock, startup)
        finally:
            taken.heartbeat.stop()
            keras.backend.clear_session()  # free the graph and memory before the next model

    def _train_trial(self, taken: TakenTrial, recorder: TrialRecorder, history: list[int], checkpoint: Checkpoint, clock: PhaseClock,
                     startup: float | None) -> str:  # fmt: skip
        trial, epoch_seconds = taken.trial, []
        # Fold trials re-evaluate a finished candidate; a warm-start preset runs to the end, so a
        # search is never worse than the recipes it could have run.
        prunable = CV_OF not in trial.user_attrs and PRESET not in trial.user_attrs
        try:
            config = taken.sampled_config()
            attrs = {CONFIG: config.to_dict(), WORKER: self.name, DEVICE: self.device, STATUS: "running"}
            if self.worker_id:
                attrs[WORKER_ID] = self.worker_id
            if history:
                attrs[RETRY_OF] = history[-1]
            done = checkpoint.history() if checkpoint.exists() else []
            if done:
                attrs[RESUMED_FROM_EPOCH] = len(done)
            for key, value in attrs.items():
                recorder.set_user_attr(key, value)
            # The killed attempt's recorder may not have stored its last reports: the checkpoint has them.
            reported = frozen_trial(trial).intermediate_values
            for epoch in done:
                if epoch["epoch"] not in reported:
                    recorder.report(epoch["val_accuracy"], epoch["epoch"])

            def report(r: EpochReport) -> None:
                epoch_seconds.append(r.seconds)
                recorder.report(r.val_accuracy, r.epoch)
                if prunable and self.settings.may_prune_at(r.epoch):
                    with clock.timed(STORAGE):
                        recorder.flush()  # the pruner reads the reports
                        pruned = with_retry(trial.should_prune, what="should_prune")
                    if pruned:
                        raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")

            result = train(config, self.data_for(trial), [report], checkpoint_dir=checkpoint.directory, stop=self.stop, clock=clock)
        except optuna.TrialPruned:
            self._finish(trial, recorder, TrialState.PRUNED, "pruned", epoch_seconds, time_split(clock, startup))
            checkpoint.clear()
            return "pruned"
        except TrainingInterrupted:
            # Not a result: fail it now and queue its retry, which resumes from the checkpoint.
            self._finish(trial, recorder, TrialState.FAIL, "interrupted", epoch_seconds, time_split(clock, startup), retry=True)
            return "interrupted"
        except Exception as e:  # one bad trial must not end the worker
            reason = "out of memory" if is_out_of_memory(e) else " ".join(f"{type(e).__name__}: {e}".split())[:500]
            log.error("trial %d failed: %s\n%s", trial.number, reason, traceback.format_exc())
            recorder.set_user_attr(FAIL_REASON, reason)
            self._finish(trial, recorder, TrialState.FAIL, "failed", epoch_seconds, time_split(clock, startup))
            checkpoint.clear()
            return "failed"
        # A diverged run is a result (a bad one: its last finite epochs), so the sampler learns to avoid it.
        value = objective_value([r.val_accuracy for r in result.history], self.settings.objective_epochs)
        recorder.set_user_attr(PARAMS_COUNT, result.params)
        if result.status == "complete":  # what an ensemble's members are chosen by (search/ensemble.py)
            split = self.data_for(trial)
            with clock.timed(VALIDATION):
                recorder.set_user_attr(VAL_PREDICTIONS, encode_predictions(probabilities(result, split.x_val), split.y_val))
        self._finish(trial, recorder, TrialState.COMPLETE, result.status, epoch_seconds, time_split(clock, startup), value)
        checkpoint.clear()
        return result.status

    def _finish(
        self,
        trial: optuna.Trial,
        recorder: TrialRecorder,
        state: TrialState,
        status: str,
        epoch_seconds: list[float],
        split: dict[str, float],
        value: float | None = None,
        *,
        retry: bool = False,
    ) -> None:
        recorder.set_user_attr(STATUS, status)
        recorder.set_user_attr(EPOCH_SECONDS, [round(s, 3) for s in epoch_seconds])
        if epoch_seconds:
            recorder.set_user_attr(IMAGES_PER_SECOND, round(len(self.data.x_train) * len(epoch_seconds) / sum(epoch_seconds), 1))
        recorder.set_user_attr(TIME_SPLIT, split)
        recorder.flush()  # a finished trial takes no more writes
        tell = lambda: trial.study.tell(trial, value, state=state, skip_if_finished=True)  # noqa: E731
        if retry:
            self.source.fail_and_retry(trial, tell)  # with its retry, under the budget lock
        else:
            with_retry(tell, what="tell")
        log.info("trial %d %s%s", trial.number, status, f" value={value:.4f}" if value is not None else "")
        if state == TrialState.COMPLETE and CV_OF in trial.user_attrs:
            self._write_note()  # a fold's value may change the winner

    def _write_note(self) -> None:
        """Writes the study's note in optuna-dashboard: the cross-validated winner (``winner_note``).

        Under the budget lock, so the last writer has read every fold trial told before it. A
        note that cannot be written costs a warning, never the trial.
        """
        def write() -> None:
            with self.source.budget_lock():
                trials = StudyTrials.read(self.study, self.storage)
                save_note(self.study, winner_note(trials, self.settings.cv_top_k, self.study.study_name))

        try:
            with_retry(write, what="writing the study's note")
        except Exception as e:  # noqa: BLE001
            log.warning("the study's note was not written: %s", " ".join(f"{type(e).__name__}: {e}".split())[:300])


def time_split(clock: PhaseClock, startup: float | None = None) -> dict[str, float]:
    """A trial's ``time_split`` attribute (docs/study-format.md): its wall seconds so far by phase.

    ``wall`` runs from when the worker began waiting for the trial (taken ahead, so usually
    ready) to now, just before its last writes are stored and it is told (one store and the
    tell, a few ms each on PostgreSQL: docs/bench-storage.md, not counted). Its parts sum to
    it: ``build``, ``train``, ``validation`` and ``checkpoint`` as ``training.train.train``
    charges them (``validation`` also the complete trial's predictions on its validation
    images), ``storage`` the wait for the trial, and the recorder's flush and ``should_prune``
    at each prune check, and ``other`` the rest (the trial's set-up, the epoch callbacks
    outside storage). ``startup``, on a worker's first trial only and not part of ``wall``:
    from the process's start to that wait (imports, the backend, the storage, the study, the data).
    """
    seconds = clock.read()
    seconds[OTHER] = seconds.get(OTHER, 0.0) + seconds.pop(CALLBACKS, 0.0)
    split = {WALL: sum(seconds.values()), **{k: seconds.get(k, 0.0) for k in ("build", "train", VALIDATION, "checkpoint", STORAGE, OTHER)}}
    if startup is not None:
        split[STARTUP] = startup
    return {k: round(v, 3) for k, v in split.items()}
