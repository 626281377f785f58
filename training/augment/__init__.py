"""Augmentation, one class a file in this folder (base.py says what one is), each found here: adding
one is its file and its fields in training/config.py (docs/architecture.md).

``AUGMENTATIONS`` holds one instance of each, in ``order``; ``image_augmentation`` gives a
config's in-model layers, and training/batches.py mixes batches with their ``batch_layers``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from kilotune.training.augment.base import Augmentation, Normalization
from kilotune.training.config import TrainConfig
from kilotune.training.params import Param

if TYPE_CHECKING:
    import keras


def _found() -> tuple[Augmentation, ...]:
    """An instance of every augmentation defined in this folder, in their ``order``."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return tuple(sorted((kind() for kind in Augmentation.__subclasses__()), key=lambda a: a.order))


AUGMENTATIONS = _found()


def image_augmentation(config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
    """Layers that augment single images, in order; empty when the config asks for none.

    ``normalization``: the inputs' per-channel ``(mean, std)`` (a policy needs it: policy.py).
    """
    return [layer for augmentation in AUGMENTATIONS for layer in augmentation.image_layers(config, input_shape, normalization)]


def searched_params() -> tuple[Param, ...]:
    """Every augmentation's searched parameters, in order (search/space.py's part of the space)."""
    return tuple(p for augmentation in AUGMENTATIONS for p in augmentation.params)
