import json

import pytest

from kilotune.training.config import ARCHITECTURES, TrainConfig


def test_round_trip_through_json(tmp_path):
    config = TrainConfig(arch="wrn", depth=16, widen_factor=2, squeeze_excite=True, mixup_alpha=0.2, seed=7)
    path = tmp_path / "cfg.json"
    config.to_json(path)
    assert TrainConfig.from_json(path) == config


def test_export_file_is_read_from_its_config_key(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"arch": "vgg8", "epochs": 3}, "trial": 4}))
    assert TrainConfig.from_json(path).arch == "vgg8"


def test_json_ints_become_floats_and_floats_must_be_whole_for_ints():
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ValueError, match="flip"):
        TrainConfig.from_dict({"flip": "yes"})


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) learning_rat; allowed: .*learning_rate"):
        TrainConfig.from_dict({"learning_rat": 0.1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learning_rate": -0.1}, r"learning_rate=-0.1 is out of range; allowed \[1e-06, 10.0\]"),
        ({"learning_rate": float("nan")}, "learning_rate=nan must be a finite number"),
        ({"arch": "resnet20", "depth": 21}, r"6n\+2.*depth=21"),
        ({"arch": "wrn", "depth": 20}, r"6n\+4.*depth=20"),
        ({"arch": "alexnet"}, "arch='alexnet' is not allowed; choose one of"),
        ({"schedule": "step", "warmup_epochs": 2}, "warmup_epochs applies to"),
        ({"epochs": 5, "warmup_epochs": 5}, "warmup_epochs=5 is out of range"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_out_of_range_values_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_defaults_are_valid_and_cover_every_architecture():
    assert TrainConfig().arch in ARCHITECTURES
    for arch in ARCHITECTURES:
        TrainConfig(arch=arch, depth=16 if arch == "wrn" else 20)
