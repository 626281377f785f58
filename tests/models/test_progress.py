"""The progress line of long fits: a line per epoch and within one, elapsed and an estimate."""

import io
import re

import keras
import numpy as np
import pytest

from kilotune.models.progress import EpochProgress, duration


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.4, 45, 200, 3900, float("nan"))] == ["0 s", "45 s", "3 min 20 s", "1 h 05 min", "?"]


@pytest.mark.slow
def test_a_line_per_epoch_and_per_batch_with_elapsed_and_what_is_left():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), np.float32), rng.integers(0, 2, 64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stream = io.StringIO()
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[EpochProgress("tiny", every_s=0.0, stream=stream)])
    lines = stream.getvalue().splitlines()
    epochs = [line for line in lines if "batch" not in line]
    assert [line.split(",")[0] for line in epochs] == ["tiny: epoch 1/3", "tiny: epoch 2/3", "tiny: epoch 3/3"]
    assert all(re.fullmatch(r"tiny: epoch \d/3, \d+ s elapsed, about \d+ s left \(loss \d+\.\d{4}\)", line) for line in epochs), epochs
    assert epochs[-1].split("about ")[1].startswith("0 s left")
    assert [line.split(", ")[1] for line in lines if "epoch 2/3, batch" in line] == [f"batch {b}/4" for b in range(1, 5)]

    resumed = EpochProgress("tiny", every_s=1e9, stream=io.StringIO())
    model.fit(x, y, epochs=3, initial_epoch=2, batch_size=16, verbose=0, callbacks=[resumed])
    assert [line.split(",")[0] for line in resumed.lines] == ["tiny: epoch 3/3"], "a resumed fit counts from where it starts"
