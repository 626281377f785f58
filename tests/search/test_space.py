from pathlib import Path

import optuna
import pytest

from kilotune.search.presets import PRESETS
from kilotune.search.space import DEFAULT_SPACE, SearchSpace, params_for, space_table
from kilotune.training.config import TrainConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def sample(space: SearchSpace, n: int, seed: int = 0) -> list[TrainConfig]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(space.suggest(trial, epochs=30))
        study.tell(trial, 0.0)
    return configs


def test_default_space_yields_valid_configs_of_every_architecture():
    configs = sample(SearchSpace.from_spec(), 120)
    assert {c.arch for c in configs} == set(DEFAULT_SPACE["arch"].domain.choices)
    assert all(c.epochs == 30 for c in configs)
    assert any(c.cutmix_alpha > 0 for c in configs) and any(c.mixup_alpha > 0 for c in configs)
    assert all((c.depth - 4) % 6 == 0 for c in configs if c.arch == "wrn")


def test_parameters_are_conditional_on_what_they_depend_on():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = SearchSpace.from_spec()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial, epochs=10)
        study.tell(trial, 0.0)
        params = study.trials[-1].params
        assert ("wrn_depth" in params) == (config.arch == "wrn")
        assert ("sgd_learning_rate" in params) == (config.optimizer == "sgd")
        assert ("mixup_alpha" in params) == (config.mixup_alpha > 0)


def test_space_file_narrows_and_fixes(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("arch: [vgg8, resnet9]\nsgd_learning_rate: {low: 0.05, high: 0.1}\noptimizer: sgd\nbatch_norm: false\nwidth: 0.25\n")
    space, spec = SearchSpace.from_file(path)
    assert spec["arch"] == ["vgg8", "resnet9"]
    for c in sample(space, 20):
        assert c.arch in ("vgg8", "resnet9") and 0.05 <= c.learning_rate <= 0.1
        assert c.batch_norm is False and c.width == 0.25


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"learning_rte": 0.1}, "space: unknown name 'learning_rte'; allowed: the parameters"),
        ({"dropout": {"low": 0.4, "high": 0.1}}, r"space: dropout has an empty range, low=0.4 > high=0.1"),
        ({"arch": []}, "space: arch has an empty list of choices"),
        ({"arch": ["alexnet"]}, r"space: arch choices alexnet are not allowed; allowed: vgg8, "),
        ({"weight_decay": {"low": 0, "high": 0.1}}, "log-scaled and needs low > 0"),
        ({"epochs": -3}, "epochs=-3 is out of range"),
    ],
)
def test_bad_space_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_spec(spec)


def test_space_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"space file not found: .*nope.yaml \(built-in spaces: small\)$"):
        SearchSpace.from_file(tmp_path / "nope.yaml")  # not "['small']", a Python list
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"space file .*bad.json is not readable JSON \("):
        SearchSpace.from_file(bad)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_enqueue_as_exactly_themselves(name):
    study = optuna.create_study()
    preset = PRESETS[name].replace(epochs=12)
    study.enqueue_trial(params_for(preset), user_attrs={"preset_config": preset.to_dict()})
    trial = study.ask()
    assert SearchSpace.from_spec().suggest(trial, epochs=12) == preset


def test_params_for_inverts_suggest():
    space = SearchSpace.from_spec()
    for config in sample(space, 40, seed=3):
        study = optuna.create_study()
        study.enqueue_trial(params_for(config))
        assert space.suggest(study.ask(), epochs=30) == config


def test_readme_space_table_is_generated_from_the_code():
    text = README.read_text()
    start, end = "<!-- space-table:start -->\n", "\n<!-- space-table:end -->"
    assert text[text.index(start) + len(start) : text.index(end)] == space_table()


def test_named_space_small_is_usable_as_a_space_argument():
    space, spec = SearchSpace.from_file("small")
    assert spec["arch"] == ["vgg8", "resnet9", "resnet20"]
    assert {c.arch for c in sample(space, 30)} <= {"vgg8", "resnet9", "resnet20"}


def test_presets_project_to_the_nearest_values_a_space_allows():
    small, _ = SearchSpace.from_file("small")
    vgg8, note = small.project(PRESETS["vgg8-reference"], epochs=15)
    assert vgg8 == PRESETS["vgg8-reference"].replace(width=0.5, epochs=15), "width 1.0 -> 0.5, the rest (batch_norm too) kept"
    assert note == "width 1.0 -> 0.5"
    wrn, note = small.project(PRESETS["wrn-cutmix"], epochs=15)
    assert wrn is None and note.startswith("arch='wrn' is outside the space")
    narrow = SearchSpace.from_spec({"sgd_learning_rate": {"low": 0.01, "high": 0.2}, "batch_size": [32, 256],
                                    "mixing": "none", "batch_norm": True, "width": [0.25, 2.0]})  # fmt: skip
    davidnet, note = narrow.project(PRESETS["resnet9-davidnet"], epochs=4)
    assert (davidnet.learning_rate, davidnet.batch_size, davidnet.width) == (0.2, 256, 2.0) and davidnet.epochs == 4
    cutmix, note = narrow.project(PRESETS["wrn-cutmix"], epochs=4)
    assert (cutmix.cutmix_alpha, cutmix.mixup_alpha, cutmix.learning_rate) == (0.0, 0.0, 0.1), "mixing fixed to none"
    for name, preset in PRESETS.items():
        assert SearchSpace.from_spec().project(preset, epochs=7) == (preset.replace(epochs=7), "as is"), name
    # What a projection gives is what a trial enqueued with it trains.
    study = optuna.create_study()
    study.enqueue_trial(params_for(davidnet), user_attrs={"preset_config": davidnet.to_dict()})
    assert narrow.suggest(study.ask(), epochs=4) == davidnet
    mixed = SearchSpace.from_spec({"mixing": ["mixup", "both"]})
    assert mixed.project(PRESETS["wrn-cutmix"], epochs=4)[0] is None, "cutmix is not near mixup or both"


def test_the_space_samples_a_shape_field_only_for_the_archs_that_read_it():
    """The space's conditions on depth and widen_factor agree with ``models.names.SHAPE_FIELDS``
    (what ``kilotune run`` tells a user an arch ignores)."""
    from kilotune.models.names import ARCHITECTURES, SHAPE_FIELDS

    for field in ("depth", "widen_factor"):
        sampled = {arch for p in DEFAULT_SPACE.values() if field in p.fields for arch in ARCHITECTURES if p.when.holds({"arch": arch})}
        assert sampled == {arch for arch, read in SHAPE_FIELDS.items() if field in read}, field
