"""Packed trials: K trials of one architecture and one batch stream trained as one vectorised model.

``torch.func.stack_module_state`` stacks the members' weights along a first dimension; ``functional_call`` under
``vmap(randomness="different")`` runs each member on the same batch with its own weights and its own dropout masks;
one backward gives every member the gradient of its own loss (the losses share no weight). The update is
torch.optim's SGD, Adam or AdamW, vectorised over members with each member's lr, momentum (Adam's beta1) and
weight decay. Each member keeps its own early stopping with its best weights, its own NaN/inf stop and its own
pruning; a member that stops leaves the pack (its rows are dropped), so it costs nothing afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from searchlab.data import Batches
from searchlab.pack_chain import chain_of, dropout_scale, run_chain, transposed_weights
from searchlab.pack_optim import Hyper, PackError, VectorisedOptimizer
from searchlab.tasks import Task
from searchlab.train import EarlyStopping, EpochCallback, FitResult, non_finite, reached

# What the members of one pack may differ in; every other parameter (batch size, optimizer kind, widths and
# whatever the model builder suggests) is the pack's.
PER_MEMBER = ("lr", "momentum", "weight_decay", "dropout", "init")


def signature(model: nn.Module) -> tuple[Any, ...]:
    """What must be equal for models to share one pack: the modules (types, settings and plain attributes, a
    dropout's rate aside: each member has its own) and the weights' names, shapes, dtypes and devices."""
    modules = tuple(
        (name, type(module).__qualname__, "" if type(module) is nn.Dropout else module.extra_repr(), _settings(module))
        for name, module in model.named_modules()
    )
    tensors = tuple(
        (name, tuple(t.shape), t.dtype, str(t.device), t.requires_grad)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )
    return modules, tensors


def _settings(module: nn.Module) -> tuple[tuple[str, Any], ...]:
    """A module's own plain attributes (numbers, strings, flags): what its forward may read besides its weights, e.g.
    ``self.scale = trial.params["dropout"]`` in a custom module."""
    plain = (int, float, str, bool, type(None), tuple)
    skip = {"training"} | ({"p"} if type(module) is nn.Dropout else set())
    return tuple(
        sorted(
            (k, v) for k, v in vars(module).items() if not k.startswith("_") and k not in skip and isinstance(v, plain)
        )
    )


def check_packable(model: nn.Module) -> None:
    """Refuse, naming the module, what a pack cannot vectorise: a norm layer that updates running statistics."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            raise PackError(
                f"the model's {type(module).__name__} at {name!r} updates running statistics, which a pack of "
                "trials cannot share: use nn.GroupNorm or nn.LayerNorm, track_running_stats=False, or --pack 1"
            )


class MemberDropout(nn.Module):
    """``nn.Dropout`` whose rate is a buffer, so that each member of a pack drops at its own rate."""

    rate: Tensor

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate)))

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.training:
            return inputs
        keep = torch.rand_like(inputs) >= self.rate  # under vmap(randomness="different"): a mask per member
        return inputs * keep * dropout_scale(self.rate)


def _functional_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A weightless copy of ``model`` to call with each member's weights, its nn.Dropout swapped for
    MemberDropout; and the names of those dropouts."""
    base = copy.deepcopy(model).to("meta")
    dropouts = [name for name, module in base.named_modules() if type(module) is nn.Dropout and name]
    for name in dropouts:
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent), child, MemberDropout(0.0).to("meta"))
    if type(base) is nn.Dropout:
        raise PackError("the model is a bare nn.Dropout: nothing to train")
    return base, dropouts


@dataclass
class Member:
    """One trial in a pack: its built model (initialised as unpacked), its optimizer as an unpacked trial would
    build it (read for its hyperparameters), and what it hears each epoch and at its end."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    on_epoch: EpochCallback | None = None  # may raise (e.g. optuna.TrialPruned): the member stops
    on_end: Callable[[FitResult | Exception], None] = lambda outcome: None
    stopper: EarlyStopping = field(init=False)
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None

    def best_weights(self) -> dict[str, Tensor] | None:
        """Its model with its best epoch's weights loaded, as a state_dict (None before a finite epoch)."""
        if self.best_state is None:
            return None
        wanted = self.model.state_dict()  # a tied weight has one name in best_state: loading it loads its twins too
        self.model.load_state_dict({n: self.best_state[n] for n in wanted if n in self.best_state}, strict=False)
        return self.model.state_dict()


class Pack:
    """The members' weights stacked (members first), called through one weightless copy of the model."""

    def __init__(self, members: Sequence[Member], task: Task) -> None:
        models = [member.model for member in members]
        first = signature(models[0])
        for index, model in enumerate(models[1:], start=1):
            if signature(model) != first:
                raise PackError(f"member {index} of the pack is built differently from member 0")
        check_packable(models[0])
        self.task, self.loss_fn = task, task.loss_fn()
        self.base, self.dropouts = _functional_copy(models[0])
        params, buffers = stack_module_state(models)
        self.weights = {name: p for name, p in params.items() if p.requires_grad}
        self.fixed = {**{n: p for n, p in params.items() if not p.requires_grad}, **buffers}
        for name in self.dropouts:
            rates = [float(model.get_submodule(name).p) for model in models]  # type: ignore[arg-type]
            self.fixed[f"{name}.rate"] = torch.tensor(rates, device=next(iter(params.values())).device)
        self.optimizer = VectorisedOptimizer(Hyper.of([member.optimizer for member in members]))
        self.chain = chain_of(models[0])  # None: through vmap
        self.transposed = transposed_weights(self.chain) if self.chain is not None else set()
        for group in (self.weights, self.fixed):
            for name in self.transposed & set(group):
                group[name] = group[name].detach().transpose(1, 2).contiguous().requires_grad_(name in self.weights)
        self.dropping = self._dropping()
        self._vmapped = vmap(self._member_outputs, in_dims=(0, 0, None), randomness="different")
        self.unreduced = type(self.loss_fn)(reduction="none")
        self.metrics: list[Any] = []  # each member's validation metrics

    def _dropping(self) -> dict[str, tuple[Tensor, Tensor]]:
        """For each dropout some member drops at, the members' rates and scales (found once, not on every step:
        on a GPU a check syncs)."""
        dropping = {}
        for name in self.dropouts:
            rate = self.fixed[f"{name}.rate"]
            if any(rate.tolist()):
                dropping[name] = (rate, dropout_scale(rate))
        return dropping

    def __len__(self) -> int:
        return len(next(iter(self.weights.values())))

    @property
    def device(self) -> torch.device:
        return next(iter(self.weights.values())).device

    def _member_outputs(self, weights: dict[str, Tensor], fixed: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(self.base, (weights, fixed), (inputs,))

    def outputs(self, inputs: Tensor, *, training: bool) -> Tensor:
        """Every member's outputs for one batch, members first."""
        if self.chain is not None:
            tensors = {**self.fixed, **self.weights}
            return run_chain(self.chain, tensors, inputs, len(self), training=training, dropping=self.dropping)
        self.base.train(training)
        return self._vmapped(self.weights, self.fixed, inputs)

    def losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's mean loss on one batch (the task's loss, reduced per member)."""
        aligned = self.task.align(outputs[0], targets)
        members = len(outputs)
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            each = self.unreduced(outputs.flatten(0, 1), aligned.repeat(members))
        else:
            each = self.unreduced(outputs, aligned.expand_as(outputs))
        return each.reshape(members, -1).mean(1)

    def train_epoch(self, batches: Iterable[tuple[Tensor, Tensor]]) -> list[float]:
        """One pass over the batches, every member stepping on each; each member's mean training loss."""
        total = torch.zeros(len(self), device=self.device)
        count = 0
        for inputs, targets in batches:
            for weight in self.weights.values():
                weight.grad = None
            losses = self.losses(self.outputs(inputs, training=True), targets)
            losses.sum().backward()  # the members share no weight: each gets its own loss's gradient
            self.optimizer.step(self.weights)
            total.add_(losses.detach(), alpha=len(inputs))
            count += len(inputs)
        return (total / count).tolist()

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Tensor, Tensor]]) -> list[dict[str, float]]:
        """Each member's validation loss and metrics over the whole validation set, in eval mode."""
        losses: Tensor | float = 0.0
        count, metrics = 0, self.metrics
        for inputs, targets in batches:
            outputs = self.outputs(inputs, training=False)
            aligned = self.task.align(outputs[0], targets)
            if count == 0:
                for member_outputs in outputs:
                    self.task.check_outputs(member_outputs)
                if not metrics:  # one collection per member, built at the first evaluation (its outputs' width)
                    width = outputs.shape[2] if outputs.dim() == 3 else 1
                    metrics = self.metrics = [self.task.metrics(width).to(outputs.device) for _ in outputs]
                for collection in metrics:
                    collection.reset()
            losses = losses + self.losses(outputs, targets) * len(inputs)
            count += len(inputs)
            for member_outputs, member_metrics in zip(outputs, metrics, strict=True):
                member_metrics.update(*self.task.metric_inputs(member_outputs, aligned))
        if count == 0:
            raise ValueError("the validation data yielded no batch: Split.val needs at least one example")
        values = (torch.as_tensor(losses) / count).tolist()
        return [
            {"val_loss": value, **{f"val_{name}": float(v) for name, v in m.compute().items()}}
            for value, m in zip(values, metrics, strict=True)
        ]

    def state_of(self, index: int) -> dict[str, Tensor]:
        """One member's weights and buffers as its model's state_dict names them (a copy)."""
        rates = {f"{name}.rate" for name in self.dropouts}
        stacked = {**self.weights, **{n: t for n, t in self.fixed.items() if n not in rates}}
        state = {name: tensor[index].detach() for name, tensor in stacked.items()}
        return {name: (t.T if name in self.transposed else t).clone() for name, t in state.items()}

    def keep(self, index: list[int]) -> None:
        """Drop every member not in ``index`` (rows of the stacked weights, buffers and optimizer state)."""
        rows = torch.tensor(index, device=self.device)
        self.weights = {n: w.detach()[rows].requires_grad_() for n, w in self.weights.items()}
        self.fixed = {n: t[rows] for n, t in self.fixed.items()}
        self.optimizer.keep(rows.cpu())
        self.dropping = self._dropping()
        self.metrics = [self.metrics[i] for i in index] if self.metrics else []


def fit_pack(
    members: Sequence[Member],
    train: Batches,
    val: Batches,
    task: Task,
    *,
    max_epochs: int,
    patience: int,
) -> None:
    """Train the members as one pack; each member's ``on_end`` hears its FitResult (best weights restored into its
    model) or the exception its ``on_epoch`` raised, as soon as it stops.

    As in ``train.fit``: a non-finite training or validation loss stops a member at that epoch (not reported);
    early stopping restores its best epoch. Anything but an Exception from a callback (Ctrl-C) ends the pack.
    """
    pack = Pack(members, task)
    live = list(members)
    for member in live:
        member.stopper = EarlyStopping(patience)
    for epoch in range(1, max_epochs + 1):
        train_losses = pack.train_epoch(train)
        validation = pack.evaluate(val)
        stopped: list[int] = []
        for index, (member, train_loss, values) in enumerate(zip(live, train_losses, validation, strict=True)):
            outcome = _epoch(pack, index, member, epoch, {"train_loss": train_loss, **values}, max_epochs)
            if outcome is not None:
                stopped.append(index)
                member.on_end(outcome)
        if stopped:
            kept = [index for index in range(len(live)) if index not in stopped]
            if not kept:
                return
            pack.keep(kept)
            live = [live[index] for index in kept]


def _epoch(
    pack: Pack, index: int, member: Member, epoch: int, values: dict[str, float], max_epochs: int
) -> FitResult | Exception | None:
    """One member's epoch, as ``train.fit`` takes it; how the member ended, or None while it goes on."""
    stopper = member.stopper
    for key in ("train_loss", "val_loss"):
        if stopped := non_finite(values, key, epoch):
            return _result(member, stopped, epoch)
    member.history.append(values)
    if stopper.update(values["val_loss"], epoch):
        member.best_state = pack.state_of(index)
    if member.on_epoch is not None:
        try:
            member.on_epoch(epoch, values)
        except Exception as error:
            return error
    if stopper.should_stop:
        return _result(member, stopper.reason, epoch)
    if epoch == max_epochs:
        return _result(member, reached(max_epochs), epoch)
    return None


def _result(member: Member, stop_reason: str, epochs: int) -> FitResult:
    """The member's FitResult, its best weights loaded into its model."""
    member.best_weights()
    stopper = member.stopper
    return FitResult(stopper.best, stopper.best_epoch, epochs, stop_reason, member.history)
