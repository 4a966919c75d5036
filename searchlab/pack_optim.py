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
UNSUPPORTED = {"nesterov": False, "dampening": 0, "amsgrad": False, "maximize": False}


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
        shared = {(group.get("betas", (0, 1.0))[1], group.get("eps", 1e-8)) for group in groups}
        if len(shared) != 1:
            raise PackError("the members of a pack must share Adam's beta2 and eps")
        for option, plain in UNSUPPORTED.items():  # what build_optimizer leaves at torch's defaults
            if any(group.get(option, plain) != plain for group in groups):
                raise PackError(f"a pack does not vectorise the optimizer option {option}: use --pack 1")
        beta2, eps = shared.pop()

        def column(key: str) -> Tensor:
            values = [group["betas"][0] if key == "betas" else group[key] for group in groups]
            return torch.tensor([float(value) for value in values], dtype=torch.float64)

        return Hyper(
            kind,
            column("lr"),
            column("momentum" if kind == "sgd" else "betas"),
            column("weight_decay"),
            beta2=float(beta2),
            eps=float(eps),
        )

    def keep(self, rows: Tensor) -> None:
        self.lr, self.momentum, self.weight_decay = self.lr[rows], self.momentum[rows], self.weight_decay[rows]


def per_member(values: Tensor, like: Tensor) -> Tensor:
    """A member column broadcast against a stacked tensor (members first), in its dtype and on its device."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class VectorisedOptimizer:
    """One step of torch.optim's update for every member of a pack, over its stacked weights.

    Each constant is rounded as torch.optim rounds it (computed in float64, then cast to the weight's dtype), and
    nothing moves between the host and the device on a step (no sync on a GPU).
    """

    def __init__(self, hyper: Hyper) -> None:
        self.hyper = hyper
        self.steps = 0
        self.state: dict[str, dict[str, Tensor]] = {}
        self._columns: dict[str, dict[str, Tensor]] = {}  # per weight: each constant, broadcast and cast
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}  # lr, beta1 in float64 (Adam's steps)
        self._plain_sgd = bool((hyper.momentum == 0).all())  # torch.optim keeps no momentum buffer at momentum 0

    def _constants(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        if name not in self._columns:
            h = self.hyper
            columns = {"minus_lr": -h.lr, "momentum": h.momentum, "one_minus_momentum": 1 - h.momentum}
            columns["decay"] = 1 - h.lr * h.weight_decay if h.kind == "adamw" else h.weight_decay
            self._columns[name] = {key: per_member(values, weight) for key, values in columns.items()}
        return self._columns[name]

    def _step_size(self, device: torch.device) -> Tensor:
        """Adam's -lr / (1 - beta1 ** step) for every member, in float64 on ``device``."""
        if device not in self._on_device:
            self._on_device[device] = (self.hyper.lr.to(device), self.hyper.momentum.to(device))
        lr, beta1 = self._on_device[device]
        return -lr / (1 - beta1**self.steps)

    @torch.no_grad()
    def step(self, weights: dict[str, Tensor]) -> None:
        h = self.hyper
        self.steps += 1
        step_sizes: dict[torch.device, Tensor] = {}
        for name, weight in weights.items():
            grad = weight.grad
            if grad is None:
                continue
            constants = self._constants(name, weight)
            state = self.state.setdefault(name, {})
            if h.kind == "sgd":
                grad = grad.addcmul_(weight, constants["decay"])  # grad + weight_decay * weight (ours to change)
                if self._plain_sgd:
                    weight.addcmul_(grad, constants["minus_lr"])
                    continue
                buffer = state.get("momentum")
                if buffer is None:
                    buffer = state["momentum"] = grad.clone()
                else:
                    buffer.mul_(constants["momentum"]).add_(grad)
                weight.addcmul_(buffer, constants["minus_lr"])
                continue
            if h.kind == "adamw":
                weight.mul_(constants["decay"])  # weight * (1 - lr * weight_decay)
            else:
                grad = grad.addcmul_(weight, constants["decay"])
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(weight), torch.zeros_like(weight)
            average, squares = state["exp_avg"], state["exp_avg_sq"]
            average.lerp_(grad, constants["one_minus_momentum"])
            squares.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)
            denominator = (squares.sqrt() / math.sqrt(1 - h.beta2**self.steps)).add_(h.eps)
            if weight.device not in step_sizes:
                step_sizes[weight.device] = self._step_size(weight.device)
            # torch: weight + (-step_size * average) / denominator
            weight.addcdiv_(average * per_member(step_sizes[weight.device], weight), denominator)

    def keep(self, rows: Tensor) -> None:
        """Drop the stopped members' rows."""
        self.hyper.keep(rows)
        self._plain_sgd = bool((self.hyper.momentum == 0).all())
        self._columns.clear()
        self._on_device.clear()
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value[rows.to(value.device)]
