"""Augmentation from Keras' own layers, split where the labels are needed.

Per-image augmentation (flip, pad-and-crop, cutout) runs inside the model, so it is traced
with the training step, runs on the accelerator, and is inactive at inference. MixUp and
CutMix change the labels too, so they run per batch in the input pipeline instead.
"""

from __future__ import annotations

import keras
import numpy as np

from kilotune.training.config import TrainConfig


def image_augmentation(config: TrainConfig, input_shape: tuple[int, int, int]) -> list[keras.Layer]:
    """Layers that augment single images; empty when the config asks for none."""
    height, width, _ = input_shape
    layers: list[keras.Layer] = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=config.seed))
    if config.crop_padding:
        # Integer shifts with zero fill are exactly pad-and-random-crop; nearest keeps pixels sharp.
        layers.append(
            keras.layers.RandomTranslation(
                config.crop_padding / height,
                config.crop_padding / width,
                fill_mode="constant",
                interpolation="nearest",
                seed=config.seed + 1,
            )
        )
    if config.cutout:
        area = (config.cutout / height) * (config.cutout / width)
        # Inputs are normalised, so fill 0 is the training mean, as in DeVries & Taylor's cutout.
        layers.append(
            keras.layers.RandomErasing(
                factor=1.0, scale=(area, area), fill_value=0.0, value_range=(-3.0, 3.0), seed=config.seed + 2
            )
        )
    return layers


class BatchMixer:
    """Applies MixUp and/or CutMix to one batch; with both on, each batch picks one at random."""

    def __init__(self, config: TrainConfig) -> None:
        self.layers: list[keras.Layer] = []
        if config.mixup_alpha:
            self.layers.append(keras.layers.MixUp(alpha=config.mixup_alpha, seed=config.seed + 3))
        if config.cutmix_alpha:
            self.layers.append(keras.layers.CutMix(factor=config.cutmix_alpha, seed=config.seed + 4))
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
