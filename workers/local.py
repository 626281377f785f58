"""``kilotune run``: the main job on one machine, N real worker processes and a live progress display.

The display reads the study, which the workers write anyway: trials and epochs done against
the budget, each worker's trial and epoch (its reports), the best so far, the time taken and
an estimate of the time left. On a terminal it is a live panel (rich); otherwise one line per
event (a trial starts training, or ends), for logs and CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from kilotune.search.attrs import DATASET, FAIL_REASON, STATUS, WORKER, WORKER_ID
from kilotune.search.create import create_from_args
from kilotune.search.export import export_trial, validation_text
from kilotune.search.report import HANDED_BACK, outcome
from kilotune.search.space import PRESETS
from kilotune.search.study import StudySettings, counts_toward_budget, load_study, open_storage, redact, storage_url
from kilotune.search.winner import is_fold_trial, trial_arch, winner_line

DEFAULT_TRIALS = 30
POLL_SECONDS = 2.0
# What a worker prints that a user of ``kilotune run`` need not see (KILOTUNE_DEBUG=1 shows it):
# the backends' native start-up logs (on a CPU-only host "Could not find cuda drivers", "failed
# call to cuInit"), INFO logs, and each worker's closing count (the display shows every trial).
QUIET = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"  # absl/glog INFO and WARNING lines
    r"|E\d{4} .*(?:cuInit|CUDA|cuda)"  # no GPU driver: an "error" only to TensorFlow
    r"|WARNING: All log messages before absl::InitializeLog"
    r"|\[I \d{4}-\d\d-\d\d"  # Optuna INFO
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ INFO "  # kilotune INFO
    r"|worker \S+: \d+ trials)"
)


def run_local(args: argparse.Namespace) -> int:
    """Creates (or joins) the study, runs ``args.workers`` worker processes until its budget is
    spent, shows their progress and prints the best configuration; 0 if every worker exited 0."""
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} must be at least 1")
    unknown = [p for p in args.preset if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    study, created = create_from_args(args, default_trials=DEFAULT_TRIALS)  # a local run must end by itself
    url = storage_url(args.storage)
    dashboard = "kilotune dashboard" + (f" --storage {redact(url)}" if args.storage else "")
    print(f"study {study.study_name!r} on {study.user_attrs[DATASET]} in {redact(url)}: {args.workers} workers, "
          f"budget {args.n_trials or '-'} trials / {args.timeout or '-'} s; dashboard: {dashboard}", flush=True)

    display = Display(Console())
    # The URL goes to the workers in their environment: on their command lines `ps` would show its password.
    env = {**os.environ, "KILOTUNE_STORAGE": url}
    command = [sys.executable, "-m", "kilotune", "worker", "--study", study.study_name]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    workers = [start_worker(command + ["--worker-id", f"local-{i}"], env, f"local-{i}", display) for i in range(args.workers)]

    def forward(signum: int, frame: object) -> None:
        # Workers finish their batch, fail their trial for retry, and exit: nothing is lost.
        display.log("stopping workers; their trials will be retried on the next run")
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    study, settings = load_study(study.study_name, open_storage(url))
    started = time.time()
    with display:
        while any(w.poll() is None for w in workers):
            display.update(Snapshot.read(study, settings, time.time() - started))
            time.sleep(POLL_SECONDS)
        display.update(Snapshot.read(study, settings, time.time() - started), final=True)
    # A fresh read, as `kilotune export` makes: the best configuration is the one it writes.
    print_best(optuna.load_study(study_name=study.study_name, storage=open_storage(url)))
    return 0 if all(w.returncode == 0 for w in workers) else 1


def start_worker(command: list[str], env: dict[str, str], name: str, display: Display) -> subprocess.Popen:
    """Starts a worker process whose output goes through ``display``, quiet lines left out."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    debug = bool(os.environ.get("KILOTUNE_DEBUG"))

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if debug or not QUIET.match(line):
                display.log(f"[{name}] {line.rstrip()}")

    threading.Thread(target=relay, daemon=True, name=f"output-{name}").start()
    return process


@dataclass(frozen=True)
class Running:
    """A trial a worker is training: who, which, and its epoch (of the study's epochs)."""

    worker: str
    trial: int
    epoch: int


@dataclass(frozen=True)
class Snapshot:
    """The study as the display shows it, from one read of its trials.

    Args:
        trials: Every trial of the study.
        settings: The study's settings (its budget and epochs per trial).
        elapsed: Seconds since this run started its workers.
        best: The winner as ``kilotune export`` picks it (the cross-validated mean once its
            folds are in) and how far cross-validation is: ``search.winner.winner_line``.
    """

    trials: list[FrozenTrial]
    settings: StudySettings
    elapsed: float
    best: str = "best -"

    @classmethod
    def read(cls, study: optuna.Study, settings: StudySettings, elapsed: float) -> Snapshot:
        trials = study.get_trials(deepcopy=False)  # one read a poll: the winner line ranks the same trials
        return cls(trials, settings, elapsed, winner_line(study, trials=trials))

    @property
    def counted(self) -> list[FrozenTrial]:
        """Trials inside the budget: a retried attempt's copy counts, the attempt does not."""
        return [t for t in self.trials if counts_toward_budget(t)]

    @property
    def finished(self) -> int:
        return sum(t.state.is_finished() for t in self.counted)

    @property
    def epochs_done(self) -> int:
        # A retry inherits its attempt's reports: counting the copy alone counts each epoch once.
        return sum(len(t.intermediate_values) for t in self.counted)

    @property
    def epochs_budget(self) -> int | None:
        """Every budgeted trial trained to the end: the most the run can take (pruning takes less)."""
        return self.settings.n_trials * self.settings.epochs if self.settings.n_trials else None

    @property
    def running(self) -> list[Running]:
        """Trials being trained (a worker wrote its status), not those only taken ahead."""
        return [Running(str(t.user_attrs.get(WORKER_ID) or t.user_attrs.get(WORKER, "?")), t.number, len(t.intermediate_values))
                for t in self.trials if t.state == TrialState.RUNNING and t.user_attrs.get(STATUS) == "running"]

    @property
    def fold_epochs(self) -> tuple[int, int]:
        """Epochs of cross-validation trained so far, and still to train: once the trial budget is
        spent, the top ``cv_top_k`` trials train again on every other fold (search/winner.py)."""
        s = self.settings
        folds = [t for t in self.trials if is_fold_trial(t)]
        done = sum(s.epochs if t.state == TrialState.COMPLETE else len(t.intermediate_values) for t in folds
                   if t.state in (TrialState.COMPLETE, TrialState.RUNNING))
        wanted = s.cv_top_k * (s.folds - 1) * s.epochs if s.n_trials and s.folds > 1 else 0
        return done, max(0, wanted - done)

    @property
    def seconds_left(self) -> float | None:
        """An estimate: the epochs the trials left need (cross-validation's too), at the fleet's
        epochs per second so far, and never past the study's timeout. None while there is nothing
        to go by."""
        estimates = []
        fold_done, fold_left = self.fold_epochs
        if self.settings.n_trials and self.epochs_done:
            finished = [t for t in self.counted if t.state.is_finished()]
            per_trial = sum(len(t.intermediate_values) for t in finished) / len(finished) if finished else self.settings.epochs
            running = [t for t in self.counted if not t.state.is_finished()]
            left = max(0, self.settings.n_trials - len(finished) - len(running)) * per_trial
            left += sum(max(0.0, per_trial - len(t.intermediate_values)) for t in running) + fold_left
            estimates.append(left * self.elapsed / (self.epochs_done + fold_done))
        if self.settings.timeout_s:
            # The timeout is for the study as a whole, from its creation.
            created = self.settings.created_at
            age = (datetime.now(timezone.utc) - datetime.fromisoformat(created)).total_seconds() if created else self.elapsed
            estimates.append(max(0.0, self.settings.timeout_s - age))
        return min(estimates) if estimates else None

    def summary(self) -> str:
        """One line: the budget, the best so far, the times."""
        trials = f"{self.finished}/{self.settings.n_trials or '-'} trials"
        epochs = f"{self.epochs_done}/{self.epochs_budget or '-'} epochs"
        left = self.seconds_left
        return f"{trials}, {epochs}; {self.best}; {_clock(self.elapsed)} elapsed, " + (f"~{_clock(left)} left" if left is not None else "time left -")


def events(before: dict[int, str], now: Snapshot) -> tuple[dict[int, str], list[str]]:
    """What changed since ``before`` (trial number -> what was shown): a trial started training or ended."""
    seen, lines = dict(before), []
    running = {r.trial: r for r in now.running}
    for t in now.trials:
        shown = "training" if t.number in running else outcome(t) if t.state.is_finished() else None
        if shown is None or seen.get(t.number) == shown:
            continue
        seen[t.number] = shown
        who = t.user_attrs.get(WORKER_ID) or t.user_attrs.get(WORKER)
        if shown == "training":
            lines.append(f"trial {t.number} training on {who} ({trial_arch(t)})")
        elif shown == HANDED_BACK:
            lines.append(f"trial {t.number} handed back (taken ahead, never trained)")
        else:
            value = f" {t.value:.4f}" if t.value is not None else ""
            reason = f": {t.user_attrs[FAIL_REASON]}" if FAIL_REASON in t.user_attrs else ""
            lines.append(f"trial {t.number} {t.user_attrs.get(STATUS, shown)}{value} "
                         f"({trial_arch(t)}, {len(t.intermediate_values)}/{now.settings.epochs} epochs{', ' + who if who else ''}){reason}")
    return seen, lines


class Display:
    """The progress of a run: live on a terminal, one line per event otherwise.

    Use as a context manager around the run; ``update`` with each new snapshot, ``log`` for
    other lines (a worker's warnings), which appear above the live panel.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else None
        self._shown: dict[int, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Display:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()

    def log(self, line: str) -> None:
        with self._lock:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def update(self, snapshot: Snapshot, *, final: bool = False) -> None:
        with self._lock:
            self._shown, lines = events(self._shown, snapshot)
            # Live, the events scroll above the panel, which has the rest; plain, each line has it.
            suffix = "" if self.live is not None else f" | {snapshot.summary()}"
            for line in lines:
                self.console.print(f"[{_clock(snapshot.elapsed)}] {line}{suffix}", markup=False, highlight=False, soft_wrap=True)
            if self.live is not None:
                self.live.update(panel(snapshot), refresh=True)
            elif final:
                self.console.print(f"done: {snapshot.summary()}", markup=False, highlight=False, soft_wrap=True)


def panel(snapshot: Snapshot) -> Group:
    """The live display: bars for trials and epochs against the budget, the best, each worker's trial."""
    s = snapshot.settings
    bars = Table.grid(padding=(0, 2))
    for label, done, total in (("trials", snapshot.finished, s.n_trials), ("epochs", snapshot.epochs_done, snapshot.epochs_budget)):
        bar = ProgressBar(total=total, completed=done, width=40) if total else ProgressBar(total=None, width=40)
        bars.add_row(label, bar, f"{done}/{total or '-'}")
    left = snapshot.seconds_left
    facts = Table.grid(padding=(0, 2))
    facts.add_row("best", snapshot.best.removeprefix("best "))
    facts.add_row("elapsed", _clock(snapshot.elapsed), "left", f"~{_clock(left)}" if left is not None else "-")
    workers = Table("worker", "trial", "epoch", box=None, header_style="bold", pad_edge=False)
    for r in sorted(snapshot.running, key=lambda r: r.worker):
        workers.add_row(r.worker, str(r.trial), f"{r.epoch}/{s.epochs}")
    handed_back = sum(outcome(t) == HANDED_BACK for t in snapshot.trials)
    states = {o: sum(outcome(t) == o for t in snapshot.trials) for o in ("complete", "pruned", "fail")}
    counts = f"{states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed, {handed_back} handed back"
    return Group(bars, facts, counts, workers)


def print_best(study: optuna.Study) -> None:
    """The best configuration, exactly as ``kilotune export`` writes it."""
    try:
        exported = export_trial(study)
    except ValueError as e:  # nothing complete yet, or no config recorded
        print(f"no best configuration yet: {e}")
        return
    provenance = exported["provenance"]
    print(f"best configuration (trial {provenance['trial']}, validation accuracy {validation_text(provenance)}):")
    print(json.dumps(exported["config"], indent=2, sort_keys=True))
    print(f"export it: kilotune export --study {study.study_name} --out best.json")


def _clock(seconds: float) -> str:
    seconds = int(math.ceil(seconds)) if seconds > 0 else 0
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
