"""Initialisation and transfer learning: init schemes, a starting state_dict, frozen layers.

A study may start every trial from weights (``Start``; ``weights.resolve_start`` fetches them). Parameters whose
names and shapes match are loaded (a new head keeps its fresh initialisation); layers named in ``freeze`` stop
learning and leave the optimizer.
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


def load_start(model: nn.Module, start: Start) -> list[str]:
    """Copy the parameters whose names and shapes match; returns their names (a ModelError when none match)."""
    own = model.state_dict()
    matching = {k: v for k, v in start.state_dict.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ModelError(
            f"none of the weights in {start.source} fit this model: build the same layers "
            "(names and shapes) as the model they come from"
        )
    model.load_state_dict(matching, strict=False)
    return sorted(matching)


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Turn off requires_grad for parameters whose names start with one of ``prefixes``; returns their names."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ModelError(f"freeze={prefix!r} names no parameter of the model (it has {', '.join(names[:6])}…)")
    frozen = []
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen
