"""training/timing.py: every moment charged to one phase, so the phases sum to the wall time."""

from __future__ import annotations

import time

import pytest

from kilotune.training.timing import OTHER, PhaseClock


def test_phases_sum_to_the_wall_time_and_each_gets_its_own_seconds():
    started = time.perf_counter()
    clock = PhaseClock("storage")
    time.sleep(0.05)
    clock.switch("build")
    time.sleep(0.1)
    with clock.timed("checkpoint"):
        time.sleep(0.05)
    seconds = clock.read()
    wall = time.perf_counter() - started
    assert sum(seconds.values()) == pytest.approx(wall, abs=0.005)
    assert seconds["storage"] == pytest.approx(0.05, abs=0.03)
    assert seconds["build"] == pytest.approx(0.1, abs=0.03)
    assert seconds["checkpoint"] == pytest.approx(0.05, abs=0.03)
    assert clock.phase == "build", "timed() goes back to the phase that ran before it"


def test_timed_goes_back_to_the_outer_phase_when_the_block_raises():
    clock = PhaseClock()
    with pytest.raises(KeyError), clock.timed("callbacks"):
        with clock.timed("storage"):
            raise KeyError("pruned")
    assert clock.phase == OTHER
    assert set(clock.read()) == {OTHER, "callbacks", "storage"}
