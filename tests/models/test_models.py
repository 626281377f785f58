"""Tests for models/: every architecture builds, trains a step and exposes "features"."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from kilotune.models import ARCHITECTURES, BUILDERS, build_model
from tests.conftest import run_bounded

ROOT = Path(__file__).resolve().parents[2]

# Small but structurally complete versions, so the whole file runs in well under a minute.
SMALL = {
    "vgg8": dict(width=0.25),
    "vgg16": dict(width=0.125),
    "resnet9": dict(width=0.125),
    "resnet18": dict(width=0.125),
    "resnet20": dict(width=0.5, depth=8),
    "wrn": dict(depth=10, widen_factor=1),
}


def small(arch: str, input_shape=(32, 32, 3), num_classes: int = 10, **kw) -> keras.Model:
    return build_model(arch, input_shape, num_classes, **{**SMALL[arch], **kw})


def test_architectures_match_builders():
    assert ARCHITECTURES == ("vgg8", "vgg16", "resnet9", "resnet18", "resnet20", "wrn")
    assert tuple(BUILDERS) == ARCHITECTURES


@pytest.mark.slow
@pytest.mark.parametrize("input_shape", [(32, 32, 3), (32, 32, 1)], ids=["rgb", "gray"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builds_trains_and_exposes_features(arch, input_shape):
    keras.utils.set_random_seed(0)
    model = small(arch, input_shape, num_classes=7)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, *input_shape)).astype("float32")
    y = rng.integers(0, 7, size=64)

    assert model.layers[-1].name == "logits"
    assert model.get_layer("logits") is model.layers[-1]
    # Eager calls, not predict(): each predict() traces and compiles a function.
    assert keras.ops.shape(model(x[:5], training=False)) == (5, 7)

    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][-1])

    extractor = keras.Model(model.input, model.get_layer("features").output)
    features = keras.ops.convert_to_numpy(extractor(x[:3], training=False))
    assert features.ndim == 2 and features.shape[0] == 3
    assert np.all(np.isfinite(features))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_features_feed_the_classifier(arch):
    """With dropout the "features" output is still the pre-dropout pooled vector."""
    model = small(arch, dropout=0.3)
    features = model.get_layer("features").output
    assert model.get_layer("head_dropout").input is features
    assert len(features.shape) == 2


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_small_inputs(arch):
    # 8x8 must work: pools that would shrink a side below 1 are skipped.
    assert small(arch, (8, 8, 1)).output.shape == (None, 10)


def test_resnet20_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match=r"6n\+2"):
        build_model("resnet20", (32, 32, 3), 10, depth=21)
    assert build_model("resnet20", (32, 32, 3), 10, depth=32).name == "resnet32"


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ValueError, match=r"6n\+4"):
        build_model("wrn", (32, 32, 3), 10, depth=17)
    with pytest.raises(ValueError, match="widen_factor"):
        build_model("wrn", (32, 32, 3), 10, depth=10, widen_factor=0)


def test_unknown_arch_lists_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        build_model("alexnet", (32, 32, 3), 10)
    assert "alexnet" in str(info.value) and "wrn" in str(info.value)


@pytest.mark.parametrize("arch", ["vgg8", "vgg16"])
def test_squeeze_excite_rejected_for_vgg(arch):
    with pytest.raises(ValueError, match="squeeze_excite applies to residual"):
        build_model(arch, (32, 32, 3), 10, squeeze_excite=True)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(activation="tanh"), "activation"),
        (dict(width=0.0), "width"),
        (dict(dropout=1.0), "dropout"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(num_classes=0), "num_classes"),
        (dict(input_shape=(32, 32)), "input_shape"),
    ],
)
def test_bad_arguments(kw, field):
    args = dict(input_shape=(32, 32, 3), num_classes=10) | kw
    with pytest.raises(ValueError, match=field):
        build_model("resnet20", args.pop("input_shape"), args.pop("num_classes"), **args)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_weight_decay_adds_losses(arch):
    assert len(small(arch, weight_decay=0.0).losses) == 0
    model = small(arch, weight_decay=5e-4)
    assert len(model.losses) > 0
    # One L2 term per conv and dense kernel, none for BN.
    kernels = [l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(model.losses) == len(kernels)


@pytest.mark.parametrize("arch", ["resnet9", "resnet18", "resnet20", "wrn"])
def test_squeeze_excite_adds_parameters(arch):
    plain, se = small(arch), small(arch, squeeze_excite=True)
    assert se.count_params() > plain.count_params()
    assert any(isinstance(l, keras.layers.Multiply) for l in se.layers)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_width_scales_parameters(arch):
    kw = dict(depth=10, widen_factor=1) if arch == "wrn" else {}
    if arch == "resnet20":
        kw = dict(depth=8)
    one = build_model(arch, (32, 32, 3), 10, width=1.0, **kw)
    two = build_model(arch, (32, 32, 3), 10, width=2.0, **kw)
    assert two.count_params() > one.count_params()


def test_width_rounds_and_floors_at_8():
    model = build_model("resnet20", (32, 32, 3), 10, width=0.1, depth=8)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert min(l.filters for l in convs) == 8
    model = build_model("resnet20", (32, 32, 3), 10, width=1.5, depth=8)
    assert {l.filters for l in model.layers if isinstance(l, keras.layers.Conv2D)} == {24, 48, 96}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_norm_false_removes_bn(arch):
    model = small(arch, batch_norm=False)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert all(l.use_bias for l in model.layers if isinstance(l, keras.layers.Conv2D))
    with_bn = small(arch)
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in with_bn.layers)


@pytest.mark.parametrize("activation", ["relu", "elu", "gelu", "silu"])
def test_activation_is_used(activation):
    model = small("resnet20", activation=activation)
    acts = {l.activation.__name__ for l in model.layers if isinstance(l, keras.layers.Activation)}
    assert acts == {activation}


def test_wrn_dropout_inside_blocks():
    model = small("wrn", dropout=0.3)
    dropouts = [l.name for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert "head_dropout" in dropouts and len(dropouts) == 1 + 3  # 3 stages x 1 block
    vgg = small("vgg8", dropout=0.3)
    assert [l.name for l in vgg.layers if isinstance(l, keras.layers.Dropout)] == ["head_dropout"]


def test_resnet9_scales_logits():
    model = small("resnet9")
    assert isinstance(model.get_layer("logits"), keras.layers.Rescaling)
    assert model.get_layer("logits").scale == 0.125
    assert isinstance(model.get_layer("features"), keras.layers.GlobalMaxPooling2D)


def test_reference_parameter_counts():
    # Published sizes: ResNet-20 0.27M, WRN-16-4 2.75M, CIFAR ResNet-18 11.17M.
    assert build_model("resnet20", (32, 32, 3), 10).count_params() == 274_042
    assert build_model("wrn", (32, 32, 3), 10, depth=16, widen_factor=4).count_params() == 2_752_506


def test_same_config_gives_same_layer_names():
    a, b = small("wrn", squeeze_excite=True), small("wrn", squeeze_excite=True)
    assert [l.name for l in a.layers] == [l.name for l in b.layers]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_trains_under_jax_backend():
    code = textwrap.dedent(
        """
        import keras, numpy as np
        from kilotune.models import build_model
        model = build_model("resnet20", (32, 32, 3), 10, width=0.5, depth=8, squeeze_excite=True)
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, size=32)
        loss = model.fit(x, y, epochs=1, batch_size=32, verbose=0).history["loss"][-1]
        assert np.isfinite(loss), loss
        print("backend", keras.backend.backend(), "loss", loss)
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = run_bounded([sys.executable, "-c", code], env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend jax" in result.stdout


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shape_fields_name_what_each_builder_reads(arch):
    """``names.SHAPE_FIELDS`` (what a shown config says an arch ignores) matches the builders:
    a field it names changes the model's size, one it leaves out does not."""
    from kilotune.models.names import SHAPE_FIELDS, ignored_fields

    base = {"depth": 16 if arch == "wrn" else 20, "widen_factor": 2}
    other = {"depth": base["depth"] + 6, "widen_factor": 3}
    size = build_model(arch, (16, 16, 1), 10, width=0.25, **base).count_params()
    for field in ("depth", "widen_factor"):
        changed = build_model(arch, (16, 16, 1), 10, width=0.25, **(base | {field: other[field]})).count_params()
        assert (changed != size) == (field in SHAPE_FIELDS.get(arch, ())), field
        assert (field in ignored_fields(arch)) == (changed == size)
