"""The architectures and activations the models build: names only, so the training
configuration (workers/config.py) and the search space validate against them without Keras."""

from __future__ import annotations

ARCHITECTURES: tuple[str, ...] = ("vgg8", "vgg16", "resnet9", "resnet18", "resnet20", "wrn")
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "silu")  # keras.activations names
