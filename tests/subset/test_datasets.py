"""Tests for subset.datasets on tiny files written in the official formats: where each dataset is
looked for, its fetch (the network faked: urllib's urlopen and a fake ``apt-get`` on PATH; a real
``dpkg-deb`` and real processes), the checks' messages; and one real fetch end to end."""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
from pathlib import Path
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from kilotune.subset.datasets import channel_stats
from kilotune.subset.datasets import check_dataset_name
from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from kilotune.subset.datasets import normalize
from tests.conftest import _unavailable, run_bounded


N_PER_BATCH = 20
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": 60,
    "train-labels-idx1-ubyte.gz": 60,
    "t10k-images-idx3-ubyte.gz": 10,
    "t10k-labels-idx1-ubyte.gz": 10,
}


KERAS_FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep real data (~/.keras, ~/.cache/kilotune, KILOTUNE_DATA_DIR, /usr/share/datasets) out of every test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    (tmp_path / "home" / ".keras").mkdir(parents=True)  # writable: Keras (and the loader) would not use /tmp/.keras
    monkeypatch.delenv("KILOTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KILOTUNE_SYSTEM_DATASETS_DIR", str(tmp_path / "system"))


def _cifar_batch(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, N_PER_BATCH)],
        b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(N_PER_BATCH)],
    }
    return pickle.dumps(batch, protocol=2)  # The official files are Python 2 pickles.


def _cifar_files() -> dict[str, bytes]:
    files = {name: _cifar_batch(seed) for seed, name in enumerate(CIFAR_FILES)}
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    return files


def write_cifar_dir(root: Path, files: dict[str, bytes] | None = None) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name, raw in (files or _cifar_files()).items():
        (batches / name).write_bytes(raw)
    return batches


def write_cifar_tar(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in _cifar_files().items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in FASHION_FILES.items():
        if "images" in name:
            _idx(root / name, 2051, rng.integers(0, 256, (n, 28, 28)))
        else:
            _idx(root / name, 2049, np.arange(n) % 10)
    return root


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
    files = _cifar_files()
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
    files = _cifar_files()
    files["data_batch_3"] = files["data_batch_3"][:500]
    batches = write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="data_batch_3") as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(batches / "data_batch_3") in str(info.value)


def test_batch_labels_mismatch(tmp_path: Path) -> None:
    files = _cifar_files()
    data = np.zeros((N_PER_BATCH, 3072), dtype=np.uint8)
    files["test_batch"] = pickle.dumps({b"data": data, b"labels": [0] * (N_PER_BATCH - 1)})
    write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", tmp_path, download=False)


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    files = _cifar_files()
    files["data_batch_1"] = pickle.dumps({b"data": Path("x"), b"labels": []})
    write_cifar_dir(tmp_path, files)
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path, download=False)


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
    _idx(root / "t10k-labels-idx1-ubyte.gz", 2051, np.zeros(10))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*magic"):
        load_dataset("fashion-mnist", root)


def test_fashion_truncated_and_count_mismatch(tmp_path: Path) -> None:
    root = write_fashion(tmp_path)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root)
    _idx(path, 2051, np.zeros((59, 28, 28)))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", root)


def test_unknown_name() -> None:
    with pytest.raises(DatasetError, match="'mnist'.*cifar10, fashion-mnist"):
        load_dataset("mnist")


def test_checksum_stable_and_label_sensitive(tmp_path: Path) -> None:
    write_fashion(tmp_path / "a")
    first = load_dataset("fashion-mnist", tmp_path / "a")
    assert first.checksum.startswith("sha256:") and len(first.checksum) == 7 + 64
    assert load_dataset("fashion-mnist", tmp_path / "a").checksum == first.checksum

    root = write_fashion(tmp_path / "b")
    _idx(root / "train-labels-idx1-ubyte.gz", 2049, (np.arange(60) + (np.arange(60) == 7)) % 10)
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


def test_real_fashion_mnist(fashion_mnist) -> None:
    ds = fashion_mnist
    assert ds.x_train.shape == (60000, 32, 32, 1) and ds.x_test.shape == (10000, 32, 32, 1)
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)


# --- a user's own arrays --------------------------------------------------------------------


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


def test_loader_checks_name_the_value_and_what_is_allowed(tmp_path):
    files = _cifar_files()
    files["data_batch_2"] = pickle.dumps({b"data": np.zeros((N_PER_BATCH, 3072), np.uint8), b"labels": [10] * N_PER_BATCH})
    write_cifar_dir(tmp_path / "c", files)
    with pytest.raises(DatasetError, match=r"data_batch_2: labels in 10\.\.10, expected 0\.\.9"):
        load_dataset("cifar10", tmp_path / "c", download=False)
    files["data_batch_2"] = pickle.dumps({b"data": np.zeros((N_PER_BATCH, 3072), np.uint8), b"labels": np.zeros(N_PER_BATCH)})
    write_cifar_dir(tmp_path / "d", files)
    with pytest.raises(DatasetError, match=re.escape(f"data_batch_2: labels are float64({N_PER_BATCH},), expected {N_PER_BATCH} integers")):
        load_dataset("cifar10", tmp_path / "d", download=False)
    root = write_fashion(tmp_path / "f")
    _idx(root / "t10k-labels-idx1-ubyte.gz", 2049, np.arange(10) + 3)
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


# --- where Fashion-MNIST is found, and its fetch -----------------------------------------------


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


def upstream_files(tmp_path: Path, seed: int = 5) -> dict[str, bytes]:
    root = write_fashion(tmp_path / f"upstream-{seed}", seed)
    return {name: (root / name).read_bytes() for name in FASHION_FILES}


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], calls: list[str] | None = None) -> None:
    """urllib's urlopen answers Keras' URLs with ``files``."""

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        if calls is not None:
            calls.append(url)
        if not url.startswith(KERAS_FASHION_URL) or url[len(KERAS_FASHION_URL):] not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]
        return io.BytesIO(files[url[len(KERAS_FASHION_URL):]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def urlopen(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def fake_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deb: Path | None) -> Path:
    """An ``apt-get`` first on PATH: ``download`` copies ``deb`` here, or fails as apt-get does
    without the package; it logs its arguments to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = bin_dir / "calls"
    act = f"cp {deb} ." if deb else 'echo "E: Unable to locate package $2" >&2; exit 100'
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n{act}\n')
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def debian_package(tmp_path: Path) -> Path:
    """A real .deb laid out as Debian's dataset-fashion-mnist (tiny files), built with dpkg-deb."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (not a Debian system): the Debian fallback cannot run here")
    root = tmp_path / "pkg"
    write_fashion(root / "usr" / "share" / "datasets" / "fashion-mnist", seed=7)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: dataset-fashion-mnist\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: kilotune tests <tests@example.org>\nDescription: test\n")  # fmt: skip
    deb = tmp_path / "dataset-fashion-mnist_1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_a_missing_fashion_mnist_is_fetched_from_keras_urls_into_the_cache(tmp_path, monkeypatch, capsys):
    files, calls = upstream_files(tmp_path), []
    serve(monkeypatch, files, calls)
    cache = tmp_path / "cache" / "fashion-mnist"  # KILOTUNE_CACHE_DIR's
    ds = load_dataset("fashion-mnist")
    assert sorted(calls) == sorted(KERAS_FASHION_URL + name for name in FASHION_FILES)
    assert {name: (cache / name).read_bytes() for name in FASHION_FILES} == files
    assert sorted(p.name for p in cache.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"])
    assert ds.checksum == load_dataset("fashion-mnist", tmp_path / "upstream-5").checksum
    before, after = capsys.readouterr().err.splitlines()
    assert before == (f"Fashion-MNIST not found in {cache}, {tmp_path / 'system' / 'fashion-mnist'}, "
                      f"{tmp_path / 'home/.keras/datasets/fashion-mnist'}; fetching it into {cache} from Keras' URLs "
                      f"{KERAS_FASHION_URL}, else Debian's archive (apt-get download dataset-fashion-mnist)")  # fmt: skip
    size = sum(map(len, files.values())) / 1e6
    assert re.fullmatch(rf"Fashion-MNIST fetched from Keras' URLs {KERAS_FASHION_URL} into {cache} \({size:.1f} MB in \d+ s\)", after)
    load_dataset("fashion-mnist")
    assert len(calls) == 4 and capsys.readouterr().err == "", "fetched once"


def test_without_keras_urls_it_comes_from_debians_archive(tmp_path, monkeypatch, capsys):
    deb = debian_package(tmp_path)
    offline(monkeypatch)
    log = fake_apt_get(tmp_path, monkeypatch, deb)
    ds = load_dataset("fashion-mnist", tmp_path / "data")  # --data-dir: fetched into it
    assert log.read_text() == "download dataset-fashion-mnist\n"
    into = tmp_path / "data" / "fashion-mnist"
    assert ds.checksum == load_dataset("fashion-mnist", tmp_path / "pkg/usr/share/datasets/fashion-mnist").checksum
    assert sorted(p.name for p in into.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"]), "the .deb and its tree are gone"
    after = capsys.readouterr().err.splitlines()[-1]
    assert after.startswith(f"Fashion-MNIST fetched from Debian's archive (apt-get download dataset-fashion-mnist) into {into} (")
    assert after.endswith(f" s; tried first: Keras' URLs {KERAS_FASHION_URL}: URLError: <urlopen error [Errno -3] Temporary failure in name resolution>)")


def test_when_every_way_fails_one_line_names_each_and_what_to_do(tmp_path, monkeypatch):
    offline(monkeypatch)
    fake_apt_get(tmp_path, monkeypatch, None)
    cache = tmp_path / "cache" / "fashion-mnist"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist")
    assert str(info.value) == (
        f"Fashion-MNIST not found in {cache}, {tmp_path / 'system/fashion-mnist'}, {tmp_path / 'home/.keras/datasets/fashion-mnist'} "
        f"and could not be fetched: Keras' URLs {KERAS_FASHION_URL}: URLError: <urlopen error [Errno -3] Temporary failure in name "
        "resolution>; Debian's archive (apt-get download dataset-fashion-mnist): RuntimeError: `apt-get download dataset-fashion-mnist` "
        "exited with 100: E: Unable to locate package dataset-fashion-mnist; put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {cache} (or apt-get install dataset-fashion-mnist)"
    )  # fmt: skip
    assert [p.name for p in cache.iterdir()] == [".fetch.lock"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=re.escape("RuntimeError: apt-get not found (not a Debian system?); put ")):
        load_dataset("fashion-mnist")


def test_a_download_that_does_not_load_is_never_put_in_place(tmp_path, monkeypatch):
    files = upstream_files(tmp_path)
    files["t10k-images-idx3-ubyte.gz"] = files["t10k-images-idx3-ubyte.gz"][:-20]  # a cut-off transfer
    serve(monkeypatch, files)
    fake_apt_get(tmp_path, monkeypatch, None)
    with pytest.raises(DatasetError, match=r"Keras' URLs \S+: DatasetError: \S+/t10k-images-idx3-ubyte.gz: not a readable gzip"):
        load_dataset("fashion-mnist")
    assert [p.name for p in (tmp_path / "cache" / "fashion-mnist").iterdir()] == [".fetch.lock"]


def _load_and_record(out: Path) -> None:
    out.write_text(load_dataset("fashion-mnist").checksum)


def test_processes_fetching_at_once_fetch_once_and_a_killed_fetch_is_never_trusted(tmp_path, monkeypatch):
    files, log = upstream_files(tmp_path), tmp_path / "downloads"
    cache = tmp_path / "cache" / "fashion-mnist"
    block_at = {"t10k-images-idx3-ubyte.gz": 60.0}  # the killed fetch hangs there

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        name = url[len(KERAS_FASHION_URL):]
        with open(log, "a") as f:
            f.write(name + "\n")
        time.sleep(block_at.get(name, 0.3))
        return io.BytesIO(files[name])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    fake_apt_get(tmp_path, monkeypatch, None)
    fork = multiprocessing.get_context("fork")  # the children inherit the faked network

    def downloads() -> list[str]:
        return log.read_text().split() if log.exists() else []

    def wait(predicate) -> None:
        deadline = time.monotonic() + 60
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert predicate()

    killed = fork.Process(target=_load_and_record, args=(tmp_path / "killed",))
    killed.start()
    wait(lambda: "t10k-images-idx3-ubyte.gz" in downloads())
    killed.kill()
    killed.join()
    assert (cache / ".fetch.partial" / "train-images-idx3-ubyte.gz").is_file(), "the fetch was killed half-way"
    with pytest.raises(DatasetError, match="Fashion-MNIST not found in"):
        load_dataset("fashion-mnist", download=False)  # what it staged is not trusted

    block_at.clear()
    log.unlink()
    first = fork.Process(target=_load_and_record, args=(tmp_path / "first",))
    first.start()
    wait(lambda: downloads())  # the first holds the lock and fetches; the second finds nothing yet
    second = fork.Process(target=_load_and_record, args=(tmp_path / "second",))
    second.start()
    for p in (first, second):
        p.join(60)
        assert p.exitcode == 0
    assert sorted(downloads()) == sorted(FASHION_FILES), "one fetch, the other process waited for it"
    assert (tmp_path / "first").read_text() == (tmp_path / "second").read_text() == load_dataset("fashion-mnist").checksum
    assert not (cache / ".fetch.partial").exists()


@pytest.mark.slow
def test_the_first_commands_data_path_fetches_fashion_mnist_for_real(tmp_path):
    """``kilotune subset build --dataset fashion-mnist`` as on a fresh machine (the environment
    ``_isolated_home`` made: an empty cache, no data directory, no Debian package installed, an
    empty Keras cache). It fetches for real: Keras' URLs, else Debian's archive."""
    out = run_bounded([sys.executable, "-m", "kilotune", "subset", "build", "--dataset", "fashion-mnist", "--out", str(tmp_path / "x.json")],
                      cwd=tmp_path)  # fmt: skip
    if out.returncode and "could not be fetched" in out.stderr:
        _unavailable(f"no way to fetch Fashion-MNIST here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    cache = tmp_path / "cache" / "fashion-mnist"
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"Fashion-MNIST not found in {cache}, {tmp_path / 'system' / 'fashion-mnist'}, ")
    assert re.fullmatch(rf"Fashion-MNIST fetched from .+ into {cache} \(30\.\d MB in \d+ s(; tried first: .+)?\)", lines[1]), lines
    ds = load_dataset("fashion-mnist", cache)
    assert ds.x_train.shape == (60000, 32, 32, 1) and ds.x_test.shape == (10000, 32, 32, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"])
    subset = json.loads((tmp_path / "x.json").read_text())
    assert subset["dataset"] == "fashion-mnist" and subset["dataset_checksum"] == ds.checksum and len(subset["indices"]) == 1000
