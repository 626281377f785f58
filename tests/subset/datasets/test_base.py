"""What every dataset shares (subset/datasets/base.py): its checksum, the per-channel statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kilotune.subset.datasets import channel_stats
from kilotune.subset.datasets import load_dataset
from kilotune.subset.datasets import normalize
from tests.subset.datasets.files import write_idx, write_cifar_dir, write_fashion


def test_checksum_stable_and_label_sensitive(tmp_path: Path) -> None:
    write_fashion(tmp_path / "a")
    first = load_dataset("fashion-mnist", tmp_path / "a")
    assert first.checksum.startswith("sha256:") and len(first.checksum) == 7 + 64
    assert load_dataset("fashion-mnist", tmp_path / "a").checksum == first.checksum

    root = write_fashion(tmp_path / "b")
    write_idx(root / "train-labels-idx1-ubyte.gz", 2049, (np.arange(60) + (np.arange(60) == 7)) % 10)
    assert load_dataset("fashion-mnist", root).checksum != first.checksum
    with pytest.raises(ValueError):
        first.x_train[0, 0, 0, 0] = 1  # Read-only, so the cached checksum stays true.


def test_channel_stats_and_normalize(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    x = load_dataset("cifar10", tmp_path, download=False).x_train
    mean, std = channel_stats(x)
    assert mean.shape == std.shape == (3,) and mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, (x / 255).mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, (x / 255).std(axis=(0, 1, 2)), rtol=1e-5)
    z = normalize(x, mean, std)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)
