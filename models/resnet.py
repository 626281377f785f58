"""Residual networks for 32x32 inputs: DavidNet ResNet-9, ResNet-18, CIFAR ResNet-6n+2 and
WideResNet-(6n+4)-k.

All four share one signature (see :func:`resnet9` for the arguments); ``depth`` matters
to resnet20 and wrn only and ``widen_factor`` to wrn only, the others ignore them.
"""

from __future__ import annotations

import keras

from .blocks import (
    LayerSpec,
    basic_block,
    channels,
    check_common,
    classifier,
    conv_bn_act,
    davidnet_residual,
    max_pool,
    wide_block,
)


def resnet9(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
            depth: int = 20, widen_factor: int = 4, squeeze_excite: bool = False,
            activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
            weight_decay: float = 0.0) -> keras.Model:
    """ResNet-9 "DavidNet" (Page 2018, "How to train your ResNet").

    prep conv 64; layer1 conv 128, pool, residual(2 x conv 128); layer2 conv 256, pool;
    layer3 conv 512, pool, residual(2 x conv 512); global max pool ("features");
    bias-free Dense ("classifier") scaled by 0.125 ("logits"), as in DavidNet.

    Args:
        input_shape: (height, width, channels) of normalised float images.
        num_classes: Number of logits.
        width: Multiplier on every conv's channel count (rounded, at least 8).
        depth: Ignored (fixed depth).
        widen_factor: Ignored.
        squeeze_excite: SE gate at the end of each residual branch.
        activation: One of ``models.names.ACTIVATIONS``.
        batch_norm: BN after every conv; without it convs have a bias.
        dropout: Dropout rate before the classifier.
        weight_decay: L2 factor on every conv and dense kernel.

    Returns:
        A functional model mapping images to logits.

    Raises:
        ValueError: For a bad argument.
    """
    del depth, widen_factor  # fixed architecture; accepted so every builder has one signature
    check_common(input_shape, num_classes, width, dropout)
    spec = LayerSpec(activation, batch_norm, weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn_act(inputs, spec, channels(64, width), name="prep")
    for i, base, residual in ((1, 128, True), (2, 256, False), (3, 512, True)):
        x = conv_bn_act(x, spec, channels(base, width), name=f"layer{i}")
        x = max_pool(x, name=f"layer{i}_pool")
        if residual:
            x = davidnet_residual(x, spec, se=squeeze_excite, name=f"layer{i}_res")
    features = keras.layers.GlobalMaxPooling2D(name="features")(x)
    logits = classifier(features, spec, num_classes, dropout=dropout, scale=0.125)
    return keras.Model(inputs, logits, name="resnet9")


def resnet18(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
             depth: int = 20, widen_factor: int = 4, squeeze_excite: bool = False,
             activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
             weight_decay: float = 0.0) -> keras.Model:
    """ResNet-18 adapted to CIFAR: 3x3 stride-1 stem, no stem pool, 4 stages
    [64, 128, 256, 512] x 2 basic blocks, stride 2 at stages 2-4, GAP ("features").

    Args as in :func:`resnet9`; ``depth`` and ``widen_factor`` are ignored.
    """
    del depth, widen_factor
    return _resnet("resnet18", input_shape, num_classes, stages=(64, 128, 256, 512),
                   blocks=2, stem=64, width=width, squeeze_excite=squeeze_excite,
                   activation=activation, batch_norm=batch_norm, dropout=dropout,
                   weight_decay=weight_decay)


def resnet20(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
             depth: int = 20, widen_factor: int = 4, squeeze_excite: bool = False,
             activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
             weight_decay: float = 0.0) -> keras.Model:
    """CIFAR ResNet (He et al. 2016, sec. 4.2) of ``depth`` = 6n+2: a conv-16 stem, 3 stages
    [16, 32, 64] x n basic blocks, stride 2 at stages 2-3, GAP ("features").

    The registry name is "resnet20" but any 6n+2 depth builds (20, 32, 44, 56, 110).
    Shape-changing shortcuts are 1x1 projections (option B). Args as in :func:`resnet9`;
    ``widen_factor`` is ignored.

    Raises:
        ValueError: If depth is not 6n+2 with n >= 1.
    """
    del widen_factor
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet20 needs depth = 6n+2 (e.g. 20, 32, 44, 56, 110), got {depth=}")
    return _resnet(f"resnet{depth}", input_shape, num_classes, stages=(16, 32, 64),
                   blocks=(depth - 2) // 6, stem=16, width=width,
                   squeeze_excite=squeeze_excite, activation=activation,
                   batch_norm=batch_norm, dropout=dropout, weight_decay=weight_decay)


def _resnet(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
            stages: tuple[int, ...], blocks: int, stem: int, width: float,
            squeeze_excite: bool, activation: str, batch_norm: bool, dropout: float,
            weight_decay: float) -> keras.Model:
    """Post-activation ResNet: conv-bn-act stem, stages of basic blocks, GAP, classifier."""
    check_common(input_shape, num_classes, width, dropout)
    spec = LayerSpec(activation, batch_norm, weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn_act(inputs, spec, channels(stem, width), name="stem")
    for s, base in enumerate(stages, start=1):
        for b in range(1, blocks + 1):
            strides = 2 if s > 1 and b == 1 else 1
            x = basic_block(x, spec, channels(base, width), strides=strides,
                            se=squeeze_excite, name=f"stage{s}_block{b}")
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    logits = classifier(features, spec, num_classes, dropout=dropout)
    return keras.Model(inputs, logits, name=name)


def wrn(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
        depth: int = 16, widen_factor: int = 4, squeeze_excite: bool = False,
        activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
        weight_decay: float = 0.0) -> keras.Model:
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016); WRN-16-4 by default.

    conv-16 stem; 3 stages [16k, 32k, 64k] x n pre-activation blocks (n = (depth-4)/6),
    stride 2 at stages 2-3, ``dropout`` between each block's convs; final BN-act, GAP
    ("features"), dropout, logits. ``width`` scales the stem and the stages on top of k.
    Args as in :func:`resnet9`.

    Raises:
        ValueError: If depth is not 6n+4 with n >= 1, or widen_factor < 1.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn needs depth = 6n+4 (e.g. 10, 16, 22, 28, 40), got {depth=}")
    if widen_factor < 1:
        raise ValueError(f"wrn needs widen_factor >= 1, got {widen_factor=}")
    check_common(input_shape, num_classes, width, dropout)
    spec = LayerSpec(activation, batch_norm, weight_decay)
    inputs = keras.Input(input_shape, name="image")
    # The stem is a bare conv: each block starts with its own BN-act (pre-activation).
    x = spec.conv(inputs, channels(16, width), name="stem_conv")
    for s, base in enumerate((16, 32, 64), start=1):
        for b in range(1, (depth - 4) // 6 + 1):
            strides = 2 if s > 1 and b == 1 else 1
            x = wide_block(x, spec, channels(base * widen_factor, width), strides=strides,
                           dropout=dropout, se=squeeze_excite, name=f"stage{s}_block{b}")
    # Pre-activation blocks end on an add, so the head needs its own BN-act.
    x = spec.act(spec.norm(x, name="final_bn"), name="final_act")
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    logits = classifier(features, spec, num_classes, dropout=dropout)
    return keras.Model(inputs, logits, name=f"wrn_{depth}_{widen_factor}")
