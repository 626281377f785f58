"""A searchable parameter of TrainConfig, declared once: its values, the config fields it sets, and
when it is sampled (a ``Condition`` on the parameters sampled before it).

search/space.py collects the declarations (its own and each augmentation's, training/augment/)
into the search space. From each one come the define-by-run suggestion (``SearchSpace.suggest``),
its inverse on a whole config (``params_for``), a preset's projection and the README table's row,
so none of them can drift from another. Optuna is not imported here: ``suggest`` takes anything
with Optuna's ``suggest_*`` methods (an Optuna trial, KerasTuner's stand-in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kilotune.models.names import listing


class Trial(Protocol):
    """What a parameter asks of an Optuna trial."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple

    def suggest(self, trial: Trial, name: str) -> Any:
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
        return Choice(values)

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
class Number:
    """A number in ``[low, high]`` (``log``: sampled on a log scale; ``integer``: whole numbers)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Trial, name: str) -> Any:
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
        return Number(low, high, log, self.integer)

    def nearest(self, value: Any) -> Any:
        """``value`` clipped into the range."""
        return type(value)(min(max(value, self.low), self.high))

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{kind} [{self.low:g}, {self.high:g}]" + (", log" if self.log else "")


@dataclass(frozen=True)
class Condition:
    """When a parameter is sampled: the parameter ``param``, sampled before it, has one of the values
    ``in_`` (or none of ``not_in``). ``label`` names the values in the docs (``arch is residual``)."""

    param: str
    in_: tuple = ()
    not_in: tuple = ()
    label: str = ""

    def holds(self, params: Mapping[str, Any]) -> bool:
        """Whether it holds for the parameters sampled (or read from a config) so far."""
        value = params.get(self.param)
        return value in self.in_ if self.in_ else value not in self.not_in

    def describe(self) -> str:
        """As the README's space table says it: ``arch = wrn``, ``arch not wrn``, ``mixing in mixup, both``."""
        if self.label:
            return f"{self.param} is {self.label}"
        if self.not_in:
            return f"{self.param} not {', '.join(map(str, self.not_in))}"
        return f"{self.param} {'=' if len(self.in_) == 1 else 'in'} {', '.join(map(str, self.in_))}"


@dataclass(frozen=True)
class Param:
    """One searched parameter.

    Args:
        name: Its name in the study (an Optuna param) and in a ``--space`` file.
        domain: Its values.
        fields: The TrainConfig fields its value decides (default: the one named ``name``).
        when: When it is sampled; None: always.
        exact: A preset whose value the space leaves out is skipped rather than moved to the
            nearest allowed value (the architecture).
    """

    name: str
    domain: Choice | Number
    fields: tuple[str, ...] = ()
    when: Condition | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        if not self.fields:
            object.__setattr__(self, "fields", (self.name,))

    def sampled(self, params: Mapping[str, Any]) -> bool:
        """Whether it is sampled, given the parameters sampled so far."""
        return self.when is None or self.when.holds(params)

    def suggest(self, trial: Trial) -> Any:
        return self.domain.suggest(trial, self.name)

    def assign(self, value: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config fields ``value`` sets, given the config built so far (its ``epochs`` at least)."""
        return {self.fields[0]: value}

    def read(self, config: Any) -> Any:
        """The value that gives ``config`` (a TrainConfig): the inverse of ``assign``."""
        return getattr(config, self.fields[0])

    def narrow(self, spec: Any) -> Param:
        """This parameter with the values a ``--space`` file gives it."""
        return replace(self, domain=self.domain.narrow(self.name, spec))

    def nearest(self, value: Any) -> Any | None:
        """The allowed value closest to a preset's ``value``; None if there is none to speak of."""
        if self.exact:
            return value if value in getattr(self.domain, "choices", ()) else None
        return self.domain.nearest(value)

    def describe(self) -> str:
        """The README table's row: ``| `name` | values | sampled when |``."""
        return f"| `{self.name}` | {self.domain.describe()} | {self.when.describe() if self.when else 'always'} |"
