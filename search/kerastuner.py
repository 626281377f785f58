"""kilotune's search space as a KerasTuner HyperModel, for KerasTuner's Hyperband and RandomSearch.

The space is not copied: ``SearchSpace.suggest`` runs unchanged on a small stand-in for an
Optuna trial that turns each ``suggest_*`` call into the matching ``keras_tuner`` hyperparameter.

    hypermodel = KilotuneHyperModel(SearchSpace.from_spec(spec), epochs=12, input_shape=(32, 32, 1),
                                    num_classes=10, n_train=len(data.x_train), normalization=channel_stats(data.x_train))
    tuner = keras_tuner.Hyperband(hypermodel, objective="val_accuracy", max_epochs=12, directory=d)
    tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val))
    config = hypermodel.config(tuner.get_best_hyperparameters()[0])

``fit`` takes what ``training.train.TrainData`` holds (uint8 images, int labels) and prepares
them as ``training.train.train`` does, so a configuration trains the same way under either tuner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

try:
    import keras_tuner
except ImportError as e:  # an extra: only the benches and tests compare against KerasTuner
    raise ImportError(f"the KerasTuner adapter needs keras-tuner: pip install 'kilotune[kerastuner]' ({e})") from e

from kilotune.search.space import SearchSpace
from kilotune.subset.datasets import channel_stats, normalize
from kilotune.training.batches import BatchMixer, MixedBatches
from kilotune.training.config import TrainConfig
from kilotune.training.train import build_compiled_model


class HyperParametersTrial:
    """The part of ``optuna.Trial`` that ``SearchSpace.suggest`` calls, backed by KerasTuner."""

    def __init__(self, hp: keras_tuner.HyperParameters) -> None:
        self.hp = hp
        self.user_attrs: dict[str, Any] = {}  # KerasTuner has no enqueued presets

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        values = list(choices)
        # Choice stores bools as ints (0/1), which TrainConfig refuses; Boolean keeps them bools.
        if all(isinstance(v, bool) for v in values):
            return self.hp.Boolean(name, default=values[0])
        # KerasTuner refuses mixed types; a space file may narrow width to [0.5, 1].
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if any(isinstance(v, float) for v in values):
                values = [float(v) for v in values]
        return self.hp.Choice(name, values)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.hp.Float(name, low, high, sampling="log" if log else "linear")

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self.hp.Int(name, low, high, sampling="log" if log else "linear")


class KilotuneHyperModel(keras_tuner.HyperModel):
    """Builds and trains one kilotune configuration per KerasTuner trial.

    Args:
        space: The (narrowed) search space.
        epochs: Epochs per trial; the learning-rate schedule spans them (Hyperband's ``max_epochs``).
        input_shape: Image shape, e.g. ``(32, 32, 1)``.
        num_classes: Number of classes.
        n_train: Training images per epoch, for the schedule's steps per epoch.
        normalization: ``channel_stats`` of the training images ``fit`` gets (an augmentation
            policy in the model needs them; ``fit`` normalises with the same).
    """

    def __init__(self, space: SearchSpace, *, epochs: int, input_shape: tuple[int, int, int], num_classes: int, n_train: int,
                 normalization: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(name="kilotune")
        self.space, self.epochs, self.normalization = space, epochs, normalization
        self.input_shape, self.num_classes, self.n_train = tuple(input_shape), num_classes, n_train

    def config(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        """The TrainConfig that ``hp``'s values stand for (what ``SearchSpace.suggest`` gives)."""
        return self.space.suggest(HyperParametersTrial(hp), self.epochs)

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        # Declare every parameter up front, conditional ones included: KerasTuner gives a parameter
        # first met inside a branch its default (the minimum), not a sample, for that trial.
        trial = HyperParametersTrial(hp)
        for param in self.space.params.values():
            param.suggest(trial)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = self.config(hp)
        keras.utils.set_random_seed(config.seed)  # as training.train.train does
        steps = math.ceil(self.n_train / min(config.batch_size, self.n_train))
        return build_compiled_model(config, self.input_shape, self.num_classes, steps, self.normalization)

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: keras.Model,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> keras.callbacks.History:
        """Trains on uint8 images ``x`` and int labels ``y`` with the config's batch size and mixing.

        KerasTuner's ``epochs``, ``initial_epoch`` and ``callbacks`` pass through in ``kwargs``.
        """
        config = self.config(hp)
        mean, std = channel_stats(x)  # from the training images only, as training.train does
        x, y = normalize(x, mean, std), keras.utils.to_categorical(y, self.num_classes)
        if validation_data is not None:
            x_val, y_val = validation_data
            validation_data = (normalize(x_val, mean, std), keras.utils.to_categorical(y_val, self.num_classes))
        kwargs.setdefault("epochs", self.epochs)
        kwargs.setdefault("verbose", 0)
        batch_size = min(config.batch_size, len(x))
        mixer = BatchMixer(config)
        if mixer:
            return model.fit(MixedBatches(x, y, batch_size, mixer, config.seed), validation_data=validation_data, **kwargs)
        return model.fit(x, y, batch_size=batch_size, shuffle=True, validation_data=validation_data, **kwargs)
