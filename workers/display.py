"""The progress of a local run, read from the study the workers write anyway: trials and epochs done
against the budget, each worker's trial and epoch (its reports), the best so far, the time taken
and an estimate of the time left. On a terminal a live panel (rich); otherwise one line per event
(a trial starts training, or ends), for logs and CI.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from kilotune.models.names import ignored_fields, listing
from kilotune.search.attrs import CV_OF, EPOCH_SECONDS, FAIL_REASON, STATUS, WORKER, WORKER_ID
from kilotune.search.export import export_trial, validation_text
from kilotune.search.report import HANDED_BACK, outcome
from kilotune.search.settings import StudySettings
from kilotune.search.winner import StudyTrials, fold_label, is_fold_trial, ranking, trial_arch, winner_line
from kilotune.training.config import take_home_epochs

QUIET_LINE_SECONDS = 30.0  # without a terminal, a line at least this often (a fold trial runs minutes)


@dataclass(frozen=True)
class Running:
    """A trial a worker is training: who, which (``search.winner.fold_label`` for a fold trial), and its epoch."""

    worker: str
    trial: str
    epoch: int


@dataclass(frozen=True)
class Snapshot:
    """The study as the display shows it, from one read of its trials.

    Args:
        trials: The study's search trials and fold trials.
        settings: The study's settings (its budget and epochs per trial).
        elapsed: Seconds since this run started its workers.
        best: The winner as ``kilotune export`` picks it (the cross-validated mean once its
            folds are in) and how far cross-validation is: ``search.winner.winner_line``.
    """

    trials: StudyTrials
    settings: StudySettings
    elapsed: float
    best: str = "best -"

    @classmethod
    def read(cls, study: optuna.Study, storage: BaseStorage, settings: StudySettings, elapsed: float) -> Snapshot:
        trials = StudyTrials.read(study, storage)  # one read a poll: the winner line ranks the same trials
        return cls(trials, settings, elapsed, winner_line(trials, settings.cv_top_k, settings.fold_trials))

    @property
    def counted(self) -> list[FrozenTrial]:
        """Trials inside the budget, search and fold trials: a retried attempt's copy counts, the attempt does not."""
        return [t for t in [*self.trials.search, *self.trials.folds] if _counts(t)]

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
        return [Running(str(t.user_attrs.get(WORKER_ID) or t.user_attrs.get(WORKER, "?")), _label(t), len(t.intermediate_values))
                for t in [*self.trials.search, *self.trials.folds] if t.state == TrialState.RUNNING and t.user_attrs.get(STATUS) == "running"]

    @property
    def seconds_left(self) -> float | None:
        """An estimate: the training the budget has left, in each trial's own seconds an epoch,
        over the rate the run trained at so far; never past the study's timeout. None while
        there is nothing to go by."""
        estimates = []
        done, left = self._work()
        if self.settings.n_trials and done:
            estimates.append(self.elapsed * left / done)
        if self.settings.timeout_s:
            # The timeout is for the study as a whole, from its creation.
            created = self.settings.created_at
            age = (datetime.now(timezone.utc) - datetime.fromisoformat(created)).total_seconds() if created else self.elapsed
            estimates.append(max(0.0, self.settings.timeout_s - age))
        return min(estimates) if estimates else None

    def _work(self) -> tuple[float, float]:
        """Training done and left, in epoch-seconds (an epoch of a trial weighs its own seconds an
        epoch, as its worker recorded them; 1 before any trial recorded them).

        A search trial not yet trained is expected to run the mean epochs of the finished ones,
        with two full-length trials of prior (pruning ends many early, but not yet known how
        many); a fold trial runs every epoch, at its candidate's seconds an epoch.
        """
        s, search = self.settings, [t for t in self.trials.search if _counts(t)]
        finished = [t for t in search if t.state.is_finished()]
        timed = [t for t in finished if t.user_attrs.get(EPOCH_SECONDS)]
        epoch_s = statistics.fmean(x for t in timed for x in t.user_attrs[EPOCH_SECONDS]) if timed else 1.0
        own_s = {t.number: statistics.fmean(t.user_attrs[EPOCH_SECONDS]) for t in timed}
        expected = (sum(len(t.intermediate_values) for t in finished) + 2 * s.epochs) / (len(finished) + 2)
        done = sum(len(t.intermediate_values) * own_s.get(t.number, epoch_s) for t in search)
        left = sum(max(0.0, expected - len(t.intermediate_values)) * epoch_s for t in search if not t.state.is_finished())
        left += max(0, (s.search_trials or 0) - len(search)) * expected * epoch_s
        folds = [t for t in self.trials.folds if _counts(t)]
        for t in folds:
            weight = own_s.get(t.user_attrs[CV_OF], epoch_s)
            done += len(t.intermediate_values) * weight
            left += 0 if t.state.is_finished() else (s.epochs - len(t.intermediate_values)) * weight
        if s.fold_trials > len(folds):  # not queued yet: the top trials so far will be
            top = [own_s.get(c.trial.number, epoch_s) for c in ranking(self.trials, s.cv_top_k)[: s.cv_top_k]] or [epoch_s]
            left += (s.fold_trials - len(folds)) * s.epochs * statistics.fmean(top)
        return done, left

    def summary(self) -> str:
        """One line: the budget, the best so far, the times."""
        trials = f"{self.finished}/{self.settings.n_trials or '-'} trials"
        epochs = f"{self.epochs_done}/{self.epochs_budget or '-'} epochs"
        left = self.seconds_left
        return f"{trials}, {epochs}; {self.best}; {_clock(self.elapsed)} elapsed, " + (f"~{_clock(left)} left" if left is not None else "time left -")


def _counts(trial: FrozenTrial) -> bool:
    """Inside the budget: any trial but a failed attempt whose retry was queued (its copy counts)."""
    return trial.state != TrialState.FAIL or trial.user_attrs.get(STATUS) == "failed"


def _label(trial: FrozenTrial) -> str:
    return fold_label(trial) if is_fold_trial(trial) else f"trial {trial.number}"


def events(before: dict[str, str], now: Snapshot) -> tuple[dict[str, str], list[str]]:
    """What changed since ``before`` (a trial's label -> what was shown): a trial started training or ended."""
    seen, lines = dict(before), []
    running = {r.trial for r in now.running}
    for t in [*now.trials.search, *now.trials.folds]:
        label = _label(t)
        shown = "training" if label in running else outcome(t) if t.state.is_finished() else None
        if shown is None or seen.get(label) == shown:
            continue
        seen[label] = shown
        who = t.user_attrs.get(WORKER_ID) or t.user_attrs.get(WORKER)
        if shown == "training":
            lines.append(f"{label} training on {who} ({trial_arch(t)})")
        elif shown == HANDED_BACK:
            lines.append(f"{label} handed back (taken ahead, never trained)")
        else:
            value = f" {t.value:.4f}" if t.value is not None else ""
            reason = f": {t.user_attrs[FAIL_REASON]}" if FAIL_REASON in t.user_attrs else ""
            lines.append(f"{label} {t.user_attrs.get(STATUS, shown)}{value} "
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
        self._shown: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_line = time.monotonic()

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
            if not lines and self.live is None and time.monotonic() - self._last_line >= QUIET_LINE_SECONDS:
                training = ", ".join(f"{r.trial} at epoch {r.epoch} on {r.worker}" for r in snapshot.running)
                lines = [f"still training: {training}" if training else "waiting for the workers"]
            for line in lines:
                self.console.print(f"[{_clock(snapshot.elapsed)}] {line}{suffix}", markup=False, highlight=False, soft_wrap=True)
                self._last_line = time.monotonic()
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
        workers.add_row(r.worker, r.trial.removeprefix("trial "), f"{r.epoch}/{s.epochs}")
    trials = [*snapshot.trials.search, *snapshot.trials.folds]
    handed_back = sum(outcome(t) == HANDED_BACK for t in trials)
    states = {o: sum(outcome(t) == o for t in trials) for o in ("complete", "pruned", "fail")}
    counts = f"{states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed, {handed_back} handed back"
    return Group(bars, facts, counts, workers)


def print_best(study: optuna.Study, storage: BaseStorage) -> None:
    """The best configuration, exactly as ``kilotune export`` writes it."""
    try:
        exported = export_trial(study, storage)
    except ValueError as e:  # nothing complete yet, or no config recorded
        print(f"no best configuration yet: {e}")
        return
    provenance = exported["provenance"]
    print(f"best configuration (trial {provenance['trial']}, validation accuracy {validation_text(provenance)}):")
    print(json.dumps(exported["config"], indent=2, sort_keys=True))
    if ignored := ignored_fields(exported["config"]["arch"]):
        print(f"({exported['config']['arch']} ignores {listing(ignored, 'and')}: the export carries every field of the training config)")
    print(f"export it: kilotune export --study {study.study_name} --out best.json")
    print(f"then train the model to take home on all the images (long final training is what pays, docs/benchmarks.md): "
          f"kilotune retrain best.json --total-epochs {take_home_epochs(int(exported['config']['epochs']))}")


def _clock(seconds: float) -> str:
    seconds = int(math.ceil(seconds)) if seconds > 0 else 0
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
