"""A user's own arrays as a dataset (subset/datasets/arrays.py): checked, saved, loaded by name."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset


def _arrays(n: int = 30, shape: tuple[int, ...] = (12, 12)) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 3,
            rng.integers(0, 256, (9, *shape), dtype=np.uint8), np.arange(9) % 3)  # fmt: skip


def test_own_arrays_round_trip_through_a_file_with_a_path_free_checksum(tmp_path):
    from kilotune.subset.datasets import dataset_from_arrays, save_dataset

    x, y, xt, yt = _arrays()
    mine = dataset_from_arrays(x, y, xt, yt, class_names=["a", "b", "c"], name="mine")
    assert mine.input_shape == (12, 12, 1) and mine.num_classes == 3 and not mine.x_train.flags.writeable
    assert x.flags.writeable, "the caller's arrays are copied, not frozen"
    path = save_dataset(mine, tmp_path / "mine.npz")
    loaded = load_dataset(str(path))
    assert loaded.name == str(path) and loaded.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(loaded.x_train, mine.x_train)
    np.testing.assert_array_equal(loaded.y_test, mine.y_test)
    moved = tmp_path / "elsewhere" / "mine.npz"
    moved.parent.mkdir()
    path.rename(moved)
    # A worker on another host finds the recorded file's name in its --data-dir; same data, same checksum.
    again = load_dataset(str(path), moved.parent)
    assert again.checksum == loaded.checksum == mine.checksum
    other = dataset_from_arrays(x[::-1], y[::-1], xt, yt)
    assert other.checksum != mine.checksum


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({0: np.zeros((30, 12, 12), np.float32)}, "x_train must be uint8 images in 0..255, got dtype float32"),
        ({1: np.eye(3)[np.arange(30) % 3]}, "y_train must be 30 integer labels"),
        ({2: np.zeros((9, 10, 10), np.uint8)}, "x_train images are (12, 12, 1) but x_test images are (10, 10, 1)"),
        ({0: np.zeros((30, 4, 4), np.uint8)}, "H, W >= 8, got shape (30, 4, 4, 1)"),
        ({1: np.arange(30) % 3 + 5}, "y_train labels must be in 0..2 (3 class names), got 5..7"),
        ({3: np.arange(9) % 3 - 1}, "y_test labels must be in 0..2 (3 class names), got -1..1"),
        ({0: np.full((30, 12, 12), 256)}, "x_train must be images in 0..255, got int64 values in 256..256"),
        ({2: np.full((9, 12, 12), -1)}, "x_test must be images in 0..255, got int64 values in -1..-1"),
        ({"class_names": "abc"}, "class_names must be a list of names, one a label, got 'abc'"),
        ({"class_names": ["a"], 1: np.zeros(30, int), 3: np.zeros(9, int)}, "at least 2 classes, got class names 'a'"),
    ],
)
def test_bad_arrays_are_named(change, message):
    from kilotune.subset.datasets import dataset_from_arrays

    arrays = list(_arrays())
    for i, value in change.items():
        if i != "class_names":
            arrays[i] = value
    names = change.get("class_names", ["a", "b", "c"])
    with pytest.raises(DatasetError, match=re.escape(message)):
        dataset_from_arrays(*arrays, class_names=names)


def test_a_missing_or_broken_dataset_file_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found: .*nope.npz"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz: not a readable .npz file"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"missing arrays y_train, x_test and y_test; expected x_train, y_train, x_test and y_test"):
        load_dataset(str(tmp_path / "partial.npz"))
