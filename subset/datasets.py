"""Image datasets read with numpy only: CIFAR-10 and Fashion-MNIST from their official files,
and a user's own images from an ``.npz`` file (:func:`dataset_from_arrays`, :func:`save_dataset`).

TensorFlow is deliberately not imported: workers that only select subsets or compute
statistics should not pay its start-up cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import functools
import gzip
import hashlib
import io
import os
from pathlib import Path
import pickle
import struct
import tarfile
import urllib.request
import zipfile
import zlib

import numpy as np


DATASETS = ("cifar10", "fashion-mnist")
ARRAYS_SUFFIX = ".npz"  # a dataset "name" ending in it is the path of a user's arrays
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetError(ValueError):
    """A dataset that is missing, corrupt or unknown. The message is one line, safe to show a user."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing image arrays is meaningless.
class ImageDataset:
    """Train and test split of a labelled image dataset.

    Attributes:
        name: One of :data:`DATASETS`.
        x_train: ``uint8`` images, shape ``(N, H, W, C)``, channels-last.
        y_train: ``int64`` labels, shape ``(N,)``.
        x_test: ``uint8`` images.
        y_test: ``int64`` labels.
        class_names: Human-readable name of each label.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    @functools.cached_property  # Writes to __dict__ directly, so it works on frozen dataclasses.
    def checksum(self) -> str:
        """``"sha256:<hex>"`` of the name and training set, which identify the data.

        A user's arrays are identified by their content alone, wherever their file is.
        """
        h = hashlib.sha256((self.name if self.name in DATASETS else "arrays").encode() + b"\0")
        h.update(np.ascontiguousarray(self.x_train, dtype=np.uint8).data)
        h.update(np.ascontiguousarray(self.y_train, dtype=np.int64).data)
        return "sha256:" + h.hexdigest()


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True
) -> ImageDataset:
    """Load a dataset from its official files.

    Args:
        name: One of :data:`DATASETS`, or the path of an ``.npz`` file written by
            :func:`save_dataset` (the dataset's name is then that path, made absolute).
        data_dir: Directory to search first; defaults to ``$KILOTUNE_DATA_DIR`` or
            ``~/.cache/kilotune``. For an ``.npz``, a file of that name there is preferred
            (a worker on another host, where the file is elsewhere).
        download: Whether CIFAR-10 may be downloaded into that directory when no local copy
            exists. Fashion-MNIST is never downloaded.

    Returns:
        The dataset; its arrays are read-only so that :attr:`ImageDataset.checksum` stays true.

    Raises:
        DatasetError: The name is unknown or the files are missing or corrupt.
    """
    if str(name).endswith(ARRAYS_SUFFIX):
        return _load_arrays(Path(name), data_dir)
    if name == "cifar10":
        ds = _load_cifar10(_base_dir(data_dir), download)
    elif name == "fashion-mnist":
        ds = _load_fashion(_base_dir(data_dir), data_dir is not None)
    else:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}, or a file.npz of your own arrays")
    for arr in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        arr.flags.writeable = False
    return ds


def dataset_from_arrays(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    class_names: tuple[str, ...] | list[str] | None = None,
    name: str = "arrays",
) -> ImageDataset:
    """Your own images as a dataset (copied, read-only), checked as kilotune needs them.

    Args:
        x_train: ``uint8`` images, ``(N, H, W, C)`` or ``(N, H, W)`` (one channel); H, W >= 8.
        y_train: Integer labels ``0..K-1``, shape ``(N,)``.
        x_test: Test images of the same shape; only ``retrain`` and ``train`` look at them.
        y_test: Their labels.
        class_names: A name per label (default: ``"0"``, ``"1"``, ...).
        name: What to call it until it is saved (:func:`save_dataset`).

    Raises:
        DatasetError: naming the array that is wrong and what is expected.
    """
    xs, ys = [], []
    for key, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != np.uint8 and not (x.dtype.kind in "iu" and x.size and 0 <= x.min() and x.max() <= 255):
            raise DatasetError(
                f"x_{key} must be uint8 images in 0..255, got dtype {x.dtype}; "
                "for floats in [0, 1] pass (x * 255).round().astype('uint8')"
            )
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or min(x.shape[1:3]) < 8:
            raise DatasetError(f"x_{key} must be images (N, H, W, C) or (N, H, W) with H, W >= 8, got shape {x.shape}")
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise DatasetError(f"y_{key} must be {len(x)} integer labels, shape ({len(x)},), got {y.dtype} {y.shape} (one-hot? pass y.argmax(1))")
        xs.append(np.array(x, dtype=np.uint8))
        ys.append(np.array(y, dtype=np.int64))
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(f"x_train images are {xs[0].shape[1:]} but x_test images are {xs[1].shape[1:]}")
    top = int(max(y.max(initial=0) for y in ys)) + 1
    names = tuple(str(c) for c in class_names) if class_names is not None else tuple(str(i) for i in range(top))
    if len(names) < 2 or min(y.min(initial=0) for y in ys) < 0 or top > len(names):
        raise DatasetError(f"labels must be in 0..{len(names) - 1} ({len(names)} class names), at least 2 classes; got 0..{top - 1}")
    for arr in (*xs, *ys):
        arr.flags.writeable = False
    return ImageDataset(name, xs[0], ys[0], xs[1], ys[1], names)


def save_dataset(dataset: ImageDataset, path: str | Path) -> Path:
    """Writes ``dataset`` as an ``.npz`` file (atomically) that ``load_dataset(path)`` reads.

    Workers load a study's data by name, so a user's arrays reach them as this file.
    """
    path = Path(path)
    if path.suffix != ARRAYS_SUFFIX:
        raise DatasetError(f"a dataset file ends in {ARRAYS_SUFFIX}, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: numpy appends no suffix
        np.savez_compressed(f, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                            y_test=dataset.y_test, class_names=np.array(dataset.class_names))  # fmt: skip
    os.replace(tmp, path)
    return path


def _load_arrays(path: Path, data_dir: str | Path | None) -> ImageDataset:
    path = path.expanduser().absolute()
    found = next((p for p in ([Path(data_dir) / path.name] if data_dir else []) + [path] if p.is_file()), None)
    if found is None:
        raise DatasetError(f"dataset file not found: {path}" + (f" (nor {Path(data_dir) / path.name})" if data_dir else ""))
    try:
        with np.load(found, allow_pickle=False) as f:
            arrays = {k: f[k] for k in (*_ARRAY_KEYS, "class_names") if k in f}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{found}: not a readable .npz file ({_one_line(e)})") from e
    if missing := [k for k in _ARRAY_KEYS if k not in arrays]:
        raise DatasetError(f"{found}: missing arrays {missing}; expected {list(_ARRAY_KEYS)} (and class_names)")
    names = arrays.get("class_names")
    return dataset_from_arrays(*(arrays[k] for k in _ARRAY_KEYS), class_names=None if names is None else names.tolist(), name=str(path))


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``uint8`` images scaled to [0, 1].

    Pass training images only, or test data leaks into the normalization.

    Returns:
        ``(mean, std)``, each ``float32`` of shape ``(C,)``.
    """
    if x.dtype != np.uint8:
        raise TypeError(f"channel_stats expects uint8 images, got {x.dtype}")
    # Per-channel 256-bin histograms give exact moments without a float copy of the images;
    # chunking bounds the int64 temporaries that bincount needs.
    pixels = x.reshape(-1, x.shape[-1])
    channels = pixels.shape[1]
    offsets = 256 * np.arange(channels)
    counts = np.zeros(256 * channels, dtype=np.int64)
    for start in range(0, len(pixels), 1 << 20):
        chunk = pixels[start : start + (1 << 20)].astype(np.int64) + offsets
        counts += np.bincount(chunk.ravel(), minlength=256 * channels)
    counts = counts.reshape(channels, 256)
    values = np.arange(256) / 255.0
    mean = counts @ values / len(pixels)
    var = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / len(pixels)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``float32`` ``(x / 255 - mean) / std``, broadcasting over the channel axis."""
    std = np.where(np.asarray(std) > 0, std, 1.0)  # A constant channel must not become inf.
    out = x.astype(np.float32)
    out *= np.float32(1 / 255)
    out -= np.asarray(mean, np.float32)
    out /= std.astype(np.float32)
    return out


def _base_dir(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("KILOTUNE_DATA_DIR") or Path.home() / ".cache" / "kilotune"
    return Path(data_dir).expanduser()


def _keras_datasets_dirs() -> list[Path]:
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    # Keras falls back to /tmp/.keras when its home is not writable.
    return [home / "datasets", Path("/tmp/.keras/datasets")]


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def _load_cifar10(base: Path, download: bool) -> ImageDataset:
    candidates = [base / _CIFAR_DIR, base, base / _CIFAR_TAR]
    for keras_dir in _keras_datasets_dirs():  # Keras 2 and Keras 3 cache layouts.
        candidates += [keras_dir / _CIFAR_DIR, keras_dir / f"{_CIFAR_DIR}-target" / _CIFAR_DIR]
    for path in candidates:
        if path.is_dir() and (path.name == _CIFAR_DIR or (path / "data_batch_1").is_file()):
            return _cifar_from_dir(path)
        if path.is_file():
            return _cifar_from_tar(path)
    hint = f"put {_CIFAR_DIR}/ or {_CIFAR_TAR} in {base} (or set KILOTUNE_DATA_DIR)"
    if not download:
        raise DatasetError(f"CIFAR-10 not found; {hint}")
    tar_path = base / _CIFAR_TAR
    part = tar_path.with_name(tar_path.name + ".part")  # Never leave a half file under the real name.
    try:
        base.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(_CIFAR_URL, timeout=20) as resp, open(part, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        os.replace(part, tar_path)
    except Exception as e:  # urllib raises URLError, HTTPError, timeouts, IncompleteRead, ...
        part.unlink(missing_ok=True)
        raise DatasetError(f"could not download CIFAR-10 ({_one_line(e)}); {hint}") from e
    return _cifar_from_tar(tar_path)


def _cifar_from_dir(path: Path) -> ImageDataset:
    def read(name: str) -> bytes | None:
        try:
            return (path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DatasetError(f"{path / name}: unreadable ({_one_line(e)})") from e

    return _assemble_cifar(read, str(path))


def _cifar_from_tar(path: Path) -> ImageDataset:
    wanted = {f"{_CIFAR_DIR}/{n}" for n in (*_CIFAR_FILES, "batches.meta")}
    members: dict[str, bytes] = {}
    try:
        # One sequential pass: seeking backwards in a gzip stream means decompressing again.
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and (f := tar.extractfile(member)) is not None:
                    members[member.name.rsplit("/", 1)[1]] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not a readable CIFAR-10 tarball ({_one_line(e)})") from e
    return _assemble_cifar(members.get, f"{path}:{_CIFAR_DIR}")


def _assemble_cifar(read: Callable[[str], bytes | None], where: str) -> ImageDataset:
    batches = []
    for name in _CIFAR_FILES:
        raw = read(name)
        if raw is None:
            raise DatasetError(f"{where}/{name}: missing CIFAR-10 batch file")
        batches.append(_parse_cifar_batch(raw, f"{where}/{name}"))
    class_names = _CIFAR_NAMES
    if (meta := read("batches.meta")) is not None:
        names = _unpickle(meta, f"{where}/batches.meta").get(b"label_names")
        if not isinstance(names, list) or len(names) != 10:
            raise DatasetError(f"{where}/batches.meta: expected 10 label_names")
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return ImageDataset(
        name="cifar10",
        x_train=np.concatenate([x for x, _ in batches[:5]]),
        y_train=np.concatenate([y for _, y in batches[:5]]),
        x_test=batches[5][0],
        y_test=batches[5][1],
        class_names=class_names,
    )


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: a pickle can otherwise run arbitrary code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # How Python 3 writes bytes in protocol-2 pickles.
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _NumpyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # Garbage input can raise almost any exception type.
        raise DatasetError(f"{where}: corrupt or truncated pickle ({_one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, where)
    if b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{where}: missing b'data' or b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: data is {data.dtype}{data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{where}: {labels.size} labels for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels outside 0..9")
    # Rows hold 1024 R, 1024 G, 1024 B values, each plane 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_fashion(base: Path, explicit: bool) -> ImageDataset:
    candidates = ([base] if explicit else []) + [base / "fashion-mnist", _FASHION_SYSTEM_DIR]
    candidates += [d / "fashion-mnist" for d in _keras_datasets_dirs()]
    found = next((d for d in candidates if all((d / f).is_file() for f in _FASHION_FILES)), None)
    if found is None:
        raise DatasetError(
            "Fashion-MNIST not found; run `apt-get install dataset-fashion-mnist` or put "
            f"{', '.join(_FASHION_FILES)} in {base if explicit else base / 'fashion-mnist'}"
        )
    x_train, y_train = _read_idx_pair(found / _FASHION_FILES[0], found / _FASHION_FILES[1])
    x_test, y_test = _read_idx_pair(found / _FASHION_FILES[2], found / _FASHION_FILES[3])
    return ImageDataset("fashion-mnist", x_train, y_train, x_test, y_test, _FASHION_NAMES)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(labels) != len(images):
        raise DatasetError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: labels outside 0..9")
    # Pad to 32x32 so both datasets share one input size (and the models' downsampling).
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]
    return images, labels.astype(np.int64)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes.

    Upstream .gz checksums are never checked: Debian recompresses the files.
    """
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not a readable gzip file ({_one_line(e)})") from e
    ndim = magic & 0xFF  # The magic's last byte is the number of dimensions.
    header = 4 + 4 * ndim
    if len(raw) >= 4 and (got := struct.unpack(">I", raw[:4])[0]) != magic:
        raise DatasetError(f"{path}: bad IDX magic {got}, expected {magic}")
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: {len(raw) - header} data bytes, header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
