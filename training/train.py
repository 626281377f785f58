"""The training core: train one TrainConfig on in-memory arrays, reporting every epoch.

Read top to bottom: data -> model -> optimizer -> fit -> result. Knows nothing of Optuna;
a worker passes callbacks that report to a trial and raise to prune.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kilotune.models import build_model
from kilotune.subset.datasets import accuracy, channel_stats, normalize
from kilotune.training.augment import image_augmentation
from kilotune.training.batches import BatchMixer, MixedBatches
from kilotune.training.checkpoint import Checkpoint
from kilotune.training.config import ONECYCLE_WARMUP, TrainConfig
from kilotune.training.timing import BUILD, CALLBACKS, CHECKPOINT, PhaseClock, PhaseTimer


@dataclass(frozen=True)
class TrainData:
    """uint8 images (N, H, W, C) and int labels; validation may be empty."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_val) != len(self.y_val):
            raise ValueError(f"images and labels differ in length: {len(self.x_train)=}, {len(self.y_train)=}")
        if len(self.x_train) == 0:
            raise ValueError("no training images")


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float  # wall time of the epoch, validation included
    images_per_second: float  # training images / seconds
    learning_rate: float


EpochCallback = Callable[[EpochReport], None]


class TrainingInterrupted(Exception):
    """Raised between batches when the caller's stop event is set (e.g. on SIGTERM)."""


class _StopOnEvent(keras.callbacks.Callback):
    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Raise rather than set stop_training: Keras would end the epoch early and report it as whole.
        if self.stop.is_set():
            raise TrainingInterrupted("stop requested")


@dataclass
class TrainResult:
    status: str  # "complete" or "diverged"
    history: list[EpochReport]
    model: keras.Model
    params: int
    build_seconds: float  # building and compiling the model
    normalization: tuple[np.ndarray, np.ndarray] = field(repr=False)

    @property
    def val_accuracy(self) -> float:
        return self.history[-1].val_accuracy if self.history else float("nan")


def batches_per_epoch(config: TrainConfig, images: int) -> int:
    """Optimizer steps in an epoch of ``images`` training images, as ``train`` batches them (a batch
    larger than the images is cut to them)."""
    return -(-images // min(config.batch_size, images))


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule, per optimiser step, from Keras' own schedules."""
    lr, total = config.learning_rate, config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    schedules = keras.optimizers.schedules
    if config.schedule == "constant":
        if not warmup:
            return lr
        # alpha=1 keeps the rate flat after the warm-up.
        return schedules.CosineDecay(lr / 10, total - warmup, alpha=1.0, warmup_target=lr, warmup_steps=warmup)
    if config.schedule == "step":
        return schedules.PiecewiseConstantDecay([int(total * 0.5), int(total * 0.75)], [lr, lr / 10, lr / 100])
    if config.schedule == "cosine":
        if not warmup:
            return schedules.CosineDecay(lr, total)
        return schedules.CosineDecay(lr / 10, total - warmup, warmup_target=lr, warmup_steps=warmup)
    if config.schedule == "cosine_restarts":
        # Three cycles, each twice as long as the last (SGDR's t_mul=2): 1 + 2 + 4 = 7 parts.
        return schedules.CosineDecayRestarts(lr, max(1, total // 7), t_mul=2.0)
    # onecycle: warm up linearly, then anneal to ~0 (DavidNet's slanted triangle, cosine-shaped).
    warmup = warmup or max(1, int(ONECYCLE_WARMUP * total))
    return schedules.CosineDecay(lr / 25, max(1, total - warmup), warmup_target=lr, warmup_steps=warmup)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True)
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, beta_1=config.momentum)


def build_compiled_model(
    config: TrainConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    steps_per_epoch: int,
    normalization: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """The backbone with in-model augmentation in front, compiled with loss, optimiser and accuracy.

    ``normalization`` is the ``(mean, std)`` the inputs are normalised with; an augmentation
    policy needs it (``augment.policy_layers``).
    """
    backbone = build_model(
        config.arch,
        input_shape,
        num_classes,
        width=config.width,
        depth=config.depth,
        widen_factor=config.widen_factor,
        squeeze_excite=config.squeeze_excite,
        activation=config.activation,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
        # SGD takes weight decay as an L2 penalty on kernels; AdamW decouples it in the optimiser.
        weight_decay=config.weight_decay if config.optimizer == "sgd" else 0.0,
    )
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in image_augmentation(config, input_shape, normalization):
        x = layer(x)
    model = keras.Model(inputs, backbone(x), name=f"kilotune_{config.arch}")
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model


class _EpochReporter(keras.callbacks.Callback):
    """Turns Keras' epoch logs into EpochReports, calls the user's callbacks, spots divergence."""

    def __init__(self, n_train: int, callbacks: Sequence[EpochCallback], history: list[EpochReport], checkpoint: Checkpoint | None,
                 clock: PhaseClock) -> None:  # fmt: skip
        super().__init__()
        self.n_train, self.callbacks, self.history, self.checkpoint, self.clock = n_train, callbacks, history, checkpoint, clock
        self.diverged = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        logs = logs or {}
        if not all(math.isfinite(logs.get(k, 0.0)) for k in ("loss", "val_loss")):
            self.diverged = self.model.stop_training = True
            return
        report = EpochReport(
            epoch=epoch + 1,
            loss=float(logs["loss"]),
            accuracy=float(logs.get("accuracy", float("nan"))),
            val_loss=float(logs.get("val_loss", float("nan"))),
            val_accuracy=float(logs.get("val_accuracy", float("nan"))),
            seconds=seconds,
            images_per_second=self.n_train / seconds,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
        )
        self.history.append(report)
        # Checkpoint before callbacks: a callback may prune (raise), and the epoch is done either way.
        if self.checkpoint is not None:
            with self.clock.timed(CHECKPOINT):
                self.checkpoint.save(self.model, self.history)
        with self.clock.timed(CALLBACKS):
            for callback in self.callbacks:
                callback(report)


def train(
    config: TrainConfig,
    data: TrainData,
    callbacks: Sequence[EpochCallback] = (),
    *,
    checkpoint_dir: str | Path | None = None,
    stop: threading.Event | None = None,
    keras_callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    clock: PhaseClock | None = None,
) -> TrainResult:
    """Trains one configuration and returns its history and model.

    Args:
        config: What to train.
        data: uint8 images; normalisation statistics come from ``data.x_train`` only.
        callbacks: Called after every epoch with its EpochReport; one may raise to stop
            the run (a pruner does), and the exception propagates.
        checkpoint_dir: If given, the run saves there every epoch and, if a checkpoint is
            already there, resumes from it instead of starting over (an unreadable one is
            discarded with a warning: the run starts over).
        stop: If given and set, training raises TrainingInterrupted after the current
            batch; the last whole epoch is in the checkpoint.
        keras_callbacks: Extra Keras callbacks for what needs the model itself (snapshots).
        verbose: Keras' progress output (0 silent, 1 progress bar).
        clock: If given, charged with where the seconds go (``training.timing``), also when
            training raises: ``build`` from this call to the end of the run's first training
            step (seeding and normalising the data, building and compiling the model or
            loading its checkpoint, fit's set-up, and the first step's trace, compile and
            run), ``train`` the epochs' other steps (with Keras' bookkeeping between them),
            ``validation`` fit's validation passes (epoch 1's traces the eval step),
            ``checkpoint`` the checkpoint writes, and ``callbacks`` the time in ``callbacks``
            (the caller may charge parts of it to phases of its own). On return the clock
            runs the phase it ran on entry.

    Returns:
        A TrainResult; ``status`` is "diverged" if the loss became NaN or infinite.
    """
    clock = clock or PhaseClock()
    with clock.timed(BUILD):  # and back to the caller's phase on return or raise
        return _train(config, data, callbacks, checkpoint_dir, stop, keras_callbacks, verbose, clock)


def _train(
    config: TrainConfig,
    data: TrainData,
    callbacks: Sequence[EpochCallback],
    checkpoint_dir: str | Path | None,
    stop: threading.Event | None,
    keras_callbacks: Sequence[keras.callbacks.Callback],
    verbose: int,
    clock: PhaseClock,
) -> TrainResult:
    keras.utils.set_random_seed(config.seed)
    mean, std = channel_stats(data.x_train)
    x_train, x_val = normalize(data.x_train, mean, std), normalize(data.x_val, mean, std)
    y_train = keras.utils.to_categorical(data.y_train, data.num_classes)
    y_val = keras.utils.to_categorical(data.y_val, data.num_classes)
    batch_size = min(config.batch_size, len(x_train))
    steps_per_epoch = batches_per_epoch(config, len(x_train))

    checkpoint = Checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    history: list[EpochReport] = []
    started = time.perf_counter()
    resumed = checkpoint.load() if checkpoint is not None else None  # None too where it was unreadable
    if resumed is not None:
        model, done = resumed
        history.extend(EpochReport(**r) for r in done)
    else:
        model = build_compiled_model(config, data.x_train.shape[1:], data.num_classes, steps_per_epoch, (mean, std))
    build_seconds = time.perf_counter() - started

    reporter = _EpochReporter(len(x_train), callbacks, history, checkpoint, clock)
    mixer = BatchMixer(config)
    inputs = dict(x=MixedBatches(x_train, y_train, batch_size, mixer, config.seed)) if mixer else dict(x=x_train, y=y_train, batch_size=batch_size, shuffle=True)
    if len(history) < config.epochs:
        model.fit(
            **inputs,
            validation_data=(x_val, y_val) if len(x_val) else None,
            epochs=config.epochs,
            initial_epoch=len(history),
            callbacks=[PhaseTimer(clock), keras.callbacks.TerminateOnNaN(), reporter, *keras_callbacks] + ([_StopOnEvent(stop)] if stop else []),
            verbose=verbose,
        )
    diverged = reporter.diverged or (bool(history) and not math.isfinite(history[-1].loss))
    return TrainResult(
        status="diverged" if diverged else "complete",
        history=history,
        model=model,
        params=model.count_params(),
        build_seconds=build_seconds,
        normalization=(mean, std),
    )


def view_probabilities(result: TrainResult, x: np.ndarray, *, flip_tta: bool = False, batch_size: int = 500) -> list[np.ndarray]:
    """A trained model's softmax on uint8 images: ``[plain]``, or ``[plain, flipped]`` with ``flip_tta``."""
    xs = normalize(x, *result.normalization)
    views = [xs, xs[:, :, ::-1]] if flip_tta else [xs]
    # The model called batch by batch, not Model.predict: each trial's new model would retrace
    # predict's function and TensorFlow warns of it in every worker's log.
    return [np.concatenate([keras.ops.convert_to_numpy(keras.ops.softmax(result.model(v[i : i + batch_size], training=False), axis=-1))
                            for i in range(0, len(v), batch_size)]) for v in views]  # fmt: skip


def probabilities(result: TrainResult, x: np.ndarray, *, flip_tta: bool = False, batch_size: int = 500) -> np.ndarray:
    """A trained model's softmax on uint8 images, averaged with their flipped copies' with ``flip_tta``."""
    return np.mean(view_probabilities(result, x, flip_tta=flip_tta, batch_size=batch_size), axis=0)


def evaluate(result: TrainResult, x: np.ndarray, y: np.ndarray, *, flip_tta: bool = False, batch_size: int = 500) -> float:
    """Accuracy of a trained model on uint8 images, optionally averaging with flipped copies."""
    return accuracy(probabilities(result, x, flip_tta=flip_tta, batch_size=batch_size), y)
