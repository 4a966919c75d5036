"""Search-space distributions, the default space, and their translation to Optuna distributions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from searchlab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
INITS = ("default", "kaiming", "xavier")


@dataclass(frozen=True)
class Float:
    """A float in [low, high]; ``log=True`` samples it log-uniformly (each decade gets an equal share)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class Int:
    """An integer in [low, high], both included; ``log=True`` samples it on a log scale."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class Choice:
    """One of a few values (numbers, strings, booleans)."""

    choices: tuple[Any, ...]

    def __init__(self, choices: Sequence[Any]) -> None:
        choices = tuple(choices)
        if not choices:
            raise ConfigError("Choice() needs at least one value, e.g. Choice([32, 64, 128])")
        if len(set(choices)) != len(choices):
            raise ConfigError(f"Choice({list(choices)}) repeats a value; list each value once")
        object.__setattr__(self, "choices", choices)


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched but still recorded with every trial."""

    value: Any


Distribution = Float | Int | Choice | Fixed


def _check_range(low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"range [{low}, {high}] must be finite")
    if low >= high:
        raise ConfigError(f"empty or inverted range [{low}, {high}]: low must be below high (use Fixed for one value)")
    if log and low <= 0:
        raise ConfigError(f"log-scale range [{low}, {high}] must start above 0")


DEFAULT_SPACE: dict[str, Distribution] = {
    "lr": Float(1e-4, 1e-1, log=True),
    "momentum": Float(0.85, 0.99),
    "dropout": Float(0.0, 0.5),
    "weight_decay": Float(1e-6, 1e-2, log=True),
    "batch_size": Choice([32, 64, 128]),
}


def default_space(**changes: Distribution | Any | None) -> dict[str, Distribution]:
    """The default space, with some entries narrowed, widened, fixed, dropped or added.

    ``default_space(lr=Float(1e-3, 1e-1, log=True), momentum=0.9, dropout=None, width=Int(16, 256))``
    narrows the learning rate, fixes momentum, drops dropout and adds a width. A plain value means Fixed.
    """
    space = dict(DEFAULT_SPACE)
    for name, value in changes.items():
        if value is None:
            space.pop(name, None)
        else:
            space[name] = as_distribution(value)
    return space


def as_distribution(value: Any) -> Distribution:
    """A distribution as given, or a plain value wrapped as Fixed."""
    if isinstance(value, Float | Int | Choice | Fixed):
        return value
    return Fixed(value)


def validate_space(space: Mapping[str, Any]) -> dict[str, Distribution]:
    """The space with plain values wrapped, after checking names and the built-in parameters' bounds."""
    checked: dict[str, Distribution] = {}
    for name, value in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"space key {name!r} must be a parameter name such as 'lr' or 'width'")
        checked[name] = as_distribution(value)
    _check_bounds(checked, "lr", low=0.0, low_open=True)
    _check_bounds(checked, "momentum", low=0.0, high=1.0)
    _check_bounds(checked, "dropout", low=0.0, high=1.0, high_open=True)
    _check_bounds(checked, "weight_decay", low=0.0)
    _check_bounds(checked, "batch_size", low=1.0, integer=True)
    for name, known in (("optimizer", OPTIMIZERS), ("init", INITS)):
        for value in _values(checked[name]) if name in checked else []:
            if value not in known:
                raise ConfigError(f"unknown {name} {value!r}: use one of {', '.join(known)}")
    return checked


def _values(dist: Distribution) -> list[Any]:
    if isinstance(dist, Fixed):
        return [dist.value]
    if isinstance(dist, Choice):
        return list(dist.choices)
    return [dist.low, dist.high]


def _check_bounds(
    space: dict[str, Distribution],
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    if name not in space:
        return
    for value in _values(space[name]):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        ok = ok and (not integer or float(value).is_integer())
        if not ok:
            lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{name}={value!r} is out of bounds: {name} must be {kind} in {lo}, {hi}")


def suggest(trial: Any, name: str, dist: Distribution) -> Any:
    """Sample one parameter through an Optuna trial (or return a Fixed value unchanged)."""
    if isinstance(dist, Fixed):
        return dist.value
    if isinstance(dist, Float):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, Int):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, list(dist.choices))
