"""Random horizontal flip (``flip``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Param

if TYPE_CHECKING:
    import keras


class Flip(Augmentation):
    name = "flip"
    fields = ("flip",)
    order = 10
    params = (Param("flip", Choice((True, False))),)

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        import keras

        return [keras.layers.RandomFlip("horizontal", seed=config.seed)] if config.flip else []
