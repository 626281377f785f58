"""TrainConfig: every tunable of one training run, in one typed, validated object.

search/ produces it from an Optuna trial, workers/ train it, export writes it as JSON.
Defaults are a DavidNet-style ResNet-9 recipe scaled to the 1000-image problem
(seed 003: SGD + Nesterov, one-cycle, flip + pad-crop + cutout, label smoothing).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kilotune.models.names import ACTIVATIONS, ARCHITECTURES, listing
from kilotune.subset.files import read_json

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "cosine_restarts", "onecycle")
POLICIES = ("none", "randaugment", "augmix")
ONECYCLE_WARMUP = 0.3  # the share of training a one-cycle schedule warms up for, unless warmup_epochs says


@dataclass(frozen=True)
class RetrainOptions:
    """``kilotune retrain``'s and ``kilotune.retrain``'s defaults, declared here only."""

    seeds: int = 1  # runs with seeds config.seed, config.seed + 1, ...
    snapshots: int = 0  # also report a snapshot ensemble of this many epochs near the end; 0: off
    # Under a total of epochs, an ensemble member trains at least this long, or fewer members train:
    # on held-out images 3 seeds of 18 epochs lost to one model of 54 (bench/final_shape.py).
    min_member_epochs: int = 54


def take_home_epochs(trial_epochs: int) -> int:
    """The final training ``kilotune run`` and ``export`` suggest for a winner trained ``trial_epochs``
    a trial: longer than a trial is the lever that paid most (docs/benchmarks.md, sections 10 and
    14), at least ``min_member_epochs``, the shortest that measured well."""
    return max(RetrainOptions.min_member_epochs, trial_epochs)


@dataclass(frozen=True)
class TrainConfig:
    """One configuration. Build with ``TrainConfig(**kw)`` or ``TrainConfig.from_dict``.

    Every field is validated on construction; a bad value raises ``ValueError`` naming
    the field and what is allowed.
    """

    # --- model ---
    arch: str = "resnet9"  # one of ARCHITECTURES
    width: float = 1.0  # channel multiplier applied to every conv layer
    depth: int = 20  # resnet20: 6n+2 (20, 32, 44...); wrn: 6n+4 (16, 22, 28...); others ignore it
    widen_factor: int = 4  # WideResNet k
    squeeze_excite: bool = False  # SE blocks in residual units (resnet*/wrn)
    activation: str = "relu"  # one of ACTIVATIONS
    batch_norm: bool = True
    dropout: float = 0.0  # before the classifier (and inside WRN blocks)
    weight_decay: float = 5e-4  # L2 on kernels for SGD; decoupled decay for AdamW
    # --- optimisation ---
    optimizer: str = "sgd"  # "sgd" is SGD with Nesterov momentum
    learning_rate: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum; AdamW beta_1
    schedule: str = "onecycle"  # one of SCHEDULES
    warmup_epochs: int = 0  # linear warm-up (constant/cosine); onecycle: 0 means ONECYCLE_WARMUP of the epochs
    batch_size: int = 128
    epochs: int = 40
    # --- augmentation and regularisation ---
    flip: bool = True  # random horizontal flip
    crop_padding: int = 4  # pad-and-random-crop by up to this many pixels; 0 disables
    cutout: int = 8  # side of the erased square in pixels; 0 disables
    policy: str = "none"  # an augmentation policy of Keras' after flip and crop: one of POLICIES
    randaugment_ops: int = 2  # RandAugment: operations drawn per image
    randaugment_magnitude: float = 0.5  # RandAugment: their strength, Keras' factor in (0, 1]
    random_erasing: float = 0.0  # RandomErasing: the chance an image has a random rectangle erased; 0 disables
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) MixUp; 0 disables
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) CutMix; 0 disables
    label_smoothing: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHITECTURES)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _range("width", self.width, 0.125, 8.0)
        _range("widen_factor", self.widen_factor, 1, 16)
        _range("dropout", self.dropout, 0.0, 0.9)
        _range("weight_decay", self.weight_decay, 0.0, 0.1)
        _range("learning_rate", self.learning_rate, 1e-6, 10.0)
        _range("momentum", self.momentum, 0.0, 0.999)
        _range("batch_size", self.batch_size, 1, 8192)
        _range("epochs", self.epochs, 1, 10_000)
        _range("warmup_epochs", self.warmup_epochs, 0, self.epochs - 1)
        _range("crop_padding", self.crop_padding, 0, 16)
        _range("cutout", self.cutout, 0, 32)
        _range("mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        _choice("policy", self.policy, POLICIES)
        _range("randaugment_ops", self.randaugment_ops, 1, 10)
        _range("randaugment_magnitude", self.randaugment_magnitude, 0.01, 1.0)
        _range("random_erasing", self.random_erasing, 0.0, 1.0)
        _range("cutmix_alpha", self.cutmix_alpha, 0.0, 10.0)
        _range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _range("seed", self.seed, 0, 2**31 - 1)
        if self.arch == "resnet20" and (self.depth - 2) % 6:
            raise ValueError(f"resnet20 needs depth = 6n+2 (20, 32, 44, ...), got {self.depth=}")
        if self.arch == "wrn" and (self.depth - 4) % 6:
            raise ValueError(f"wrn needs depth = 6n+4 (16, 22, 28, ...), got {self.depth=}")
        _range("depth", self.depth, 8, 110)
        if self.warmup_epochs and self.schedule in ("step", "cosine_restarts"):
            raise ValueError(
                f"warmup_epochs applies to constant, cosine and onecycle, not {self.schedule=}"
            )

    @property
    def peak_epoch(self) -> int:
        """The epoch at whose end the learning rate has warmed up to its peak (0: it starts there)."""
        if self.schedule == "onecycle":
            return self.warmup_epochs or math.ceil(ONECYCLE_WARMUP * self.epochs)
        return self.warmup_epochs if self.schedule in ("constant", "cosine") else 0

    # --- serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Builds a config from a dict, refusing keys it does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {listing(unknown, 'and')}; allowed: {listing(sorted(known))}")
        typed = {}
        for f in fields(cls):
            if f.name in data:
                typed[f.name] = _coerce(f.name, data[f.name], type(getattr(cls(), f.name)))
        return cls(**typed)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Reads a config file; a file with a ``config`` key (an export) is read from there."""
        data = read_json(path, "config file")
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data.get("config", data))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {listing(allowed)}")


def _range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number in [{low}, {high}]")
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range; allowed [{low}, {high}]")


def _coerce(name: str, value: Any, kind: type) -> Any:
    """JSON gives ints for floats and may give strings; accept what is unambiguous."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}={value!r} must be true or false")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}={value!r} must be a number")
        if kind is int:
            if float(value) != int(value):
                raise ValueError(f"{name}={value!r} must be a whole number")
            return int(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} must be a string")
    return value
