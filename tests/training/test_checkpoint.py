"""Checkpoints that cannot be read (a truncated or corrupted file, as a full disk or a crash
leaves) are discarded with one warning and training starts over (issue 25); saves never leave
a truncated file under the name ``state.json`` gives."""

import json
import logging
import os

import keras
import pytest

from kilotune.training.checkpoint import Checkpoint
from kilotune.training.train import EpochReport, train
from tests.training.test_train import TINY as TWO_EPOCHS
from tests.training.test_train import data  # noqa: F401 (the training core's tiny data, a fixture)

pytestmark = pytest.mark.slow  # every test here trains a model
TINY = TWO_EPOCHS.replace(epochs=1)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path):
    """Corrupts the middle of the file (a compressed member's data): the archive still opens."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))


DAMAGE = {
    "truncated model": ("epoch-0001.keras", truncate),
    "corrupted model": ("epoch-0001.keras", flip_bytes),
    "missing model": ("epoch-0001.keras", lambda p: p.unlink()),
    "truncated state": ("state.json", truncate),
    "state of other epochs": ("state.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "epoch": 3}))),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_unreadable_checkpoint_is_discarded_with_one_warning_and_training_starts_over(damage, data, tmp_path, caplog):
    train(TINY, data, checkpoint_dir=tmp_path)
    name, spoil = DAMAGE[damage]
    spoil(tmp_path / name)
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="kilotune.checkpoint"):
        assert Checkpoint(tmp_path).history() == [], "the worker's look before training: nothing to resume"
        result = train(TINY.replace(epochs=2), data, [lambda r: seen.append(r.epoch)], checkpoint_dir=tmp_path)
    assert seen == [1, 2] and result.status == "complete", "trained from epoch 1, not a failed trial"
    warnings = [r.getMessage() for r in caplog.records if r.name == "kilotune.checkpoint"]
    assert len(warnings) == 1 and str(tmp_path / name) in warnings[0] and "unreadable" in warnings[0], warnings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.keras", "state.json"], "the new run's checkpoint"


def test_a_save_cut_short_leaves_the_last_checkpoint_whole(data, tmp_path, monkeypatch):
    """A full disk (or a kill) mid-save: the half-written file is not under the name state.json will give."""
    train(TINY, data, checkpoint_dir=tmp_path)
    before = (tmp_path / "epoch-0001.keras").read_bytes()
    model, history = Checkpoint(tmp_path).load()

    def save_half_then_fail(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(OSError):
        Checkpoint(tmp_path).save(model, [EpochReport(**r) for r in history * 2])  # as epoch 2 would
    monkeypatch.undo()
    assert not (tmp_path / "epoch-0002.keras").exists(), "no truncated file under its final name"
    assert (tmp_path / "epoch-0001.keras").read_bytes() == before
    resumed = Checkpoint(tmp_path).load()
    assert resumed is not None and len(resumed[1]) == 1
    seen: list[int] = []
    train(TINY.replace(epochs=2), data, [lambda r: seen.append(r.epoch)], checkpoint_dir=tmp_path)
    assert seen == [2], "resumed after epoch 1"
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002.keras", "state.json"], "the half-written file is gone too"
