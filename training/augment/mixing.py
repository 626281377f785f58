"""MixUp and CutMix, which mix images and their labels: ``mixing`` picks none, one or both (each
batch then picks one at random), ``mixup_alpha`` and ``cutmix_alpha`` their Beta(alpha, alpha)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kilotune.training.augment.base import Augmentation
from kilotune.training.config import TrainConfig
from kilotune.training.params import Choice, Condition, Number, Param

if TYPE_CHECKING:
    import keras

KINDS = {"none": (), "mixup": ("mixup_alpha",), "cutmix": ("cutmix_alpha",), "both": ("mixup_alpha", "cutmix_alpha")}


class MixingChoice(Param):
    """``mixing``: which of MixUp and CutMix are on. It sets their alphas to 0 (off); the alpha
    parameters, sampled after it where it turns them on, set them again."""

    def assign(self, value: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return dict.fromkeys(self.fields, 0.0)

    def read(self, config: Any) -> Any:
        on = tuple(f for f in self.fields if getattr(config, f) > 0)
        return next(kind for kind, fields in KINDS.items() if fields == on)


class Mixing(Augmentation):
    name = "mixing"
    fields = ("mixup_alpha", "cutmix_alpha")
    order = 40
    params = (
        MixingChoice("mixing", Choice(tuple(KINDS)), fields=fields),
        Param("mixup_alpha", Number(0.1, 1.0), when=Condition("mixing", in_=("mixup", "both"))),
        Param("cutmix_alpha", Number(0.25, 1.0), when=Condition("mixing", in_=("cutmix", "both"))),
    )

    def batch_layers(self, config: TrainConfig) -> list[keras.Layer]:
        import keras

        layers: list[keras.Layer] = []
        if config.mixup_alpha:
            layers.append(keras.layers.MixUp(alpha=config.mixup_alpha, seed=config.seed + 3))
        if config.cutmix_alpha:
            layers.append(keras.layers.CutMix(factor=config.cutmix_alpha, seed=config.seed + 4))
        return layers
