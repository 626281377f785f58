"""VGG-8 and VGG-16 (Simonyan & Zisserman 2015), CIFAR-sized: BN after every conv, global
average pooling instead of a flatten, one hidden Dense(512) before the classifier.

The hidden Dense output (after its activation) is the "features" layer, so a VGG's
features are 512-d whatever ``width`` is.
"""

from __future__ import annotations

import keras

from .blocks import LayerSpec, channels, check_common, classifier, conv_bn_act, max_pool

# Conv widths at width=1.0; "M" is a 2x2 max-pool.
# VGG-8: 6 convs + hidden Dense + classifier = 8 weight layers.
VGG8 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
# VGG-16 is config D's 13 convs; the paper's two Dense(4096) are replaced by one Dense(512)
# (the usual CIFAR adaptation, 4096-wide layers would dwarf 1000 training images), so
# it has 15 weight layers despite the name.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
HIDDEN_UNITS = 512


def _vgg(name: str, config: tuple, input_shape: tuple[int, int, int], num_classes: int, *,
         width: float, squeeze_excite: bool, activation: str, batch_norm: bool,
         dropout: float, weight_decay: float) -> keras.Model:
    check_common(input_shape, num_classes, width, dropout)
    if squeeze_excite:
        raise ValueError(
            "squeeze_excite applies to residual architectures (resnet9, resnet18, resnet20, "
            f"wrn), not {name}; got {squeeze_excite=}"
        )
    spec = LayerSpec(activation, batch_norm, weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x, conv, pool = inputs, 0, 0
    for item in config:
        if item == "M":
            pool += 1
            x = max_pool(x, name=f"pool{pool}")
        else:
            conv += 1
            x = conv_bn_act(x, spec, channels(item, width), name=f"conv{conv}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    features = spec.dense(x, HIDDEN_UNITS, activation=activation, name="features")
    logits = classifier(features, spec, num_classes, dropout=dropout)
    return keras.Model(inputs, logits, name=name)


def vgg8(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
         depth: int = 20, widen_factor: int = 4, squeeze_excite: bool = False,
         activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
         weight_decay: float = 0.0) -> keras.Model:
    """VGG-8: convs 64, M, 128, M, 256, 256, M, 512, 512, M; GAP; Dense(512); logits.

    Args:
        input_shape: (height, width, channels) of normalised float images.
        num_classes: Number of logits.
        width: Multiplier on every conv's channel count (rounded, at least 8).
        depth: Ignored (VGG-8 has a fixed depth).
        widen_factor: Ignored.
        squeeze_excite: Must be False; SE is for residual architectures.
        activation: One of ``models.names.ACTIVATIONS``.
        batch_norm: BN after every conv; without it convs have a bias.
        dropout: Dropout rate before the classifier.
        weight_decay: L2 factor on every conv and dense kernel.

    Returns:
        A functional model mapping images to logits.

    Raises:
        ValueError: For squeeze_excite=True or a bad shared argument.
    """
    del depth, widen_factor  # fixed architecture; accepted so every builder has one signature
    return _vgg("vgg8", VGG8, input_shape, num_classes, width=width,
                squeeze_excite=squeeze_excite, activation=activation, batch_norm=batch_norm,
                dropout=dropout, weight_decay=weight_decay)


def vgg16(input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0,
          depth: int = 20, widen_factor: int = 4, squeeze_excite: bool = False,
          activation: str = "relu", batch_norm: bool = True, dropout: float = 0.0,
          weight_decay: float = 0.0) -> keras.Model:
    """VGG-16 (config D, 13 convs); GAP; Dense(512); logits. Args as in :func:`vgg8`."""
    del depth, widen_factor
    return _vgg("vgg16", VGG16, input_shape, num_classes, width=width,
                squeeze_excite=squeeze_excite, activation=activation, batch_norm=batch_norm,
                dropout=dropout, weight_decay=weight_decay)
