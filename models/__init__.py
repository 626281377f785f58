"""Keras 3 image classifiers for small-data search: VGG, DavidNet, ResNet and WideResNet.

Backend-agnostic (``keras`` and ``keras.ops`` only). Every model maps normalised images to
logits; its penultimate pooled vector is the layer named "features".

    >>> from kilotune.models import build_model
    >>> model = build_model("wrn", (32, 32, 3), 10, depth=16, widen_factor=4)

Keras is imported on first use of ``build_model`` or ``BUILDERS``: ``kilotune.models.names``
(the architectures and activations) is what the training configuration needs without it.
"""

from __future__ import annotations

from typing import Any

from .names import ACTIVATIONS, ARCHITECTURES

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "BUILDERS", "build_model"]


def __getattr__(name: str) -> Any:
    if name in ("BUILDERS", "build_model"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'kilotune.models' has no attribute {name!r}")
