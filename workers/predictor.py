"""An ensemble as one Keras model: uint8-range images in, the weighted mean softmax out.

Each member keeps its own input normalisation (its training images' channel statistics) in front
of it, so the saved file needs nothing beside it:

    predictor = kilotune.load_predictor("retrain-kilotune-3/ensemble.keras")
    classes = predictor.predict(images).argmax(axis=1)     # images: (N, H, W, C), 0-255

With ``flip_tta`` every member also sees the horizontally flipped images, and both views count.
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
    flip_tta: bool = False,
) -> keras.Model:
    """One model averaging ``members`` (each a trained model that outputs logits, with the
    ``(mean, std)`` its inputs were normalised with, as ``training.train`` returns them).

    Args:
        members: The trained models and their normalisation.
        weights: One per member (a member chosen twice weighs 2).
        input_shape: The images' shape, e.g. ``(32, 32, 1)``.
        flip_tta: Also average each member over horizontally flipped images.
    """
    if len(members) != len(weights) or not members:
        raise ValueError(f"need one weight per member, got {len(members)} members and {len(weights)} weights")
    images = keras.Input(input_shape, name="images")
    views = [images, HorizontalFlip(name="flipped")(images)] if flip_tta else [images]
    outputs = []
    for i, (model, (mean, std)) in enumerate(members):
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        normalise = keras.layers.Rescaling(scale=1.0 / (255.0 * std), offset=-mean / std, name=f"normalise_{i}")
        # Its own name: members of one architecture share their model's name, which a model refuses twice.
        inner = keras.Input(input_shape)
        member = keras.Model(inner, model(inner), name=f"member_{i}")
        for view in views:
            outputs.append(keras.layers.Softmax(name=f"softmax_{len(outputs)}")(member(normalise(view))))
    view_weights = [float(w) for w in weights for _ in views]
    return keras.Model(images, WeightedMean(view_weights, name="mean")(outputs), name="kilotune_ensemble")


def load_predictor(path: str | Path) -> keras.Model:
    """Loads what ``kilotune retrain`` saved as ``ensemble.keras`` (or any kilotune model file)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"predictor file not found: {path} (kilotune retrain writes <out-dir>/ensemble.keras)")
    return keras.models.load_model(path)
