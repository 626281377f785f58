import keras_tuner
import numpy as np
import optuna
import pytest

from kilotune.search.kerastuner import HyperParametersTrial, KilotuneHyperModel
from kilotune.search.space import SearchSpace
from kilotune.subset.datasets import channel_stats
from kilotune.training.config import TrainConfig


def hypermodel(space: SearchSpace, epochs: int = 10, n_train: int = 800, normalization=None) -> KilotuneHyperModel:
    return KilotuneHyperModel(space, epochs=epochs, input_shape=(32, 32, 1), num_classes=10, n_train=n_train,
                              normalization=normalization)


@pytest.mark.parametrize("spec", [None, {"arch": ["vgg8", "resnet20"], "width": [0.25, 1], "batch_size": 64}])
def test_same_parameter_values_give_the_same_config_as_optuna(spec):
    space = SearchSpace.from_spec(spec)
    model = hypermodel(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):  # enough to visit every branch of the default space
        trial = study.ask()
        expected = space.suggest(trial, epochs=10)
        study.tell(trial, 0.0)
        hp = keras_tuner.HyperParameters()
        model.declare_hyperparameters(hp)
        hp.values.update(trial.params)
        assert model.config(hp) == expected


def test_values_sampled_by_kerastuner_mean_the_same_config_to_optuna():
    # This direction catches KerasTuner's own conversions (e.g. Choice would store bools as 0/1).
    space = SearchSpace.from_spec()
    model = hypermodel(space)
    declared = keras_tuner.HyperParameters()
    model.declare_hyperparameters(declared)
    archs = set()
    for seed in range(60):
        hp = keras_tuner.HyperParameters()
        model.declare_hyperparameters(hp)
        hp.values.update({p.name: p.random_sample(seed * 100 + i) for i, p in enumerate(declared.space)})
        config = model.config(hp)
        assert config == space.suggest(optuna.trial.FixedTrial(dict(hp.values)), epochs=10)
        archs.add(config.arch)
    assert archs == set(space.params["arch"].domain.choices)


def test_every_parameter_is_declared_with_its_range():
    hp = keras_tuner.HyperParameters()
    hypermodel(SearchSpace.from_spec()).declare_hyperparameters(hp)
    declared = {p.name: p for p in hp.space}
    assert set(declared) == set(SearchSpace.from_spec().params)
    assert declared["weight_decay"].sampling == "log" and declared["weight_decay"].min_value == 1e-5
    assert declared["wrn_widen_factor"].max_value == 10 and declared["batch_size"].values == [32, 64, 128, 256]
    # Fixed and single-valued parameters are not searched, as with Optuna.
    hp = keras_tuner.HyperParameters()
    hypermodel(SearchSpace.from_spec({"arch": "vgg8", "optimizer": "sgd"})).declare_hyperparameters(hp)
    assert "arch" not in hp and "optimizer" not in hp and "adamw_learning_rate" in {p.name for p in hp.space}


def test_mixed_int_and_float_choices_become_floats():
    hp = keras_tuner.HyperParameters()
    assert HyperParametersTrial(hp).suggest_categorical("width", (0.5, 1)) == 0.5
    assert hp.space[0].values == [0.5, 1.0]
    assert HyperParametersTrial(hp).suggest_categorical("flip", (True, False)) is True  # not 1


@pytest.mark.slow
def test_random_search_runs_and_its_best_is_a_valid_config(tmp_path):
    spec = {"arch": "vgg8", "width": 0.125, "batch_size": 32, "mixing": ["none", "mixup"]}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 32, 32, 1), dtype=np.uint8)
    # The space's augmentation policies build with the training images' statistics, as the bench passes them.
    model = hypermodel(SearchSpace.from_spec(spec), epochs=1, n_train=64, normalization=channel_stats(x[:64]))
    y = np.arange(96) % 10
    tuner = keras_tuner.RandomSearch(
        model, objective="val_accuracy", max_trials=2, seed=0, directory=tmp_path, project_name="t", overwrite=True
    )
    tuner.search(x[:64], y[:64], validation_data=(x[64:], y[64:]))
    assert len(tuner.oracle.trials) == 2
    assert all(t.score is not None for t in tuner.oracle.trials.values()), "a trial failed to build or train"
    best = model.config(tuner.get_best_hyperparameters()[0])
    assert isinstance(best, TrainConfig) and best.arch == "vgg8" and best.width == 0.125 and best.epochs == 1
    assert 0.0 <= tuner.oracle.get_best_trials()[0].score <= 1.0
