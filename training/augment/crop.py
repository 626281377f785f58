"""Pad-and-random-crop by up to ``crop_padding`` pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Param

if TYPE_CHECKING:
    import keras


class Crop(Augmentation):
    name = "crop"
    fields = ("crop_padding",)
    order = 20
    params = (Param("crop_padding", Choice((0, 2, 4))),)

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        import keras

        if not config.crop_padding:
            return []
        height, width, _ = input_shape
        # Integer shifts with zero fill are exactly pad-and-random-crop; nearest keeps pixels sharp.
        return [keras.layers.RandomTranslation(config.crop_padding / height, config.crop_padding / width, fill_mode="constant",
                                               interpolation="nearest", seed=config.seed + 1)]  # fmt: skip
