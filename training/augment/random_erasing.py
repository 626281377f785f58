"""Random Erasing (Zhong et al.): with chance ``random_erasing``, a rectangle of 2-33% of the
image, filled with the mean (the inputs are normalised, so 0), after cutout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Param

if TYPE_CHECKING:
    import keras


class RandomErasing(Augmentation):
    name = "random erasing"
    fields = ("random_erasing",)
    order = 35
    params = (Param("random_erasing", Choice((0.0, 0.25, 0.5))),)

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        import keras

        if not config.random_erasing:
            return []
        return [keras.layers.RandomErasing(factor=config.random_erasing, scale=(0.02, 0.33), fill_value=0.0, value_range=(-3.0, 3.0),
                                           seed=config.seed + 7)]
