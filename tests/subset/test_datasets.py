"""Tests for subset.datasets on tiny files written in the official formats."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
import pickle
import re
import struct
import tarfile

import numpy as np
import pytest

from kilotune.subset.datasets import channel_stats
from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from kilotune.subset.datasets import normalize


N_PER_BATCH = 20
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": 60,
    "train-labels-idx1-ubyte.gz": 60,
    "t10k-images-idx3-ubyte.gz": 10,
    "t10k-labels-idx1-ubyte.gz": 10,
}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep real caches (~/.keras, ~/.cache/kilotune, KILOTUNE_DATA_DIR) out of every test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    monkeypatch.delenv("KILOTUNE_DATA_DIR", raising=False)


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


def write_fashion(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
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


def test_cifar_keras_cache(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "home" / ".keras" / "datasets" / "cifar-10-batches-py-target")
    _check_cifar(load_dataset("cifar10", tmp_path / "empty", download=False))


def test_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    def offline(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match="could not download.*no network"):
        load_dataset("cifar10", tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir())  # No partial file left behind.

    tarball = write_cifar_tar(tmp_path / "upstream").read_bytes()
    calls = []

    def online(url: str, timeout: float) -> io.BytesIO:
        calls.append((url, timeout))
        return io.BytesIO(tarball)

    monkeypatch.setattr(urllib.request, "urlopen", online)
    _check_cifar(load_dataset("cifar10", tmp_path / "dl"))
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 20)]
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").read_bytes() == tarball


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
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message
    assert str(tmp_path) in message and "KILOTUNE_DATA_DIR" in message
    assert "\n" not in message


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


def test_real_fashion_mnist() -> None:
    root = Path("/usr/share/datasets/fashion-mnist")
    if not all((root / name).is_file() for name in FASHION_FILES):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    ds = load_dataset("fashion-mnist", root)
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
        ({1: np.arange(30) % 3 + 5}, "labels must be in 0..2"),
    ],
)
def test_bad_arrays_are_named(change, message):
    from kilotune.subset.datasets import dataset_from_arrays

    arrays = list(_arrays())
    for i, value in change.items():
        arrays[i] = value
    with pytest.raises(DatasetError, match=re.escape(message)):
        dataset_from_arrays(*arrays, class_names=["a", "b", "c"])


def test_a_missing_or_broken_dataset_file_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found: .*nope.npz"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz: not a readable .npz file"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"missing arrays \['y_train', 'x_test', 'y_test'\]"):
        load_dataset(str(tmp_path / "partial.npz"))
