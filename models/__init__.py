"""Keras 3 image classifiers for small-data search: VGG, DavidNet, ResNet and WideResNet.

Backend-agnostic (``keras`` and ``keras.ops`` only). Every model maps normalised images to
logits; its penultimate pooled vector is the layer named "features".

    >>> from models import build_model
    >>> model = build_model("wrn", (32, 32, 3), 10, depth=16, widen_factor=4)
"""

from .registry import ARCHITECTURES, BUILDERS, build_model

__all__ = ["ARCHITECTURES", "BUILDERS", "build_model"]
