"""An augmentation: one class per file in this folder, found there by ``training.augment``.

Each names the TrainConfig fields it reads (declared, with their ranges, in training/config.py),
builds its Keras layer(s) from a config, and declares the parameters the search samples for it
(training/params.py), which search/space.py puts into the search space in ``order``.

Per-image augmentations (``image_layers``) run inside the model, so they are traced with the
training step, run on the accelerator, and are inactive at inference. Those that mix images and
their labels (``batch_layers``: MixUp, CutMix) run per batch in the input pipeline
(training/batches.py). Keras is imported inside the methods: the search space reads the
declarations without loading a backend.
"""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, ClassVar

from kilotune.training.config import TrainConfig
from kilotune.training.params import Param

if TYPE_CHECKING:
    import keras
    import numpy as np

# The per-channel (mean, std) of the model's normalised inputs, where the caller knows it.
Normalization = tuple["np.ndarray", "np.ndarray"] | None


class Augmentation(ABC):
    """One augmentation; stateless, so one instance serves every config."""

    name: ClassVar[str]  # for messages and docs
    fields: ClassVar[tuple[str, ...]]  # the TrainConfig fields it reads
    # Where it runs among the others (per-image layers in this order) and where its parameters go in
    # the search space (and so in the order a trial samples them: a seeded search depends on it).
    order: ClassVar[int]
    params: ClassVar[tuple[Param, ...]] = ()  # what the search samples for it; () for none

    def image_layers(self, config: TrainConfig, input_shape: tuple[int, int, int], normalization: Normalization = None) -> list[keras.Layer]:
        """Layers that augment single images, in the model; none where the config turns it off.

        ``normalization`` is the per-channel ``(mean, std)`` the model's inputs were normalised
        with (``subset.datasets.channel_stats``), for an augmentation that needs pixels in [0, 1].
        """
        return []

    def batch_layers(self, config: TrainConfig) -> list[keras.Layer]:
        """Layers that mix a batch's images and labels (``{"images", "labels"}`` in and out); none by default."""
        return []
