"""The Trial a model builder sees: sampled and fixed values, plus ``suggest_*`` for model-specific knobs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class Trial:
    """One trial's view of the search: ``params`` holds every value sampled or fixed so far.

    Wraps an Optuna trial (or ``optuna.trial.FixedTrial`` when replaying) so that extra knobs a builder
    suggests (width, depth, activation) are sampled by the same sampler and recorded with the rest. A knob that is
    ``inherited`` (the params of the weights a study starts from) is not sampled: the builder gets the source's
    value, so that the layers it sizes fit the weights.
    """

    def __init__(
        self, optuna_trial: Any, params: dict[str, Any], seed: int, inherited: Mapping[str, Any] | None = None
    ) -> None:
        self._trial = optuna_trial
        self.params = params
        self.seed = seed
        self.inherited = dict(inherited or {})

    @property
    def number(self) -> int:
        return int(self._trial.number)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._suggest(name, lambda: self._trial.suggest_float(name, low, high, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._suggest(name, lambda: self._trial.suggest_int(name, low, high, log=log))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest(name, lambda: self._trial.suggest_categorical(name, list(choices)))

    def _suggest(self, name: str, sample: Callable[[], Any]) -> Any:
        value = self.inherited[name] if name in self.inherited else sample()
        self.params[name] = value
        return value
