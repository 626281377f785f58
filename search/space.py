"""The search space: define-by-run from an Optuna trial to a TrainConfig, each parameter declared once.

A parameter (training/params.py) is its values, the TrainConfig fields it sets and the condition
under which it is sampled. The space is the declarations below (architecture first, then what
depends on it, then the optimisation), each augmentation's (training/augment/), and label
smoothing, in that order: the order a trial samples them. ``SearchSpace.suggest``, its inverse
``params_for``, a preset's projection and the README's table all read the same declarations.

Ranges come from the reference documents (seeds 000-003): DavidNet's SGD + Nesterov with
lr 0.1-0.4, weight decay 5e-4 and batch 512; WRN-16-k with CutMix; the hand-tuned VGG-8.
A ``--space`` file narrows any parameter or fixes any TrainConfig field, without code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kilotune.models.names import ACTIVATIONS, ARCHITECTURES, listing
from kilotune.search.attrs import PRESET_CONFIG
from kilotune.subset.files import read_json
from kilotune.training.augment import searched_params
from kilotune.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from kilotune.training.params import Choice, Condition, Number, Param, Trial


RESIDUAL = ("resnet9", "resnet18", "resnet20", "wrn")


class WarmupEpochs(Param):
    """``warmup_epochs``, at most one less than the trial's epochs (a 2-epoch trial warms up for 1 at most)."""

    def assign(self, value: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"warmup_epochs": min(value, config["epochs"] - 1)}


ARCHITECTURE = (
    Param("arch", Choice(ARCHITECTURES), exact=True),
    Param("width", Choice((0.5, 1.0, 2.0)), when=Condition("arch", not_in=("wrn",))),
    Param("resnet20_depth", Choice((20, 32, 44, 56)), fields=("depth",), when=Condition("arch", in_=("resnet20",))),
    Param("wrn_depth", Choice((10, 16, 22, 28)), fields=("depth",), when=Condition("arch", in_=("wrn",))),
    Param("wrn_widen_factor", Number(1, 10, integer=True), fields=("widen_factor",), when=Condition("arch", in_=("wrn",))),
    Param("squeeze_excite", Choice((False, True)), when=Condition("arch", in_=RESIDUAL, label="residual")),
    Param("activation", Choice(ACTIVATIONS)),
    Param("dropout", Number(0.0, 0.5)),
    Param("weight_decay", Number(1e-5, 1e-2, log=True)),
)
OPTIMISATION = (
    Param("optimizer", Choice(OPTIMIZERS)),
    Param("sgd_learning_rate", Number(1e-3, 1.0, log=True), fields=("learning_rate",), when=Condition("optimizer", in_=("sgd",))),
    Param("sgd_momentum", Number(0.8, 0.99), fields=("momentum",), when=Condition("optimizer", in_=("sgd",))),
    Param("adamw_learning_rate", Number(1e-4, 1e-2, log=True), fields=("learning_rate",), when=Condition("optimizer", in_=("adamw",))),
    Param("schedule", Choice(SCHEDULES)),
    WarmupEpochs("warmup_epochs", Number(0, 5, integer=True), when=Condition("schedule", in_=("constant", "cosine", "onecycle"))),
    Param("batch_size", Choice((32, 64, 128, 256))),
)
LABEL_SMOOTHING = Param("label_smoothing", Number(0.0, 0.2))

DEFAULT_SPACE: dict[str, Param] = {p.name: p for p in (*ARCHITECTURE, *OPTIMISATION, *searched_params(), LABEL_SMOOTHING)}
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
                params[name] = params[name].narrow(value)
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
        spec = read_json(path, "space file") if path.suffix == ".json" else _read_yaml(path)
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError(f"space file {path} must map names to choices, ranges or values")
        return cls.from_spec(spec), spec

    def suggest(self, trial: Trial, epochs: int) -> TrainConfig:
        """Define-by-run: each parameter in order, where its condition on those before it holds."""
        config: dict[str, Any] = {"epochs": epochs}
        sampled: dict[str, Any] = {}
        for param in self.params.values():
            if param.sampled(sampled):
                sampled[param.name] = value = param.suggest(trial)
                config.update(param.assign(value, config))
        # An enqueued preset may set fields the space does not search (e.g. batch_norm).
        config.update(trial.user_attrs.get(PRESET_CONFIG, {}), epochs=epochs)
        config.update(self.fixed)
        return TrainConfig.from_dict(config)

    def project(self, config: TrainConfig, epochs: int) -> tuple[TrainConfig | None, str]:
        """``config`` at ``epochs``, moved to the nearest values this space allows.

        Numbers are clipped into their ranges, numeric choices go to the closest allowed one, and
        a choice the space fixes to one value takes it; fixed TrainConfig fields apply.

        Returns:
            The projected config and a note of what moved; or None and why it cannot be
            projected (an architecture or a choice the space leaves out).
        """
        import optuna

        params = params_for(config.replace(epochs=epochs, warmup_epochs=min(config.warmup_epochs, epochs - 1)))
        projected, moved = {}, []
        for name, value in params.items():
            new = self.params[name].nearest(value)
            if new is None:
                return None, f"{name}={value!r} is outside the space ({self.params[name].domain.describe()})"
            if new != value:
                moved.append(f"{name} {value!r} -> {new!r}")
            projected[name] = new
        try:
            suggested = self.suggest(optuna.trial.FixedTrial(projected), epochs)
        except ValueError as e:  # e.g. another mixing needs an alpha the config has none of
            return None, f"does not fit the space: {e}"
        # The space's fields come from the projected params; the others (batch_norm...) stay.
        changes = {f: getattr(suggested, f) for name in projected for f in self.params[name].fields}
        return config.replace(**changes, **self.fixed, epochs=epochs), "; ".join(moved) or "as is"


def params_for(config: TrainConfig) -> dict[str, Any]:
    """The inverse of ``SearchSpace.suggest``: the parameters that give ``config``, each read where its condition holds."""
    params: dict[str, Any] = {}
    for param in DEFAULT_SPACE.values():
        if param.sampled(params):
            params[param.name] = param.read(config)
    return params


def space_table() -> str:
    """The default space as a markdown table; the README embeds it and a test keeps them equal."""
    return "\n".join(["| parameter | values | sampled when |", "| --- | --- | --- |", *(p.describe() for p in DEFAULT_SPACE.values())])


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"space file {path} is not valid: {' '.join(str(e).split())}") from None
