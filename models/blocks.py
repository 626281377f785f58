"""Shared building blocks: conv-bn-act, squeeze-excite, residual units and the classifier head.

Every architecture makes its layers through :class:`LayerSpec`, so ``batch_norm``,
``activation`` and ``weight_decay`` mean exactly the same thing in every model, and
:func:`channels` is the one place ``width`` is applied. Layers get deterministic names
(``stage2_block1_conv1_conv``...) so that two builds of one configuration in the same
process have identical layer names, which keeps summaries and checkpoints comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from .names import ACTIVATIONS, listing


# Keras' default BN momentum (0.99) averages over ~100 steps. With 1000 images at batch 128
# an epoch is 8 steps, so the moving statistics would lag the weights for many epochs and
# validation would see stale statistics. 0.9 is PyTorch's default (momentum=0.1), the value
# the DavidNet, ResNet and WRN CIFAR recipes were tuned with.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def channels(base: int, width: float) -> int:
    """Channel count of a layer whose width-1.0 count is ``base``: rounded, at least 8."""
    return max(8, int(round(base * width)))


def check_common(
    input_shape: tuple[int, int, int], num_classes: int, width: float, dropout: float
) -> None:
    """Validates the arguments every builder shares; raises ``ValueError`` naming the bad one."""
    if len(input_shape) != 3 or any(d is not None and d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape=}")
    if input_shape[-1] is None:
        raise ValueError(f"the channel count must be known, got {input_shape=}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width=}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout=}")


@dataclass(frozen=True)
class LayerSpec:
    """How convs, norms, activations and dense layers are made in one model.

    Attributes:
        activation: A keras.activations name, one of ``ACTIVATIONS``.
        batch_norm: Whether convs are followed by BatchNormalization. Without it convs get
            a bias, which BN would otherwise make redundant.
        weight_decay: L2 factor on every conv and dense kernel (never on BN or biases);
            0 adds no regulariser at all, so ``model.losses`` stays empty.
    """

    activation: str = "relu"
    batch_norm: bool = True
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {listing(ACTIVATIONS)}, got {self.activation=}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay=}")

    def regularizer(self) -> keras.regularizers.Regularizer | None:
        return keras.regularizers.L2(self.weight_decay) if self.weight_decay > 0 else None

    def conv(self, x, filters: int, kernel_size: int = 3, strides: int = 1, *, name: str):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=not self.batch_norm,
            kernel_initializer="he_normal",
            kernel_regularizer=self.regularizer(),
            name=name,
        )(x)

    def norm(self, x, *, name: str):
        if not self.batch_norm:
            return x
        return keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
        )(x)

    def act(self, x, *, name: str):
        return keras.layers.Activation(self.activation, name=name)(x)

    def dense(self, x, units: int, *, activation: str | None = None, use_bias: bool = True,
              name: str, dtype: str | None = None):
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_regularizer=self.regularizer(),
            name=name,
            dtype=dtype,
        )(x)


def conv_bn_act(x, spec: LayerSpec, filters: int, *, kernel_size: int = 3, strides: int = 1,
                act: bool = True, name: str):
    """Conv, then BN (if enabled), then the activation (unless ``act=False``)."""
    x = spec.conv(x, filters, kernel_size, strides, name=f"{name}_conv")
    x = spec.norm(x, name=f"{name}_bn")
    return spec.act(x, name=f"{name}_act") if act else x


def max_pool(x, *, name: str):
    """2x2 max-pool, skipped when a spatial side is already 1 (it would drop to 0).

    This is what lets VGG-16's five pools and DavidNet's three run on inputs down to 8x8.
    """
    height, width = x.shape[1], x.shape[2]
    if (height is not None and height < 2) or (width is not None and width < 2):
        return x
    return keras.layers.MaxPooling2D(2, name=name)(x)


def squeeze_excite(x, spec: LayerSpec, *, ratio: int = 16, name: str):
    """Squeeze-and-excitation (Hu et al. 2018): rescale channels by a learned global gate.

    The bottleneck has ``channels // ratio`` units but at least 4, so narrow models
    (width 0.25, WRN k=1) still get a gate with some capacity. The bottleneck uses ReLU
    as in the paper whatever the model's activation; the gate is a sigmoid.
    """
    filters = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = spec.dense(s, max(4, filters // ratio), activation="relu", name=f"{name}_reduce")
    s = spec.dense(s, filters, activation="sigmoid", name=f"{name}_expand")
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def _shortcut(x, spec: LayerSpec, filters: int, strides: int, *, name: str):
    """Identity when shapes match, else a 1x1 projection (ResNet option B) with BN."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    return conv_bn_act(x, spec, filters, kernel_size=1, strides=strides, act=False, name=name)


def basic_block(x, spec: LayerSpec, filters: int, *, strides: int = 1,
                se: bool = False, name: str):
    """ResNet v1 basic block: conv-bn-act, conv-bn, [SE], add the shortcut, act.

    Post-activation as in He et al. 2016 and the Keras CIFAR ``resnet_v1`` example;
    used by resnet18 and resnet20.
    """
    y = conv_bn_act(x, spec, filters, strides=strides, name=f"{name}_conv1")
    y = conv_bn_act(y, spec, filters, act=False, name=f"{name}_conv2")
    if se:
        y = squeeze_excite(y, spec, name=f"{name}_se")
    shortcut = _shortcut(x, spec, filters, strides, name=f"{name}_proj")
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return spec.act(y, name=f"{name}_out")


def davidnet_residual(x, spec: LayerSpec, *, se: bool = False, name: str):
    """DavidNet residual: ``x + [SE](conv-bn-act(conv-bn-act(x)))``, no activation after the add."""
    filters = x.shape[-1]
    y = conv_bn_act(x, spec, filters, name=f"{name}_conv1")
    y = conv_bn_act(y, spec, filters, name=f"{name}_conv2")
    if se:
        y = squeeze_excite(y, spec, name=f"{name}_se")
    return keras.layers.Add(name=f"{name}_add")([x, y])


def wide_block(x, spec: LayerSpec, filters: int, *, strides: int = 1, dropout: float = 0.0,
               se: bool = False, name: str):
    """Pre-activation WRN block: bn-act-conv, bn-act, dropout, conv, [SE], add the shortcut.

    As in the reference WRN code, a projection shortcut reads the pre-activated input
    (both paths share the first BN-act); an identity shortcut reads the raw input.
    """
    pre = spec.act(spec.norm(x, name=f"{name}_bn1"), name=f"{name}_act1")
    if strides == 1 and x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = spec.conv(pre, filters, 1, strides, name=f"{name}_proj")
    y = spec.conv(pre, filters, 3, strides, name=f"{name}_conv1")
    y = spec.act(spec.norm(y, name=f"{name}_bn2"), name=f"{name}_act2")
    if dropout > 0:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = spec.conv(y, filters, 3, 1, name=f"{name}_conv2")
    if se:
        y = squeeze_excite(y, spec, name=f"{name}_se")
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def classifier(features, spec: LayerSpec, num_classes: int, *, dropout: float = 0.0,
               scale: float | None = None):
    """Dropout (if any) then the Dense classifier; the model's last layer is named "logits".

    ``features`` must already be the layer named "features", so a feature extractor
    gets the representation before dropout. With ``scale`` (DavidNet's 0.125) the Dense
    is named "classifier" and a Rescaling named "logits" follows. The last layer computes
    in float32 so logits stay float32 under a mixed-precision policy.
    """
    x = keras.layers.Dropout(dropout, name="head_dropout")(features) if dropout > 0 else features
    if scale is None:
        return spec.dense(x, num_classes, name="logits", dtype="float32")
    # DavidNet's classifier has no bias: the 0.125 scale is the whole output calibration.
    x = spec.dense(x, num_classes, use_bias=False, name="classifier")
    return keras.layers.Rescaling(scale, name="logits", dtype="float32")(x)
