"""Progress of a long ``fit``: a line per epoch, and every half minute within one, with an estimate.

Keras' progress bar estimates one epoch and floods logs that are not a terminal; a first
run's feature extractor trains for most of an hour on a busy 2-core CPU, so its user
needs the whole run's elapsed time and what is left.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import keras


class EpochProgress(keras.callbacks.Callback):
    """Prints ``label: epoch 2/3, batch 120/469, 4 min 10 s elapsed, about 3 min left``.

    Args:
        label: What is training, e.g. ``"feature extractor"``.
        every_s: Also print within an epoch when this long has passed since the last line.
        stream: Where to print (default: stderr, so a command's results stay on stdout).
    """

    def __init__(self, label: str, *, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        self.label, self.every_s, self.stream = label, every_s, stream
        self.lines: list[str] = []  # what was printed, for tests and callers

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = self.last = time.perf_counter()
        self.epochs, self.steps = int(self.params.get("epochs") or 1), self.params.get("steps")
        self.first_epoch: int | None = None  # a resumed fit starts after epoch 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.steps or time.perf_counter() - self.last < self.every_s:
            return
        done = (self.epoch - self.first_epoch) + (batch + 1) / self.steps
        self._print(f"epoch {self.epoch + 1}/{self.epochs}, batch {batch + 1}/{self.steps}", done)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        self._print(f"epoch {epoch + 1}/{self.epochs}", epoch + 1 - self.first_epoch, f" ({metrics})" if metrics else "")

    def _print(self, where: str, epochs_done: float, extra: str = "") -> None:
        self.last = now = time.perf_counter()
        elapsed = now - self.started
        left = elapsed / epochs_done * (self.epochs - self.first_epoch - epochs_done) if epochs_done > 0 else float("nan")
        line = f"{self.label}: {where}, {duration(elapsed)} elapsed, about {duration(left)} left{extra}"
        self.lines.append(line)
        print(line, file=self.stream or sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    if seconds != seconds:  # NaN: nothing to estimate from yet
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
