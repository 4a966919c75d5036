"""torch.optim's SGD (momentum, weight decay), Adam and AdamW, vectorised over the members of a pack.

The weights of a pack are stacked (members first); each member has its own lr, momentum (Adam's beta1) and weight
decay. Each step is torch.optim's update for every member at once; a member's hyperparameters are broadcast
against every stacked tensor once, not on every step.
"""

from __future__ import annotations

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
    nothing moves between the host and the device on a step (no sync on a GPU). Members with larger batches
    accumulate gradients over several of the pack's batches: a step may move only the first ``n`` members (the
    pack orders its members by batch size), each counting its own steps.
    """

    def __init__(self, hyper: Hyper) -> None:
        self.hyper = hyper
        self.state: dict[str, dict[str, Tensor]] = {}
        self._columns: dict[str, dict[str, Tensor]] = {}  # per weight: each constant, broadcast and cast
        self._on_device: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}  # lr, beta1, steps (float64)
        self._plain_sgd = bool((hyper.momentum == 0).all())  # torch.optim keeps no momentum buffer at momentum 0

    def _constants(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        if name not in self._columns:
            h = self.hyper
            columns = {"minus_lr": -h.lr, "momentum": h.momentum, "one_minus_momentum": 1 - h.momentum}
            columns["decay"] = 1 - h.lr * h.weight_decay if h.kind == "adamw" else h.weight_decay
            self._columns[name] = {key: per_member(values, weight) for key, values in columns.items()}
        return self._columns[name]

    def _columns_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Every member's lr, beta1 and Adam steps taken, in float64 on ``device``."""
        if device not in self._on_device:
            h = self.hyper
            self._on_device[device] = (h.lr.to(device), h.momentum.to(device), torch.zeros_like(h.lr, device=device))
        return self._on_device[device]

    @torch.no_grad()
    def step(self, weights: dict[str, Tensor], members: int | None = None) -> None:
        """Step the first ``members`` members (all by default) on their gradients; the others stay as they are."""
        h = self.hyper
        n = len(h.lr) if members is None else members
        whole = n == len(h.lr)
        lead = (lambda tensor: tensor) if whole else (lambda tensor: tensor[:n])  # no view on a full step
        corrections: dict[torch.device, tuple[Tensor, Tensor]] = {}  # Adam's per-member bias corrections
        for name, stacked in weights.items():
            if stacked.grad is None:
                continue
            weight, grad = lead(stacked), lead(stacked.grad)
            constants = self._constants(name, stacked)
            if not whole:
                constants = {key: column[:n] for key, column in constants.items()}
            state = self.state.setdefault(name, {})
            if h.kind == "sgd":
                grad = grad.addcmul_(weight, constants["decay"])  # grad + weight_decay * weight (ours to change)
                if self._plain_sgd:
                    weight.addcmul_(grad, constants["minus_lr"])
                    continue
                if not state:  # torch starts the buffer at the first gradient: 0 * momentum + grad is that
                    state["momentum"] = torch.zeros_like(stacked)
                buffer = lead(state["momentum"])
                buffer.mul_(constants["momentum"]).add_(grad)
                weight.addcmul_(buffer, constants["minus_lr"])
                continue
            if h.kind == "adamw":
                weight.mul_(constants["decay"])  # weight * (1 - lr * weight_decay)
            else:
                grad = grad.addcmul_(weight, constants["decay"])
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(stacked), torch.zeros_like(stacked)
            average, squares = lead(state["exp_avg"]), lead(state["exp_avg_sq"])
            average.lerp_(grad, constants["one_minus_momentum"])
            squares.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)
            if stacked.device not in corrections:
                corrections[stacked.device] = self._corrections(stacked.device, n)
            step_size, root = (per_member(values, weight) for values in corrections[stacked.device])
            denominator = (squares.sqrt() / root).add_(h.eps)
            weight.addcdiv_(average * step_size, denominator)  # torch: weight + (-step_size * average) / denominator

    def _corrections(self, device: torch.device, n: int) -> tuple[Tensor, Tensor]:
        """Count a step of the first ``n`` members; their Adam -lr / (1 - beta1 ** step) and
        sqrt(1 - beta2 ** step), in float64."""
        lr, beta1, steps = self._columns_on(device)
        steps[:n] += 1
        taken = steps[:n]
        return -lr[:n] / (1 - beta1[:n] ** taken), (1 - self.hyper.beta2**taken).sqrt()

    def keep(self, rows: Tensor) -> None:
        """Drop the stopped members' rows."""
        self.hyper.keep(rows)
        self._plain_sgd = bool((self.hyper.momentum == 0).all())
        self._columns.clear()
        for device, (lr, beta1, steps) in self._on_device.items():
            kept = rows.to(device)
            self._on_device[device] = (lr[kept], beta1[kept], steps[kept])
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value[rows.to(value.device)]
