"""The search space: one define-by-run function from an Optuna trial to a TrainConfig.

Ranges come from the reference documents (seeds 000-003): DavidNet's SGD + Nesterov with
lr 0.1-0.4, weight decay 5e-4 and batch 512; WRN-16-k with CutMix; the hand-tuned VGG-8.
A ``--space`` file narrows any parameter or fixes any TrainConfig field, without code.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import optuna
import yaml

from kilotune.search.attrs import PRESET_CONFIG
from kilotune.models.names import ACTIVATIONS, ARCHITECTURES, listing
from kilotune.training.config import OPTIMIZERS, SCHEDULES, TrainConfig


class Param(ABC):
    """One searchable parameter: how to suggest it, and how a space file may narrow it."""

    when: str = ""  # the condition under which it is sampled, for the docs; the code below is the truth

    @abstractmethod
    def suggest(self, trial: optuna.Trial, name: str) -> Any: ...

    @abstractmethod
    def narrow(self, name: str, spec: Any) -> Param: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def nearest(self, value: Any) -> Any | None:
        """The allowed value closest to ``value``; None if there is none to speak of."""


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple
    when: str = ""

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.choices[0] if len(self.choices) == 1 else trial.suggest_categorical(name, self.choices)

    def narrow(self, name: str, spec: Any) -> Choice:
        values = tuple(spec) if isinstance(spec, list) else (spec,)
        if not values:
            raise ValueError(f"space: {name} has an empty list of choices; allowed: {listing(self.choices)}")
        # Numeric choices (width, batch size...) may be narrowed to other numbers; TrainConfig checks them.
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)
        wrong = [v for v in values if v not in self.choices and not (numeric and isinstance(v, (int, float)))]
        if wrong:
            raise ValueError(f"space: {name} choices {listing(wrong, 'and')} are not allowed; allowed: {listing(self.choices)}")
        return Choice(values, self.when)

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)

    def nearest(self, value: Any) -> Any | None:
        """``value`` if allowed; else the closest number (by ratio: widths, batch sizes), or the one
        value a space fixes; None if neither (another architecture, an unlisted choice)."""
        if value in self.choices:
            return value
        numbers = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return min(numbers, key=lambda c: abs(math.log(c / value)) if c > 0 else math.inf)
        return self.choices[0] if len(self.choices) == 1 else None


@dataclass(frozen=True)
class Number(Param):
    low: float
    high: float
    log: bool = False
    integer: bool = False
    when: str = ""

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.low == self.high:
            return self.low
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def narrow(self, name: str, spec: Any) -> Number:
        if isinstance(spec, dict):
            extra = set(spec) - {"low", "high", "log"}
            if extra:
                raise ValueError(f"space: {name} takes low, high and log, not {listing(sorted(extra))}")
            low, high, log = spec.get("low", self.low), spec.get("high", self.high), spec.get("log", self.log)
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            low = high = spec
            log = self.log
        else:
            raise ValueError(f"space: {name} takes a number or {{low, high}}, got {spec!r}")
        if not low <= high:
            raise ValueError(f"space: {name} has an empty range, {low=} > {high=}")
        if log and low <= 0:
            raise ValueError(f"space: {name} is log-scaled and needs low > 0, got {low=}")
        if self.integer and (int(low) != low or int(high) != high):
            raise ValueError(f"space: {name} takes whole numbers, got {low=}, {high=}")
        return Number(low, high, log, self.integer, self.when)

    def nearest(self, value: Any) -> Any:
        """``value`` clipped into the range."""
        return type(value)(min(max(value, self.low), self.high))

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{kind} [{self.low:g}, {self.high:g}]" + (", log" if self.log else "")


RESIDUAL = ("resnet9", "resnet18", "resnet20", "wrn")

DEFAULT_SPACE: dict[str, Param] = {
    "arch": Choice(ARCHITECTURES),
    "width": Choice((0.5, 1.0, 2.0), when="arch not wrn"),
    "resnet20_depth": Choice((20, 32, 44, 56), when="arch = resnet20"),
    "wrn_depth": Choice((10, 16, 22, 28), when="arch = wrn"),
    "wrn_widen_factor": Number(1, 10, integer=True, when="arch = wrn"),
    "squeeze_excite": Choice((False, True), when="arch is residual"),
    "activation": Choice(ACTIVATIONS),
    "dropout": Number(0.0, 0.5),
    "weight_decay": Number(1e-5, 1e-2, log=True),
    "optimizer": Choice(OPTIMIZERS),
    "sgd_learning_rate": Number(1e-3, 1.0, log=True, when="optimizer = sgd"),
    "sgd_momentum": Number(0.8, 0.99, when="optimizer = sgd"),
    "adamw_learning_rate": Number(1e-4, 1e-2, log=True, when="optimizer = adamw"),
    "schedule": Choice(SCHEDULES),
    "warmup_epochs": Number(0, 5, integer=True, when="schedule in constant, cosine, onecycle"),
    "batch_size": Choice((32, 64, 128, 256)),
    "flip": Choice((True, False)),
    "crop_padding": Choice((0, 2, 4)),
    "cutout": Choice((0, 4, 8, 12, 16)),
    "mixing": Choice(("none", "mixup", "cutmix", "both")),
    "mixup_alpha": Number(0.1, 1.0, when="mixing in mixup, both"),
    "cutmix_alpha": Number(0.25, 1.0, when="mixing in cutmix, both"),
    "label_smoothing": Number(0.0, 0.2),
}

CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}

# Built-in restrictions, usable as ``--space NAME`` instead of a file.
NAMED_SPACES: dict[str, dict[str, Any]] = {
    # Small models: 4-10 s an epoch over 1000 images on 2 CPU cores (docs/bench-train-speed.md, width 0.5).
    "small": {"arch": ["vgg8", "resnet9", "resnet20"], "width": [0.25, 0.5], "resnet20_depth": 20, "batch_size": [32, 64, 128]},
}


@dataclass(frozen=True)
class SearchSpace:
    """The parameters to search, plus TrainConfig fields fixed outright."""

    params: dict[str, Param]
    fixed: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None = None) -> SearchSpace:
        """Narrows the default space. Keys are parameter names (README table) or TrainConfig fields.

        Raises:
            ValueError: on an unknown name, an empty range, or a value outside the allowed set.
        """
        params, fixed = dict(DEFAULT_SPACE), {}
        for name, value in (spec or {}).items():
            if name in params:
                params[name] = params[name].narrow(name, value)
            elif name in CONFIG_FIELDS:
                fixed[name] = value
            else:
                raise ValueError(
                    f"space: unknown name {name!r}; allowed: the parameters {listing(sorted(DEFAULT_SPACE), 'and')}, "
                    f"or the TrainConfig fields {listing(sorted(CONFIG_FIELDS - set(DEFAULT_SPACE)), 'and')}"
                )
        TrainConfig.from_dict(fixed)  # a fixed value out of range fails now, not in every trial
        return cls(params, fixed)

    @classmethod
    def from_file(cls, path: str | Path) -> tuple[SearchSpace, dict[str, Any]]:
        """Reads a YAML or JSON space file (or a NAMED_SPACES name); returns the space and the raw spec."""
        if str(path) in NAMED_SPACES:
            spec = NAMED_SPACES[str(path)]
            return cls.from_spec(spec), dict(spec)
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"space file not found: {path} (built-in spaces: {listing(sorted(NAMED_SPACES))})")
        try:
            spec = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"space file {path} is not valid: {' '.join(str(e).split())}") from None
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError(f"space file {path} must map names to choices, ranges or values")
        return cls.from_spec(spec), spec

    def suggest(self, trial: optuna.Trial, epochs: int) -> TrainConfig:
        """Define-by-run: architecture first, then what depends on it, then the rest."""

        def p(name: str) -> Any:
            return self.params[name].suggest(trial, name)

        c: dict[str, Any] = {"arch": p("arch"), "epochs": epochs}
        if c["arch"] == "wrn":
            c.update(depth=p("wrn_depth"), widen_factor=p("wrn_widen_factor"))
        else:
            c["width"] = p("width")
        if c["arch"] == "resnet20":
            c["depth"] = p("resnet20_depth")
        if c["arch"] in RESIDUAL:
            c["squeeze_excite"] = p("squeeze_excite")
        c.update(activation=p("activation"), dropout=p("dropout"), weight_decay=p("weight_decay"))
        c["optimizer"] = p("optimizer")
        if c["optimizer"] == "sgd":
            c.update(learning_rate=p("sgd_learning_rate"), momentum=p("sgd_momentum"))
        else:
            c["learning_rate"] = p("adamw_learning_rate")
        c["schedule"] = p("schedule")
        if c["schedule"] in ("constant", "cosine", "onecycle"):
            c["warmup_epochs"] = min(p("warmup_epochs"), epochs - 1)
        c.update(batch_size=p("batch_size"), flip=p("flip"), crop_padding=p("crop_padding"), cutout=p("cutout"))
        mixing = p("mixing")
        c["mixup_alpha"] = p("mixup_alpha") if mixing in ("mixup", "both") else 0.0
        c["cutmix_alpha"] = p("cutmix_alpha") if mixing in ("cutmix", "both") else 0.0
        c["label_smoothing"] = p("label_smoothing")
        # An enqueued preset may set fields the space does not search (e.g. batch_norm).
        c.update(trial.user_attrs.get(PRESET_CONFIG, {}), epochs=epochs)
        c.update(self.fixed)
        return TrainConfig.from_dict(c)


    def project(self, config: TrainConfig, epochs: int) -> tuple[TrainConfig | None, str]:
        """``config`` at ``epochs``, moved to the nearest values this space allows.

        Numbers are clipped into their ranges, numeric choices go to the closest allowed one, and
        a choice the space fixes to one value takes it; fixed TrainConfig fields apply.

        Returns:
            The projected config and a note of what moved; or None and why it cannot be
            projected (an architecture or a choice the space leaves out).
        """
        params = params_for(config.replace(epochs=epochs, warmup_epochs=min(config.warmup_epochs, epochs - 1)))
        projected, moved = {}, []
        for name, value in params.items():
            new = self.params[name].nearest(value) if name != "arch" else (value if value in self.params[name].choices else None)
            if new is None:
                return None, f"{name}={value!r} is outside the space ({self.params[name].describe()})"
            if new != value:
                moved.append(f"{name} {value!r} -> {new!r}")
            projected[name] = new
        try:
            suggested = self.suggest(optuna.trial.FixedTrial(projected), epochs)
        except ValueError as e:  # e.g. another mixing needs an alpha the config has none of
            return None, f"does not fit the space: {e}"
        # The space's fields come from the projected params; the others (batch_norm...) stay.
        changes = {f: getattr(suggested, f) for name in projected for f in PARAM_FIELDS.get(name, (name,))}
        return config.replace(**changes, **self.fixed, epochs=epochs), "; ".join(moved) or "as is"


# The TrainConfig fields each parameter sets, where they are not the parameter's own name.
PARAM_FIELDS = {
    "resnet20_depth": ("depth",), "wrn_depth": ("depth",), "wrn_widen_factor": ("widen_factor",),
    "sgd_learning_rate": ("learning_rate",), "adamw_learning_rate": ("learning_rate",), "sgd_momentum": ("momentum",),
    "mixing": ("mixup_alpha", "cutmix_alpha"),
}  # fmt: skip


def params_for(config: TrainConfig) -> dict[str, Any]:
    """The inverse of ``SearchSpace.suggest``: the parameters that give ``config``."""
    p: dict[str, Any] = {"arch": config.arch}
    if config.arch == "wrn":
        p.update(wrn_depth=config.depth, wrn_widen_factor=config.widen_factor)
    else:
        p["width"] = config.width
    if config.arch == "resnet20":
        p["resnet20_depth"] = config.depth
    if config.arch in RESIDUAL:
        p["squeeze_excite"] = config.squeeze_excite
    p.update(activation=config.activation, dropout=config.dropout, weight_decay=config.weight_decay)
    p["optimizer"] = config.optimizer
    if config.optimizer == "sgd":
        p.update(sgd_learning_rate=config.learning_rate, sgd_momentum=config.momentum)
    else:
        p["adamw_learning_rate"] = config.learning_rate
    p["schedule"] = config.schedule
    if config.schedule in ("constant", "cosine", "onecycle"):
        p["warmup_epochs"] = config.warmup_epochs
    p.update(batch_size=config.batch_size, flip=config.flip, crop_padding=config.crop_padding, cutout=config.cutout)
    mixup, cutmix = config.mixup_alpha > 0, config.cutmix_alpha > 0
    p["mixing"] = {(False, False): "none", (True, False): "mixup", (False, True): "cutmix", (True, True): "both"}[mixup, cutmix]
    if mixup:
        p["mixup_alpha"] = config.mixup_alpha
    if cutmix:
        p["cutmix_alpha"] = config.cutmix_alpha
    p["label_smoothing"] = config.label_smoothing
    return p


# Known good starting points, enqueued with ``kilotune study enqueue --preset NAME``.
PRESETS: dict[str, TrainConfig] = {
    # Seed 000's hand-tuned VGG-8 (48.1% on 1000 CIFAR-10 images): SGD, flip and shift
    # augmentation, dropout and L2, and no batch norm (its "future plans" list adding it).
    "vgg8-reference": TrainConfig(
        arch="vgg8", batch_norm=False, dropout=0.5, weight_decay=5e-4, optimizer="sgd", learning_rate=0.01,
        momentum=0.9, schedule="constant", batch_size=32, flip=True, crop_padding=4, cutout=0, label_smoothing=0.0,
    ),
    # Seed 003's DavidNet: ResNet-9, SGD + Nesterov, slanted one-cycle with 5 of 24 epochs of
    # warm-up, weight decay 5e-4, flip + pad-crop + 8x8 cutout, label smoothing 0.2.
    "resnet9-davidnet": TrainConfig(
        arch="resnet9", weight_decay=5e-4, optimizer="sgd", learning_rate=0.4, momentum=0.9, schedule="onecycle",
        batch_size=128, flip=True, crop_padding=4, cutout=8, label_smoothing=0.2,
    ),
    # Seed 002's WideResNet with CutMix and cosine warm restarts.
    "wrn-cutmix": TrainConfig(
        arch="wrn", depth=16, widen_factor=4, dropout=0.3, weight_decay=5e-4, optimizer="sgd", learning_rate=0.1,
        momentum=0.9, schedule="cosine_restarts", batch_size=64, cutout=0, cutmix_alpha=1.0, label_smoothing=0.0,
    ),
}


def space_table() -> str:
    """The default space as a markdown table; the README embeds it and a test keeps them equal."""
    rows = ["| parameter | values | sampled when |", "| --- | --- | --- |"]
    for name, param in DEFAULT_SPACE.items():
        rows.append(f"| `{name}` | {param.describe()} | {param.when or 'always'} |")
    return "\n".join(rows)
