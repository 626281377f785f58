"""A user's own images as a dataset: checked arrays (``dataset_from_arrays``), saved as an ``.npz`` file
(``save_dataset``) that ``load_dataset(path)`` and the workers read.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from kilotune.models.names import listing, shown
from kilotune.subset.datasets.base import DatasetError, ImageDataset
from kilotune.subset.datasets.fetch import one_line

ARRAYS_SUFFIX = ".npz"  # a dataset "name" ending in it is the path of a user's arrays
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


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


def arrays_file(path: Path, data_dir: str | Path | None) -> Path:
    """The ``.npz`` file a dataset named ``path`` is read from: its name in ``data_dir`` first."""
    path = path.expanduser().absolute()
    found = next((p for p in ([Path(data_dir) / path.name] if data_dir else []) + [path] if p.is_file()), None)
    if found is None:
        raise DatasetError(f"dataset file not found: {path}" + (f" (nor {Path(data_dir) / path.name})" if data_dir else ""))
    return found


def load_arrays(path: Path, data_dir: str | Path | None) -> ImageDataset:
    path = path.expanduser().absolute()
    found = arrays_file(path, data_dir)
    try:
        with np.load(found, allow_pickle=False) as f:
            arrays = {k: f[k] for k in (*ARRAY_KEYS, "class_names") if k in f}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{found}: not a readable .npz file ({one_line(e)})") from e
    if missing := [k for k in ARRAY_KEYS if k not in arrays]:
        raise DatasetError(f"{found}: missing arrays {listing(missing, 'and')}; expected {listing(ARRAY_KEYS, 'and')} (and class_names)")
    names = arrays.get("class_names")
    return dataset_from_arrays(*(arrays[k] for k in ARRAY_KEYS), class_names=None if names is None else names.tolist(), name=str(path))
