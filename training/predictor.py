"""An ensemble as one Keras model: uint8-range images in, the weighted mean softmax out.

Each member keeps its own input normalisation (its training images' channel statistics) in front
of it, so the saved file needs nothing beside it:

    predictor = kilotune.load_predictor("retrain-kilotune-3/ensemble.keras")
    classes = predictor.predict(images).argmax(axis=1)     # images: (N, H, W, C), 0-255

A member trained with horizontal flips may also see the flipped images (``flip_tta``), both
views counting; one trained without them is not shown flipped images it never learned from.
The two small layers here are registered with Keras, so ``keras.models.load_model`` loads the
file too once kilotune is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kilotune")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors images left to right (axis 2 of NHWC), in training and inference alike."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)


@keras.saving.register_keras_serializable(package="kilotune")
class WeightedMean(keras.layers.Layer):
    """The weighted mean of same-shaped inputs (members' softmax outputs)."""

    def __init__(self, weights: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in weights]

    def call(self, inputs):
        total = sum(w * x for w, x in zip(self.member_weights, inputs))
        return total / sum(self.member_weights)

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self.member_weights}


def ensemble_predictor(
    members: Sequence[tuple[keras.Model, tuple[np.ndarray, np.ndarray]]],
    weights: Sequence[float],
    input_shape: tuple[int, int, int],
    *,
    flip_tta: Sequence[bool] | None = None,
) -> keras.Model:
    """One model averaging ``members`` (each a trained model that outputs logits, with the
    ``(mean, std)`` its inputs were normalised with, as ``training.train`` returns them).

    Args:
        members: The trained models and their normalisation.
        weights: One per member (a member chosen twice weighs 2).
        input_shape: The images' shape, e.g. ``(32, 32, 1)``.
        flip_tta: Per member, whether it also sees the horizontally flipped images (each view
            counts half of its weight); default none does.
    """
    flips = list(flip_tta) if flip_tta is not None else [False] * len(members)
    if not members or not len(members) == len(weights) == len(flips):
        raise ValueError(f"need one weight and one flip per member, got {len(members)} members, {len(weights)} weights, {len(flips)} flips")
    images = keras.Input(input_shape, name="images")
    flipped = HorizontalFlip(name="flipped")(images) if any(flips) else None
    outputs, view_weights = [], []
    for i, ((model, (mean, std)), weight, flip) in enumerate(zip(members, weights, flips)):
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        normalise = keras.layers.Rescaling(scale=1.0 / (255.0 * std), offset=-mean / std, name=f"normalise_{i}")
        # Its own name: members of one architecture share their model's name, which a model refuses twice.
        inner = keras.Input(input_shape)
        member = keras.Model(inner, model(inner), name=f"member_{i}")
        views = [images, flipped] if flip else [images]
        for view in views:
            outputs.append(keras.layers.Softmax(name=f"softmax_{len(outputs)}")(member(normalise(view))))
            view_weights.append(float(weight) / len(views))
    return keras.Model(images, WeightedMean(view_weights, name="mean")(outputs), name="kilotune_ensemble")


def load_predictor(path: str | Path) -> keras.Model:
    """Loads what ``kilotune retrain`` saved as ``ensemble.keras`` (or any kilotune model file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"predictor file not found: {path} (kilotune retrain writes <out-dir>/ensemble.keras)")
    return keras.models.load_model(path)
