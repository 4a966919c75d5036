"""torch.optim's SGD (momentum, weight decay), Adam and AdamW, vectorised over the members of a pack.

The weights of a pack are stacked (members first); each member has its own lr, momentum (Adam's beta1) and weight
decay. Each step is torch.optim's update for every member at once; a member's hyperparameters are broadcast
against every stacked tensor once, not on every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from searchlab.tasks import ModelError

KINDS = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}


class PackError(ModelError):
    """The study's model or optimizer cannot train as a pack."""


@dataclass
class Hyper:
    """One optimizer's kind and its members' hyperparameters (float64, one row per member)."""

    kind: str  # "sgd", "adam" or "adamw"
    lr: Tensor
    momentum: Tensor  # SGD's momentum, or Adam's beta1
    weight_decay: Tensor
    beta2: float = 0.999
    eps: float = 1e-8

    @staticmethod
    def of(optimizers: Sequence[torch.optim.Optimizer]) -> Hyper:
        """The members' torch.optim optimizers (built as an unpacked trial builds its own) as one vectorised
        optimizer's settings."""
        kinds = {KINDS.get(type(optimizer), "") for optimizer in optimizers}
        if "" in kinds:
            raise PackError("a pack vectorises SGD, Adam and AdamW only: use one of them, or --pack 1")
        if len(kinds) != 1 or {len(optimizer.param_groups) for optimizer in optimizers} != {1}:
            raise PackError("the members of a pack must use one optimizer kind with one parameter group")
        kind = kinds.pop()
        groups = [optimizer.param_groups[0] for optimizer in optimizers]
        betas2 = {1.0} if kind == "sgd" else {group["betas"][1] for group in groups}
        if len(betas2) != 1:
            raise PackError("the members of a pack must share Adam's beta2")

        def column(key: str) -> Tensor:
            values = [group["betas"][0] if key == "betas" else group[key] for group in groups]
            return torch.tensor([float(value) for value in values], dtype=torch.float64)

        return Hyper(
            kind,
            column("lr"),
            column("momentum" if kind == "sgd" else "betas"),
            column("weight_decay"),
            beta2=betas2.pop(),
            eps=float(groups[0].get("eps", 1e-8)),
        )

    def keep(self, rows: Tensor) -> None:
        self.lr, self.momentum, self.weight_decay = self.lr[rows], self.momentum[rows], self.weight_decay[rows]


def per_member(values: Tensor, like: Tensor) -> Tensor:
    """A member column broadcast against a stacked tensor (members first), in its dtype and on its device."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class VectorisedOptimizer:
    """One step of torch.optim's update for every member of a pack, over its stacked weights."""

    def __init__(self, hyper: Hyper) -> None:
        self.hyper = hyper
        self.steps = 0
        self.state: dict[str, dict[str, Tensor]] = {}
        self._columns: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # per weight: -lr, momentum, decay, broadcast

    def _columns_for(self, name: str, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if name not in self._columns:
            h = self.hyper
            decay = h.lr * h.weight_decay if h.kind == "adamw" else h.weight_decay
            self._columns[name] = (per_member(-h.lr, weight), per_member(h.momentum, weight), per_member(decay, weight))
        return self._columns[name]

    @torch.no_grad()
    def step(self, weights: dict[str, Tensor]) -> None:
        h = self.hyper
        self.steps += 1
        if h.kind != "sgd":
            step_size = -h.lr / (1 - h.momentum**self.steps)  # torch.optim's bias corrections, in float64
            root = math.sqrt(1 - h.beta2**self.steps)
        for name, weight in weights.items():
            grad = weight.grad
            if grad is None:
                continue
            minus_lr, momentum, decay = self._columns_for(name, weight)
            state = self.state.setdefault(name, {})
            if h.kind == "sgd":
                grad = grad.addcmul_(weight, decay)  # grad + weight_decay * weight (the grad is ours to change)
                buffer = state.get("momentum")
                if buffer is None:
                    buffer = state["momentum"] = grad.clone()
                else:
                    buffer.mul_(momentum).add_(grad)
                weight.addcmul_(buffer, minus_lr)
                continue
            if h.kind == "adamw":
                weight.addcmul_(weight, -decay)  # weight * (1 - lr * weight_decay)
            else:
                grad = grad.addcmul_(weight, decay)
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(weight), torch.zeros_like(weight)
            average, squares = state["exp_avg"], state["exp_avg_sq"]
            average.lerp_(grad, 1 - momentum)
            squares.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)
            denominator = (squares.sqrt() / root).add_(h.eps)
            weight.addcmul_(average / denominator, per_member(step_size, weight))

    def keep(self, rows: Tensor) -> None:
        """Drop the stopped members' rows."""
        self.hyper.keep(rows)
        self._columns.clear()
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value[rows.to(value.device)]
