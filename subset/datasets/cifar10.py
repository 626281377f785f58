"""CIFAR-10 (``--dataset cifar10``): the official python version, ``cifar-10-batches-py/`` or its tarball,
read with numpy and a restricted unpickler; fetched from Keras' URL when found nowhere.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kilotune.subset.datasets.base import Dataset, DatasetError, ImageDataset
from kilotune.subset.datasets.fetch import data_directory, fetch_url, find_or_fetch, keras_datasets_dir, one_line

DIRECTORY = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # keras.datasets.cifar10's
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class Cifar10(Dataset):
    name = "cifar10"
    title = "CIFAR-10"
    image_shape = (32, 32, 3)
    flip_keeps_class = True
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def load(self, data_dir: str | Path | None, download: bool) -> ImageDataset:
        """``cifar-10-batches-py/`` or the tarball in the data directory (only there, given ``data_dir``),
        else in Keras' cache; else the tarball fetched into the data directory."""
        base = data_directory(data_dir)
        looked, candidates = [base], [base / DIRECTORY, base, base / TARBALL]
        if data_dir is None:
            keras_dir = keras_datasets_dir()  # Keras 2 and Keras 3 cache layouts.
            looked.append(keras_dir)
            candidates += [keras_dir / DIRECTORY, keras_dir / f"{DIRECTORY}-target" / DIRECTORY]

        def find() -> Path | None:
            return next((p for p in candidates if p.is_file() or (p.is_dir() and (p.name == DIRECTORY or (p / "data_batch_1").is_file()))), None)

        sources = [(f"Keras' URL {URL}", lambda staging: fetch_url(URL, staging / TARBALL))]
        found = find_or_fetch(self.title, find, looked, base, (TARBALL,), sources, lambda staging: self._from_tar(staging / TARBALL),
                              todo=f"put {DIRECTORY}/ or {TARBALL} in {base}", download=download)  # fmt: skip
        return self._from_tar(found) if found.is_file() else self._from_dir(found)

    def _from_dir(self, path: Path) -> ImageDataset:
        def read(name: str) -> bytes | None:
            try:
                return (path / name).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as e:
                raise DatasetError(f"{path / name}: unreadable ({one_line(e)})") from e

        return self._assemble(read, str(path))

    def _from_tar(self, path: Path) -> ImageDataset:
        wanted = {f"{DIRECTORY}/{n}" for n in (*BATCHES, "batches.meta")}
        members: dict[str, bytes] = {}
        try:
            # One sequential pass: seeking backwards in a gzip stream means decompressing again.
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.name in wanted and (f := tar.extractfile(member)) is not None:
                        members[member.name.rsplit("/", 1)[1]] = f.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: not a readable CIFAR-10 tarball ({one_line(e)})") from e
        return self._assemble(members.get, f"{path}:{DIRECTORY}")

    def _assemble(self, read: Callable[[str], bytes | None], where: str) -> ImageDataset:
        batches = []
        for name in BATCHES:
            raw = read(name)
            if raw is None:
                raise DatasetError(f"{where}/{name}: missing CIFAR-10 batch file")
            batches.append(_parse_batch(raw, f"{where}/{name}"))
        class_names = None
        if (meta := read("batches.meta")) is not None:
            names = _unpickle(meta, f"{where}/batches.meta").get(b"label_names")
            if not isinstance(names, list) or len(names) != 10:
                got = f"{len(names)}" if isinstance(names, list) else type(names).__name__
                raise DatasetError(f"{where}/batches.meta: expected a list of 10 label_names, got {got}")
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        return self.image_dataset(np.concatenate([x for x, _ in batches[:5]]), np.concatenate([y for _, y in batches[:5]]),
                                  batches[5][0], batches[5][1], class_names)  # fmt: skip


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
        raise DatasetError(f"{where}: corrupt or truncated pickle ({one_line(e)})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
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
