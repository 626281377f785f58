"""An augmentation policy of Keras': RandAugment (``randaugment_ops`` operations a picture, of
strength ``randaugment_magnitude``) or AugMix, after flip and crop.

Their colour and histogram operations need pixels in [0, 1], and the model's inputs are
normalised per channel, so the policy runs between two rescalings (the training images' channel
statistics, ``normalization``), and works on grayscale and colour alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import POLICIES, TrainConfig
from kilotune.training.params import Choice, Condition, Number, Param

if TYPE_CHECKING:
    import keras

RANDAUGMENT = Condition("policy", in_=("randaugment",))


class Policy(Augmentation):
    name = "policy"
    fields = ("policy", "randaugment_ops", "randaugment_magnitude")
    order = 25
    params = (
        Param("policy", Choice(POLICIES)),
        Param("randaugment_ops", Number(1, 3, integer=True), when=RANDAUGMENT),
        Param("randaugment_magnitude", Number(0.1, 0.9), when=RANDAUGMENT),
    )

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        import keras
        import numpy as np

        if config.policy == "none":
            return []
        if normalization is None:
            raise ValueError(f"policy={config.policy!r} needs the training images' channel statistics (normalization)")
        mean, std = (np.asarray(v, np.float32) for v in normalization)
        if config.policy == "randaugment":
            policy = keras.layers.RandAugment(value_range=(0.0, 1.0), num_ops=config.randaugment_ops,
                                              factor=config.randaugment_magnitude, seed=config.seed + 6)
        else:
            policy = keras.layers.AugMix(value_range=(0.0, 1.0), seed=config.seed + 6)
        return [keras.layers.Rescaling(scale=std, offset=mean), policy, keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std)]
