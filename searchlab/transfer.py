"""Initialisation and transfer learning: init schemes, a starting state_dict, frozen layers.

A study may start every trial from weights (``Start``; ``weights.resolve_start`` fetches them). Parameters whose
names and shapes match are loaded (a new head keeps its fresh initialisation); layers named in ``freeze`` stop
learning and leave the optimizer, and must be among those loaded: a frozen layer left at its random initialisation
is a silent bug (a width sampled anew, a renamed layer), so it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from searchlab.tasks import ModelError


def initialise(model: nn.Module, scheme: str) -> None:
    """Kaiming (for ReLU networks) or Xavier (for tanh/sigmoid) weights and zero biases; "default" keeps
    PyTorch's own initialisation."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class Start:
    """Weights to start from, and the source's model params (e.g. its width) for the builder to reuse."""

    source: str
    state_dict: Mapping[str, torch.Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)


def fitting(model: nn.Module, start: Start) -> list[str]:
    """The names of the model's tensors that ``start`` has, with the same shape."""
    own = model.state_dict()
    return sorted(k for k, v in start.state_dict.items() if k in own and own[k].shape == v.shape)


def load_start(model: nn.Module, start: Start) -> list[str]:
    """Copy the parameters whose names and shapes match; returns their names (a ModelError when none match)."""
    matching = {name: start.state_dict[name] for name in fitting(model, start)}
    if not matching:
        raise ModelError(
            f"none of the weights in {start.source} fit this model: build the same layers "
            "(names and shapes) as the model they come from"
        )
    model.load_state_dict(matching, strict=False)
    return sorted(matching)


def freeze(model: nn.Module, prefixes: Sequence[str], start: Start | None = None) -> list[str]:
    """Turn off requires_grad for parameters whose names start with one of ``prefixes``; returns their names.
    Refused (ModelError) where such a parameter is not one that ``start`` fits."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ModelError(f"freeze={prefix!r} names no parameter of the model (it has {', '.join(names[:6])}…)")
    frozen = [name for name in names if any(name.startswith(prefix) for prefix in prefixes)]
    if start is not None:
        _refuse_unloaded(model, start, tuple(prefixes), frozen)
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen


class FrozenNotLoaded(ModelError):
    """A frozen layer the starting weights do not fit. Refused before a run writes anything when the preflight's
    model meets it; met by a trial (its params sized the layer otherwise), it fails that trial only."""


def _refuse_unloaded(model: nn.Module, start: Start, prefixes: tuple[str, ...], frozen: list[str]) -> None:
    loaded = set(fitting(model, start))
    fresh = [name for name in frozen if name not in loaded]
    if not fresh:
        return
    first, own = fresh[0], model.state_dict()[fresh[0]]
    there = f"is {tuple(start.state_dict[first].shape)} there" if first in start.state_dict else "is not there"
    raise FrozenNotLoaded(
        f"freeze={prefixes!r} would freeze {', '.join(fresh)} at their random initialisation: the weights in "
        f"{start.source} do not fit them ({first} {there}, {tuple(own.shape)} here): build those layers as the "
        "source model did (same names and sizes)"
    )


def loaded_summary(names: Sequence[str], limit: int = 1000) -> str:
    """The loaded tensors' names for a run's ``loaded`` param, cut to ``limit`` characters with a count."""
    text = ",".join(names)
    if len(text) <= limit:
        return text
    return f"{text[:limit].rsplit(',', 1)[0]},… ({len(names)} tensors)"
