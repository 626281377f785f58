"""Fashion-MNIST (subset/datasets/fashion_mnist.py) from tiny IDX files: padding, where it is looked for, its checks."""

from __future__ import annotations

import gzip
from pathlib import Path
import re
import shutil

import numpy as np
import pytest

from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from tests.subset.datasets.files import write_idx, write_fashion


def test_fashion_padding(tmp_path: Path) -> None:
    root = write_fashion(tmp_path / "fm")
    ds = load_dataset("fashion-mnist", root)
    assert ds.x_train.shape == (60, 32, 32, 1) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10, 32, 32, 1) and ds.y_test.dtype == np.int64
    assert ds.input_shape == (32, 32, 1) and ds.num_classes == 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    with gzip.open(root / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:], np.uint8).reshape(60, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, 2:30, 2:30, 0], raw)
    assert ds.x_train[:, :2].sum() == ds.x_train[:, 30:].sum() == 0
    assert ds.x_train[:, :, :2].sum() == ds.x_train[:, :, 30:].sum() == 0
    np.testing.assert_array_equal(ds.y_train, np.arange(60) % 10)


def test_fashion_env_subdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("KILOTUNE_DATA_DIR", str(tmp_path / "data"))
    assert load_dataset("fashion-mnist").x_train.shape == (60, 32, 32, 1)


def test_fashion_corrupt_magic(tmp_path: Path) -> None:
    root = write_fashion(tmp_path)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", 2051, np.zeros(10))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*magic"):
        load_dataset("fashion-mnist", root)


def test_fashion_truncated_and_count_mismatch(tmp_path: Path) -> None:
    root = write_fashion(tmp_path)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root)
    write_idx(path, 2051, np.zeros((59, 28, 28)))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", root)


def test_fashion_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    places = {"data_dir": tmp_path / "mine", "cache": tmp_path / "cache" / "fashion-mnist",
              "system": tmp_path / "system" / "fashion-mnist", "keras": tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"}  # fmt: skip
    checksums = {where: load_dataset("fashion-mnist", write_fashion(root, seed)).checksum for seed, (where, root) in enumerate(places.items())}
    assert len(set(checksums.values())) == 4
    assert load_dataset("fashion-mnist", places["data_dir"]).checksum == checksums["data_dir"]
    with pytest.raises(DatasetError, match=re.escape(f"Fashion-MNIST not found in {tmp_path / 'empty'}, {tmp_path / 'empty' / 'fashion-mnist'}; put ")):
        load_dataset("fashion-mnist", tmp_path / "empty", download=False)  # --data-dir: only there
    for where in ("cache", "system", "keras"):
        assert load_dataset("fashion-mnist").checksum == checksums[where], where
        shutil.rmtree(places[where])
    monkeypatch.setenv("KILOTUNE_DATA_DIR", str(tmp_path))  # before the cache: the mine/ above is not its fashion-mnist/
    write_fashion(tmp_path / "fashion-mnist", seed=9)
    assert load_dataset("fashion-mnist").checksum == load_dataset("fashion-mnist", tmp_path / "fashion-mnist").checksum


def test_real_fashion_mnist(fashion_mnist) -> None:
    ds = fashion_mnist
    assert ds.x_train.shape == (60000, 32, 32, 1) and ds.x_test.shape == (10000, 32, 32, 1)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
