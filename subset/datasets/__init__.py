"""Image datasets, read with numpy only: the built-in ones, one file each and registered here by name
(``DATASETS``: ``--dataset NAME``), fetched into kilotune's cache when no copy is found, and a
user's own images from an ``.npz`` file (``dataset_from_arrays``, ``save_dataset``).

Adding a dataset is a file beside these (a ``Dataset`` subclass, base.py) and its line in
``DATASETS`` (docs/architecture.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from kilotune.models.names import shown
from kilotune.subset.datasets.arrays import ARRAYS_SUFFIX, arrays_file, dataset_from_arrays, load_arrays, save_dataset
from kilotune.subset.datasets.base import Dataset, DatasetError, ImageDataset, accuracy, channel_stats, normalize
from kilotune.subset.datasets.cifar10 import Cifar10
from kilotune.subset.datasets.fashion_mnist import FashionMnist

__all__ = ["ARRAYS_SUFFIX", "DATASETS", "Dataset", "DatasetError", "ImageDataset", "accuracy", "channel_stats", "check_dataset_name",
           "dataset_from_arrays", "load_dataset", "normalize", "save_dataset"]  # fmt: skip

# By name, as --dataset takes them (its default: ``RunOptions.dataset``).
DATASETS: dict[str, Dataset] = {d.name: d for d in (Cifar10(), FashionMnist())}


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True
) -> ImageDataset:
    """Loads a dataset from its official files, fetched into kilotune's cache when none are found.

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
        return load_arrays(Path(name), data_dir)
    dataset = DATASETS[name]
    ds = dataset.load(data_dir, download)
    if ds.input_shape != dataset.image_shape:  # a loader's promise, checked where every dataset passes
        raise DatasetError(f"{dataset.title} loaded as {ds.input_shape} images, but it declares {dataset.image_shape}")
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
        arrays_file(Path(name), data_dir)
    elif name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}, or a file.npz of your own arrays")
    return name
