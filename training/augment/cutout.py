"""Cutout: a ``cutout`` x ``cutout`` square erased at random (DeVries & Taylor)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Param

if TYPE_CHECKING:
    import keras


class Cutout(Augmentation):
    name = "cutout"
    fields = ("cutout",)
    order = 30
    params = (Param("cutout", Choice((0, 4, 8, 12, 16))),)

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        import keras

        if not config.cutout:
            return []
        height, width, _ = input_shape
        area = (config.cutout / height) * (config.cutout / width)
        # Inputs are normalised, so fill 0 is the training mean, as in DeVries & Taylor's cutout.
        return [keras.layers.RandomErasing(factor=1.0, scale=(area, area), fill_value=0.0, value_range=(-3.0, 3.0), seed=config.seed + 2)]
