"""CIFAR-10 (subset/datasets/cifar10.py) from tiny files in its official formats: where it is looked for, its fetch, its checks."""

from __future__ import annotations

import io
from pathlib import Path
import pickle
import re
import urllib.error
import urllib.request

import numpy as np
import pytest

from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from tests.subset.datasets.files import N_PER_BATCH, cifar_files, write_cifar_dir, write_cifar_tar


def _check_cifar(ds) -> None:
    assert ds.name == "cifar10"
    assert ds.x_train.shape == (5 * N_PER_BATCH, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.y_train.shape == (5 * N_PER_BATCH,) and ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (N_PER_BATCH, 32, 32, 3) and ds.y_test.dtype == np.int64
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert ds.input_shape == (32, 32, 3)


def test_cifar_directory_form(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path)
    _check_cifar(load_dataset("cifar10", tmp_path, download=False))


def test_cifar_tarball_form(tmp_path: Path) -> None:
    write_cifar_tar(tmp_path)
    from_tar = load_dataset("cifar10", tmp_path, download=False)
    _check_cifar(from_tar)
    write_cifar_dir(tmp_path / "other")
    from_dir = load_dataset("cifar10", tmp_path / "other", download=False)
    np.testing.assert_array_equal(from_tar.x_train, from_dir.x_train)
    assert from_tar.checksum == from_dir.checksum


def test_cifar_data_dir_is_batches_dir(tmp_path: Path) -> None:
    batches = write_cifar_dir(tmp_path)
    _check_cifar(load_dataset("cifar10", batches, download=False))


def test_cifar_env_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar_dir(tmp_path / "data")
    monkeypatch.setenv("KILOTUNE_DATA_DIR", str(tmp_path / "data"))
    _check_cifar(load_dataset("cifar10", download=False))


def test_cifar_keras_cache_unless_a_data_dir_is_given(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "home" / ".keras" / "datasets" / "cifar-10-batches-py-target")
    _check_cifar(load_dataset("cifar10", download=False))
    with pytest.raises(DatasetError, match=f"CIFAR-10 not found in {tmp_path / 'empty'};"):
        load_dataset("cifar10", tmp_path / "empty", download=False)  # --data-dir: only there


def test_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def offline(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", tmp_path / "dl")
    assert str(info.value) == (
        f"CIFAR-10 not found in {tmp_path / 'dl'} and could not be fetched: Keras' URL "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: URLError: <urlopen error no network>; "
        f"put cifar-10-batches-py/ or cifar-10-python.tar.gz in {tmp_path / 'dl'}")  # fmt: skip
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [".fetch.lock"]  # No partial file left behind.

    tarball = write_cifar_tar(tmp_path / "upstream").read_bytes()
    calls = []

    def online(url: str, timeout: float) -> io.BytesIO:
        calls.append((url, timeout))
        return io.BytesIO(tarball)

    monkeypatch.setattr(urllib.request, "urlopen", online)
    capsys.readouterr()
    _check_cifar(load_dataset("cifar10"))  # into the cache, KILOTUNE_CACHE_DIR
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 20)]
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").read_bytes() == tarball
    before, after = capsys.readouterr().err.splitlines()
    assert before.startswith(f"CIFAR-10 not found in {tmp_path / 'cache'}, {tmp_path / 'home/.keras/datasets'}; fetching it into "
                             f"{tmp_path / 'cache'} from Keras' URL https://www.cs.toronto.edu/")  # fmt: skip
    assert re.fullmatch(rf"CIFAR-10 fetched from Keras' URL \S+ into {tmp_path / 'cache'} \(0\.\d MB in \d+ s\)", after)
    _check_cifar(load_dataset("cifar10"))
    assert len(calls) == 1 and capsys.readouterr().err == ""


def test_cifar_orientation(tmp_path: Path) -> None:
    files = cifar_files()
    data = np.zeros((N_PER_BATCH, 3072), dtype=np.uint8)
    # Image 3, green plane (offset 1024), row 5, column 7.
    data[3, 1024 + 5 * 32 + 7] = 200
    files["data_batch_1"] = pickle.dumps({b"data": data, b"labels": [1] * N_PER_BATCH})
    write_cifar_dir(tmp_path, files)
    x = load_dataset("cifar10", tmp_path, download=False).x_train
    assert x[3, 5, 7, 1] == 200
    assert x[:N_PER_BATCH].sum() == 200


def test_missing_cifar_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(info.value) == f"CIFAR-10 not found in {tmp_path}; put cifar-10-batches-py/ or cifar-10-python.tar.gz in {tmp_path}"


def test_truncated_batch_names_file(tmp_path: Path) -> None:
    files = cifar_files()
    files["data_batch_3"] = files["data_batch_3"][:500]
    batches = write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="data_batch_3") as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(batches / "data_batch_3") in str(info.value)


def test_batch_labels_mismatch(tmp_path: Path) -> None:
    files = cifar_files()
    data = np.zeros((N_PER_BATCH, 3072), dtype=np.uint8)
    files["test_batch"] = pickle.dumps({b"data": data, b"labels": [0] * (N_PER_BATCH - 1)})
    write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", tmp_path, download=False)


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    files = cifar_files()
    files["data_batch_1"] = pickle.dumps({b"data": Path("x"), b"labels": []})
    write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path, download=False)
