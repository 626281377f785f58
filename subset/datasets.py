"""Image datasets read with numpy only: CIFAR-10 and Fashion-MNIST from their official files
(fetched into kilotune's cache when no copy is found), and a user's own images from an ``.npz``
file (:func:`dataset_from_arrays`, :func:`save_dataset`).

TensorFlow is deliberately not imported: workers that only select subsets or compute
statistics should not pay its start-up cost, so the fetches use Keras' URLs, not its loaders.
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
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
import zlib

import numpy as np

from kilotune.models.names import listing, shown
from kilotune.subset.files import cache_dir, file_lock


DATASETS = ("cifar10", "fashion-mnist")
FLIP_INVARIANT = ("cifar10", "fashion-mnist")  # a mirrored airplane or shirt is still one
ARRAYS_SUFFIX = ".npz"  # a dataset "name" ending in it is the path of a user's arrays
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # keras.datasets.cifar10's
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
_FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"  # keras.datasets.fashion_mnist's
_FASHION_DEB = "dataset-fashion-mnist"  # Debian's package of the four files
_DEBIAN_DATASETS = "usr/share/datasets"  # where Debian's dataset-* packages put their files


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
    def flip_invariant(self) -> bool:
        """Whether a horizontal flip keeps every image's class (so flip test-time augmentation is
        safe): the built-in datasets; a user's arrays are not assumed to be."""
        return self.name in FLIP_INVARIANT

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
    """Load a dataset from its official files, fetched into kilotune's cache when none are found.

    Args:
        name: One of :data:`DATASETS`, or the path of an ``.npz`` file written by
            :func:`save_dataset` (the dataset's name is then that path, made absolute).
        data_dir: Where the files are, and the only place looked in (a missing dataset is
            fetched into it). Without it: the data directory (``$KILOTUNE_DATA_DIR``, else the
            cache, :func:`~kilotune.subset.files.cache_dir`), Debian's ``/usr/share/datasets``
            (``$KILOTUNE_SYSTEM_DATASETS_DIR``; Fashion-MNIST), then Keras' cache, and a
            missing dataset is fetched into the data directory. For an ``.npz``, a file of that
            name in ``data_dir`` is preferred (a worker on another host, where the file is elsewhere).
        download: Whether a dataset found nowhere may be fetched (Keras' URLs; for
            Fashion-MNIST, then Debian's archive), with a line on stderr before and after.

    Returns:
        The dataset; its arrays are read-only so that :attr:`ImageDataset.checksum` stays true.

    Raises:
        DatasetError: The name is unknown, or the files are missing (and could not be
            fetched) or corrupt.
    """
    name = check_dataset_name(name, data_dir)
    if name.endswith(ARRAYS_SUFFIX):
        return _load_arrays(Path(name), data_dir)
    ds = _load_cifar10(data_dir, download) if name == "cifar10" else _load_fashion(data_dir, download)
    for arr in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        arr.flags.writeable = False
    return ds


def check_dataset_name(name: object, data_dir: str | Path | None = None) -> str:
    """Checks what :func:`load_dataset` would be given, cheaply: no data is read, nothing fetched.

    Call it before opening a storage, so that a typo changes nothing stored.

    Args:
        name: A built-in name (:data:`DATASETS`) or the path of an existing ``.npz`` file.
        data_dir: Where else an ``.npz`` file of that name may be (as :func:`load_dataset`).

    Returns:
        ``name`` as a string (a path-like becomes its path).

    Raises:
        DatasetError: (a ``ValueError``) naming the value and what is allowed.
    """
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DatasetError(f"data_dir is the path of a directory, got {type(data_dir).__name__} {shown(data_dir)}")
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise DatasetError(f"a dataset is a name ({', '.join(DATASETS)}) or the path of a file.npz, "
                           f"got {type(name).__name__} {repr(name)[:60]}")  # fmt: skip
    if name.endswith(ARRAYS_SUFFIX):
        _arrays_file(Path(name), data_dir)
    elif name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}, or a file.npz of your own arrays")
    return name


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
    if not isinstance(name, str):
        raise DatasetError(f"name must be a string, got {shown(name)}")
    xs, ys = [], []
    for key, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind not in "iu":
            raise DatasetError(
                f"x_{key} must be uint8 images in 0..255, got dtype {x.dtype}; "
                "for floats in [0, 1] pass (x * 255).round().astype('uint8')"
            )
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"x_{key} must be images in 0..255, got {x.dtype} values in {x.min()}..{x.max()}")
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
    if class_names is not None and (isinstance(class_names, str) or np.ndim(class_names) != 1):
        raise DatasetError(f"class_names must be a list of names, one a label, got {repr(class_names)[:60]}")
    top = int(max(y.max(initial=0) for y in ys)) + 1
    names = tuple(str(c) for c in class_names) if class_names is not None else tuple(str(i) for i in range(top))
    for key, y in (("train", ys[0]), ("test", ys[1])):
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            raise DatasetError(f"y_{key} labels must be in 0..{len(names) - 1} ({len(names)} class names), got {y.min()}..{y.max()}")
    if len(names) < 2:
        raise DatasetError(f"a dataset needs at least 2 classes, got class names {listing(map(repr, names), 'and')}")
    for arr in (*xs, *ys):
        arr.flags.writeable = False
    return ImageDataset(name, xs[0], ys[0], xs[1], ys[1], names)


def save_dataset(dataset: ImageDataset, path: str | Path) -> Path:
    """Writes ``dataset`` as an ``.npz`` file (atomically) that ``load_dataset(path)`` reads.

    Workers load a study's data by name, so a user's arrays reach them as this file.
    """
    if not isinstance(dataset, ImageDataset) or not isinstance(path, (str, os.PathLike)):
        raise DatasetError(f"save_dataset takes a dataset (dataset_from_arrays or load_dataset) and a path; got {shown(dataset)} and {shown(path)}")
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


def _arrays_file(path: Path, data_dir: str | Path | None) -> Path:
    """The ``.npz`` file a dataset named ``path`` is read from: its name in ``data_dir`` first."""
    path = path.expanduser().absolute()
    found = next((p for p in ([Path(data_dir) / path.name] if data_dir else []) + [path] if p.is_file()), None)
    if found is None:
        raise DatasetError(f"dataset file not found: {path}" + (f" (nor {Path(data_dir) / path.name})" if data_dir else ""))
    return found


def _load_arrays(path: Path, data_dir: str | Path | None) -> ImageDataset:
    path = path.expanduser().absolute()
    found = _arrays_file(path, data_dir)
    try:
        with np.load(found, allow_pickle=False) as f:
            arrays = {k: f[k] for k in (*_ARRAY_KEYS, "class_names") if k in f}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{found}: not a readable .npz file ({_one_line(e)})") from e
    if missing := [k for k in _ARRAY_KEYS if k not in arrays]:
        raise DatasetError(f"{found}: missing arrays {listing(missing, 'and')}; expected {listing(_ARRAY_KEYS, 'and')} (and class_names)")
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


def _data_dir(data_dir: str | Path | None) -> Path:
    """Where a dataset is looked for first and fetched into: ``data_dir``, else
    ``$KILOTUNE_DATA_DIR``, else the cache (``$KILOTUNE_CACHE_DIR``, else ``~/.cache/kilotune``)."""
    return Path(data_dir if data_dir is not None else os.environ.get("KILOTUNE_DATA_DIR") or cache_dir()).expanduser()


def _system_datasets_dir() -> Path:
    """Debian's ``/usr/share/datasets``, or ``$KILOTUNE_SYSTEM_DATASETS_DIR`` (an empty one hides it)."""
    return Path(os.environ.get("KILOTUNE_SYSTEM_DATASETS_DIR") or Path("/") / _DEBIAN_DATASETS)


def _keras_datasets_dir() -> Path:
    """Where Keras' loaders keep what they download (``keras.utils.get_file``'s rule)."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp/.keras")) / "datasets"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def _download(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=20) as response, open(path, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def _run(argv: list[str], cwd: Path) -> None:
    """Runs a command; raises with its last line of output when it fails."""
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise RuntimeError(f"{argv[0]} not found (not a Debian system?)") from e
    if out.returncode:
        last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"`{' '.join(argv)}` exited with {out.returncode}: {last}")


def _find_or_fetch(
    what: str,
    find: Callable[[], Path | None],
    looked: list[Path],
    into: Path,
    files: tuple[str, ...],
    sources: list[tuple[str, Callable[[Path], None]]],
    check: Callable[[Path], object],
    *,
    todo: str,
    download: bool,
) -> Path:
    """What ``find`` finds in ``looked``, else ``files`` fetched into directory ``into`` from the
    first of ``sources`` that works (a description, and a function that writes the files into a
    directory); ``todo`` says what a user can do instead.

    Several processes may ask at once (``kilotune run``'s workers): a file lock lets one fetch
    while the others wait and then find its files. A fetch stages the files in a directory of
    its own, checks that they load (``check``), and only then moves each into place, so
    ``find`` (which wants every file) never trusts half a dataset; what a killed fetch staged
    is wiped by the next one.
    """
    if (found := find()) is not None:
        return found
    where = ", ".join(map(str, looked))
    if not download:
        raise DatasetError(f"{what} not found in {where}; {todo}")
    failed: list[str] = []
    staging = into / ".fetch.partial"
    try:
        with file_lock(into / ".fetch.lock"):
            if (found := find()) is not None:  # another process fetched it while this one waited
                return found
            names = ", else ".join(name for name, _ in sources)
            print(f"{what} not found in {where}; fetching it into {into} from {names}", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                for name, fetch in sources:
                    shutil.rmtree(staging, ignore_errors=True)
                    staging.mkdir()
                    try:
                        fetch(staging)
                        check(staging)
                    except Exception as e:  # urllib, apt-get, a truncated file...: each way's reason is reported
                        failed.append(f"{name}: {_one_line(e)}")
                        continue
                    for file in files:
                        os.replace(staging / file, into / file)
                    size = sum((into / file).stat().st_size for file in files) / 1e6
                    tried = f"; tried first: {'; '.join(failed)}" if failed else ""
                    print(f"{what} fetched from {name} into {into} ({size:.1f} MB in {time.monotonic() - started:.0f} s{tried})", file=sys.stderr, flush=True)
                    return find() or into  # (into: its files vanished meanwhile, and loading it says which)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:  # the directory or its lock cannot be written
        failed.append(f"cannot write to {into} ({_one_line(e)})")
    raise DatasetError(f"{what} not found in {where} and could not be fetched: {'; '.join(failed)}; {todo}")


def _load_cifar10(data_dir: str | Path | None, download: bool) -> ImageDataset:
    base = _data_dir(data_dir)
    looked, candidates = [base], [base / _CIFAR_DIR, base, base / _CIFAR_TAR]
    if data_dir is None:
        keras_dir = _keras_datasets_dir()  # Keras 2 and Keras 3 cache layouts.
        looked.append(keras_dir)
        candidates += [keras_dir / _CIFAR_DIR, keras_dir / f"{_CIFAR_DIR}-target" / _CIFAR_DIR]

    def find() -> Path | None:
        return next((p for p in candidates if p.is_file() or (p.is_dir() and (p.name == _CIFAR_DIR or (p / "data_batch_1").is_file()))), None)

    sources = [(f"Keras' URL {_CIFAR_URL}", lambda staging: _download(_CIFAR_URL, staging / _CIFAR_TAR))]
    found = _find_or_fetch("CIFAR-10", find, looked, base, (_CIFAR_TAR,), sources, lambda staging: _cifar_from_tar(staging / _CIFAR_TAR),
                           todo=f"put {_CIFAR_DIR}/ or {_CIFAR_TAR} in {base}", download=download)  # fmt: skip
    return _cifar_from_tar(found) if found.is_file() else _cifar_from_dir(found)


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
            got = f"{len(names)}" if isinstance(names, list) else type(names).__name__
            raise DatasetError(f"{where}/batches.meta: expected a list of 10 label_names, got {got}")
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
        raise DatasetError(f"{where}: labels are {labels.dtype}{labels.shape}, expected {len(data)} integers (one an image)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels in {labels.min()}..{labels.max()}, expected 0..9")
    # Rows hold 1024 R, 1024 G, 1024 B values, each plane 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_fashion(data_dir: str | Path | None, download: bool) -> ImageDataset:
    into = _data_dir(data_dir) / "fashion-mnist"
    if data_dir is not None:
        looked = [Path(data_dir).expanduser(), into]
    else:
        looked = [into, _system_datasets_dir() / "fashion-mnist", _keras_datasets_dir() / "fashion-mnist"]

    def find() -> Path | None:
        return next((d for d in looked if all((d / f).is_file() for f in _FASHION_FILES)), None)

    def from_keras_urls(staging: Path) -> None:
        for file in _FASHION_FILES:
            _download(_FASHION_URL + file, staging / file)

    def from_debian(staging: Path) -> None:
        # `apt-get download` fetches the package without installing it (no root needed).
        _run(["apt-get", "download", _FASHION_DEB], staging)
        if not (debs := list(staging.glob("*.deb"))):
            raise RuntimeError("apt-get download wrote no .deb file")
        _run(["dpkg-deb", "-x", debs[0].name, "root"], staging)
        for file in _FASHION_FILES:
            os.replace(staging / "root" / _DEBIAN_DATASETS / "fashion-mnist" / file, staging / file)

    sources = [(f"Keras' URLs {_FASHION_URL}", from_keras_urls), (f"Debian's archive (apt-get download {_FASHION_DEB})", from_debian)]
    todo = f"put {', '.join(_FASHION_FILES)} in {into}" + ("" if data_dir is not None else f" (or apt-get install {_FASHION_DEB})")
    return _fashion_from_dir(_find_or_fetch("Fashion-MNIST", find, looked, into, _FASHION_FILES, sources, _fashion_from_dir, todo=todo, download=download))


def _fashion_from_dir(root: Path) -> ImageDataset:
    x_train, y_train = _read_idx_pair(root / _FASHION_FILES[0], root / _FASHION_FILES[1])
    x_test, y_test = _read_idx_pair(root / _FASHION_FILES[2], root / _FASHION_FILES[3])
    return ImageDataset("fashion-mnist", x_train, y_train, x_test, y_test, _FASHION_NAMES)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, 2051)
    labels = _read_idx(labels_path, 2049)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(labels) != len(images):
        raise DatasetError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() > 9:  # unsigned bytes: never below 0
        raise DatasetError(f"{labels_path}: labels in {labels.min()}..{labels.max()}, expected 0..9")
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
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: {len(raw) - header} data bytes, header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
