"""Architecture registry: ``BUILDERS`` maps each name to its builder; ``build_model`` picks one."""

from __future__ import annotations

from collections.abc import Callable

import keras

from .names import ARCHITECTURES, listing
from .resnet import resnet9, resnet18, resnet20, wrn
from .vgg import vgg8, vgg16

# Every builder takes (input_shape, num_classes, *, width, depth, widen_factor,
# squeeze_excite, activation, batch_norm, dropout, weight_decay) and validates its own
# arguments, so a builder called directly is as safe as one called through build_model.
BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "vgg8": vgg8,
    "vgg16": vgg16,
    "resnet9": resnet9,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "wrn": wrn,
}
assert tuple(BUILDERS) == ARCHITECTURES, "models/names.py names every builder, in order"


def build_model(arch: str, input_shape: tuple[int, int, int], num_classes: int, *,
                width: float = 1.0, depth: int = 20, widen_factor: int = 4,
                squeeze_excite: bool = False, activation: str = "relu",
                batch_norm: bool = True, dropout: float = 0.0,
                weight_decay: float = 0.0) -> keras.Model:
    """Builds an uncompiled classifier mapping normalised images (N, H, W, C) to logits.

    The pooled penultimate vector is the layer named "features" (before dropout) and the
    last layer is named "logits"; there is no softmax, train with ``from_logits=True``.

    Args:
        arch: One of ``ARCHITECTURES``.
        input_shape: (height, width, channels), e.g. (32, 32, 3); H and W >= 8.
        num_classes: Number of logits.
        width: Multiplier on every conv's channel count (rounded, at least 8).
        depth: resnet20: 6n+2 (20, 32, 44, 56, 110); wrn: 6n+4 (10, 16, 22, 28).
            Ignored by the other architectures. The default 20 is not a valid wrn depth,
            so pass one (16 for WRN-16-k) when ``arch="wrn"``.
        widen_factor: WRN's k; ignored by the other architectures.
        squeeze_excite: SE gates in residual units; ValueError for vgg8/vgg16.
        activation: "relu", "elu", "gelu" or "silu".
        batch_norm: BN after convs; without it convs have a bias.
        dropout: Rate before the classifier (and between the convs of WRN blocks).
        weight_decay: L2 factor on every conv and dense kernel; 0 adds no loss terms.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ValueError: For an unknown arch or any invalid argument.
    """
    builder = BUILDERS.get(arch)
    if builder is None:
        raise ValueError(f"unknown architecture {arch=}; choose one of {listing(ARCHITECTURES)}")
    return builder(
        input_shape,
        num_classes,
        width=width,
        depth=depth,
        widen_factor=widen_factor,
        squeeze_excite=squeeze_excite,
        activation=activation,
        batch_norm=batch_norm,
        dropout=dropout,
        weight_decay=weight_decay,
    )
