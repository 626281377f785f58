"""The input pipeline of augmentations that mix images and their labels (``batch_layers``,
training/augment/): shuffled one-hot batches, each passed through one of the config's mixing
layers, picked at random."""

from __future__ import annotations

import keras
import numpy as np

from kilotune.training.augment import AUGMENTATIONS
from kilotune.training.config import TrainConfig


class BatchMixer:
    """Applies MixUp and/or CutMix to one batch; with both on, each batch picks one at random."""

    def __init__(self, config: TrainConfig) -> None:
        self.layers: list[keras.Layer] = [layer for augmentation in AUGMENTATIONS for layer in augmentation.batch_layers(config)]
        self.rng = np.random.default_rng(config.seed + 5)

    def __bool__(self) -> bool:
        return bool(self.layers)

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layer = self.layers[self.rng.integers(len(self.layers))]
        out = layer({"images": images, "labels": labels}, training=True)
        return keras.ops.convert_to_numpy(out["images"]), keras.ops.convert_to_numpy(out["labels"])


class MixedBatches(keras.utils.PyDataset):
    """Shuffled one-hot batches passed through a BatchMixer; reshuffles every epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mixer: BatchMixer, seed: int) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.mixer = x, y, batch_size, mixer
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.mixer(self.x[rows], self.y[rows])

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))
