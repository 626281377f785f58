"""Tiny dataset files in the official formats, for the tests of subset/datasets/."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
import pickle
import struct
import tarfile

import numpy as np


N_PER_BATCH = 20


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


FASHION_FILES = {
    "train-images-idx3-ubyte.gz": 60,
    "train-labels-idx1-ubyte.gz": 60,
    "t10k-images-idx3-ubyte.gz": 10,
    "t10k-labels-idx1-ubyte.gz": 10,
}


KERAS_FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


def cifar_batch(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, N_PER_BATCH)],
        b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(N_PER_BATCH)],
    }
    return pickle.dumps(batch, protocol=2)  # The official files are Python 2 pickles.


def cifar_files() -> dict[str, bytes]:
    files = {name: cifar_batch(seed) for seed, name in enumerate(CIFAR_FILES)}
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2)
    return files


def write_cifar_dir(root: Path, files: dict[str, bytes] | None = None) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name, raw in (files or cifar_files()).items():
        (batches / name).write_bytes(raw)
    return batches


def write_cifar_tar(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in cifar_files().items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in FASHION_FILES.items():
        if "images" in name:
            write_idx(root / name, 2051, rng.integers(0, 256, (n, 28, 28)))
        else:
            write_idx(root / name, 2049, np.arange(n) % 10)
    return root
