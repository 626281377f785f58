"""``load_dataset`` and ``check_dataset_name`` (subset/datasets/__init__.py): names checked against the registry."""

from __future__ import annotations

import gzip
import pickle
import re
import struct

import numpy as np
import pytest

from kilotune.subset.datasets import check_dataset_name
from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from tests.subset.datasets.files import N_PER_BATCH, cifar_files, write_idx, write_cifar_dir, write_fashion


def test_unknown_name() -> None:
    with pytest.raises(DatasetError, match="'mnist'.*cifar10, fashion-mnist"):
        load_dataset("mnist")


def test_loader_checks_name_the_value_and_what_is_allowed(tmp_path):
    files = cifar_files()
    files["data_batch_2"] = pickle.dumps({b"data": np.zeros((N_PER_BATCH, 3072), np.uint8), b"labels": [10] * N_PER_BATCH})
    write_cifar_dir(tmp_path / "c", files)
    with pytest.raises(DatasetError, match=r"data_batch_2: labels in 10\.\.10, expected 0\.\.9"):
        load_dataset("cifar10", tmp_path / "c", download=False)
    files["data_batch_2"] = pickle.dumps({b"data": np.zeros((N_PER_BATCH, 3072), np.uint8), b"labels": np.zeros(N_PER_BATCH)})
    write_cifar_dir(tmp_path / "d", files)
    with pytest.raises(DatasetError, match=re.escape(f"data_batch_2: labels are float64({N_PER_BATCH},), expected {N_PER_BATCH} integers")):
        load_dataset("cifar10", tmp_path / "d", download=False)
    root = write_fashion(tmp_path / "f")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", 2049, np.arange(10) + 3)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: labels in 3\.\.12, expected 0\.\.9"):
        load_dataset("fashion-mnist", root)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">I", 2049)))
    with pytest.raises(DatasetError, match=r"truncated IDX header \(4 bytes, expected 8\)"):
        load_dataset("fashion-mnist", root)


def test_check_dataset_name_reads_nothing_and_names_what_is_allowed(tmp_path):
    assert check_dataset_name("fashion-mnist") == "fashion-mnist" and check_dataset_name("cifar10") == "cifar10"
    (tmp_path / "mine.npz").write_bytes(b"not read")  # only its existence is checked
    assert check_dataset_name(tmp_path / "mine.npz") == str(tmp_path / "mine.npz")
    assert check_dataset_name("/elsewhere/mine.npz", tmp_path) == "/elsewhere/mine.npz"  # a worker's --data-dir
    with pytest.raises(DatasetError, match=re.escape("unknown dataset 'Fashion-MNIST'; expected one of: cifar10, fashion-mnist, or a file.npz")):
        check_dataset_name("Fashion-MNIST")
    with pytest.raises(DatasetError, match=re.escape(f"dataset file not found: {tmp_path / 'nope.npz'}")):
        check_dataset_name(str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match=re.escape("a dataset is a name (cifar10, fashion-mnist) or the path of a file.npz, got int 3")):
        check_dataset_name(3)
    assert not (tmp_path / "cache").exists(), "nothing fetched, no directory made"
