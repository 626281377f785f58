"""What every dataset is: its images in memory (``ImageDataset``), the class a built-in dataset is
(``Dataset``: its name, image shape, whether a horizontal flip keeps the class, how it is found
or fetched), and the per-channel statistics the training core normalises with.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


class DatasetError(ValueError):
    """A dataset that is missing, corrupt or unknown. The message is one line, safe to show a user."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing image arrays is meaningless.
class ImageDataset:
    """Train and test split of a labelled image dataset.

    Attributes:
        name: A built-in dataset's name (``DATASETS``), or a user's arrays' (their ``.npz`` file once saved).
        x_train: ``uint8`` images, shape ``(N, H, W, C)``, channels-last.
        y_train: ``int64`` labels, shape ``(N,)``.
        x_test: ``uint8`` images.
        y_test: ``int64`` labels.
        class_names: Human-readable name of each label.
        source: What identifies the data besides its training images: a built-in dataset's name,
            ``"arrays"`` for a user's own (identified by their content alone, wherever their file is).
        flip_keeps_class: Whether a horizontally flipped image shows the same class (flip
            test-time augmentation relies on it).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str = "arrays"
    flip_keeps_class: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    @functools.cached_property  # Writes to __dict__ directly, so it works on frozen dataclasses.
    def checksum(self) -> str:
        """``"sha256:<hex>"`` of the source and training set, which identify the data."""
        h = hashlib.sha256(self.source.encode() + b"\0")
        h.update(np.ascontiguousarray(self.x_train, dtype=np.uint8).data)
        h.update(np.ascontiguousarray(self.y_train, dtype=np.int64).data)
        return "sha256:" + h.hexdigest()


class Dataset(ABC):
    """A built-in dataset, ``--dataset NAME`` (registered in ``DATASETS``, subset/datasets/__init__.py).

    Its ``load`` looks for its files where ``fetch.data_directory`` and its own rules say, else
    fetches them there (``fetch.find_or_fetch``: one process fetches, the others wait; files are
    put in place only once they load), and reads them with numpy alone.
    """

    name: ClassVar[str]  # what --dataset takes and a study records
    title: ClassVar[str]  # how messages name it
    image_shape: ClassVar[tuple[int, int, int]]  # (height, width, channels) of the images load returns
    flip_keeps_class: ClassVar[bool]  # a horizontally flipped image shows the same class
    class_names: ClassVar[tuple[str, ...]]

    @abstractmethod
    def load(self, data_dir: str | Path | None, download: bool) -> ImageDataset:
        """The dataset from its files (``load_dataset`` describes ``data_dir`` and ``download``).

        Raises:
            DatasetError: The files are missing (and could not be fetched) or corrupt.
        """

    def image_dataset(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      class_names: tuple[str, ...] | None = None) -> ImageDataset:  # fmt: skip
        """The arrays read as this dataset (its name, source and flip rule; its class names unless the files name them)."""
        return ImageDataset(self.name, x_train, y_train, x_test, y_test, class_names or self.class_names, self.name, self.flip_keeps_class)


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


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows of ``probabilities`` (or logits) whose largest entry is at its label."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return ``float32`` ``(x / 255 - mean) / std``, broadcasting over the channel axis."""
    std = np.where(np.asarray(std) > 0, std, 1.0)  # A constant channel must not become inf.
    out = x.astype(np.float32)
    out *= np.float32(1 / 255)
    out -= np.asarray(mean, np.float32)
    out /= std.astype(np.float32)
    return out
