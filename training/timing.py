"""Where a trial's wall seconds go: a clock that charges every moment to one phase.

``train`` and the worker switch the phase at the boundaries they see (issue 28): the model's
build and first step, training epochs, validation, checkpoint writes, and the worker's storage
calls. Every second between the clock's start and its reading is charged to exactly one phase,
so the phases sum to the wall time; what no boundary names stays in the phase that was running.
One ``perf_counter`` call a switch: a few switches an epoch (and none a batch after the first).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import keras

BUILD, TRAIN, VALIDATION, CHECKPOINT, CALLBACKS, OTHER = "build", "train", "validation", "checkpoint", "callbacks", "other"


class PhaseClock:
    """Wall seconds by phase (``time.perf_counter``), charged to the running phase at each switch.

    Args:
        phase: The phase running from now on (``OTHER`` by default).
    """

    def __init__(self, phase: str = OTHER) -> None:
        self.phase = phase
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def switch(self, phase: str) -> str:
        """Charges the time since the last switch to the running phase, runs ``phase``; returns the one before."""
        now = time.perf_counter()
        before = self.phase
        self.seconds[before] = self.seconds.get(before, 0.0) + now - self._since
        self.phase, self._since = phase, now
        return before

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Runs ``phase`` inside the block, then the phase that ran before it (an exception too)."""
        before = self.switch(phase)
        try:
            yield
        finally:
            self.switch(before)

    def read(self) -> dict[str, float]:
        """Seconds by phase up to now (the running one included); they sum to the wall time since the start."""
        self.switch(self.phase)
        return dict(self.seconds)


class PhaseTimer(keras.callbacks.Callback):
    """Switches ``clock`` at fit's boundaries: the run's first training step ends the build (it
    traces and compiles the train step), and fit's validation (``on_test_begin`` to
    ``on_test_end``, where epoch 1 also traces the eval step) is ``VALIDATION``; the rest of
    each epoch is ``TRAIN``.
    """

    def __init__(self, clock: PhaseClock) -> None:
        super().__init__()
        self.clock, self.first_step_done = clock, False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.first_step_done:
            self.first_step_done = True
            self.clock.switch(TRAIN)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.clock.switch(VALIDATION)

    def on_test_end(self, logs: dict | None = None) -> None:
        self.clock.switch(TRAIN)
