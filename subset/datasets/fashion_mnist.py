"""Fashion-MNIST (``--dataset fashion-mnist``): the four IDX ``.gz`` files, padded to 32x32x1; fetched
from Keras' URLs, else from Debian's archive, when found nowhere.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from kilotune.subset.datasets.base import Dataset, DatasetError, ImageDataset
from kilotune.subset.datasets.fetch import (
    DEBIAN_DATASETS, data_directory, fetch_url, find_or_fetch, keras_datasets_dir, one_line, run, system_datasets_dir,
)

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"  # keras.datasets.fashion_mnist's
DEBIAN_PACKAGE = "dataset-fashion-mnist"  # Debian's package of the four files


class FashionMnist(Dataset):
    name = "fashion-mnist"
    title = "Fashion-MNIST"
    image_shape = (32, 32, 1)
    flip_keeps_class = True
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

    def load(self, data_dir: str | Path | None, download: bool) -> ImageDataset:
        """The files in ``data_dir`` or its ``fashion-mnist/`` (only there), else in the data directory's
        ``fashion-mnist/``, Debian's, or Keras' cache; else fetched into the first."""
        into = data_directory(data_dir) / "fashion-mnist"
        if data_dir is not None:
            looked = [Path(data_dir).expanduser(), into]
        else:
            looked = [into, system_datasets_dir() / "fashion-mnist", keras_datasets_dir() / "fashion-mnist"]

        def find() -> Path | None:
            return next((d for d in looked if all((d / f).is_file() for f in FILES)), None)

        def from_keras_urls(staging: Path) -> None:
            for file in FILES:
                fetch_url(URL + file, staging / file)

        def from_debian(staging: Path) -> None:
            # `apt-get download` fetches the package without installing it (no root needed).
            run(["apt-get", "download", DEBIAN_PACKAGE], staging)
            if not (debs := list(staging.glob("*.deb"))):
                raise RuntimeError("apt-get download wrote no .deb file")
            run(["dpkg-deb", "-x", debs[0].name, "root"], staging)
            for file in FILES:
                os.replace(staging / "root" / DEBIAN_DATASETS / "fashion-mnist" / file, staging / file)

        sources = [(f"Keras' URLs {URL}", from_keras_urls), (f"Debian's archive (apt-get download {DEBIAN_PACKAGE})", from_debian)]
        todo = f"put {', '.join(FILES)} in {into}" + ("" if data_dir is not None else f" (or apt-get install {DEBIAN_PACKAGE})")
        return self._from_dir(find_or_fetch(self.title, find, looked, into, FILES, sources, self._from_dir, todo=todo, download=download))

    def _from_dir(self, root: Path) -> ImageDataset:
        x_train, y_train = _read_idx_pair(root / FILES[0], root / FILES[1])
        x_test, y_test = _read_idx_pair(root / FILES[2], root / FILES[3])
        return self.image_dataset(x_train, y_train, x_test, y_test)


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
        raise DatasetError(f"{path}: not a readable gzip file ({one_line(e)})") from e
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
