"""The loop: train an epoch, evaluate, fit with early stopping and a NaN/inf guard, and train one trial.

Each step is the textbook one: zero_grad → forward → loss → backward → step. Evaluation runs in eval mode
under no_grad, in batches as large as memory allows (not the training batch size), accumulates metrics over the
whole validation set, and switches back to train mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from searchlab.data import Batches, Data, eval_batch_size, make_batches
from searchlab.model import batch_size, build_model, build_optimizer
from searchlab.study import Study
from searchlab.tasks import Task, get_task
from searchlab.transfer import Start
from searchlab.trial import Trial

EpochCallback = Callable[[int, dict[str, float]], None]


def train_epoch(
    model: nn.Module, batches: Batches, task: Task, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> float:
    """One pass over the training batches; returns the mean training loss per example."""
    model.train()
    total: Tensor | float = 0.0
    count = 0
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)
        loss = loss_fn(outputs, task.align(outputs, targets))
        loss.backward()
        optimizer.step()
        total = total + loss.detach() * len(inputs)  # stays on the device: no sync per batch
        count += len(inputs)
    return float(total) / count  # one CPU-GPU sync point per epoch


_METRICS: dict[tuple[str, int, str], Any] = {}  # built once per process, reset for every evaluation


def _metrics(task: Task, n_outputs: int, device: torch.device) -> Any:
    """The task's metric collection, emptied (building one for every evaluation costs as much as a small model's
    epoch)."""
    key = (task.name, n_outputs, str(device))
    if key not in _METRICS:
        _METRICS[key] = task.metrics(n_outputs).to(device)
    metrics = _METRICS[key]
    metrics.reset()
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, task: Task, loss_fn: nn.Module) -> dict[str, float]:
    """Validation loss and the task's metrics over the whole validation set, in eval mode."""
    model.eval()
    metrics = None
    total: Tensor | float = 0.0
    count = 0
    try:
        for inputs, targets in batches:
            outputs = model(inputs)
            targets = task.align(outputs, targets)
            if metrics is None:
                task.check_outputs(outputs)
                n_outputs = outputs.shape[1] if outputs.dim() == 2 else 1
                metrics = _metrics(task, n_outputs, outputs.device)
            total = total + loss_fn(outputs, targets) * len(inputs)
            count += len(inputs)
            metrics.update(*task.metric_inputs(outputs, targets))
    finally:
        model.train()
    if metrics is None:
        raise ValueError("the validation data yielded no batch: Split.val needs at least one example")
    results = {"val_loss": float(total) / count}
    results.update({f"val_{name}": float(value) for name, value in metrics.compute().items()})
    return results


class EarlyStopping:
    """Tracks the best validation loss; stops after ``patience`` epochs without improvement."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        if value < self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    @property
    def reason(self) -> str:
        return f"early stopping: no improvement for {self.patience} epochs after epoch {self.best_epoch}"


def non_finite(values: dict[str, float], key: str, epoch: int) -> str | None:
    """Why a fit stops at this epoch's ``key`` (train_loss or val_loss): non-finite; None while it is finite."""
    if math.isfinite(values[key]):
        return None
    what = "training" if key == "train_loss" else "validation"
    return f"non-finite {what} loss ({values[key]}) at epoch {epoch}"


def reached(max_epochs: int) -> str:
    return f"reached max_epochs={max_epochs}"


@dataclass
class FitResult:
    """How a fit ended: the best epoch and value (weights restored to it), and why it stopped."""

    best_val_loss: float
    best_epoch: int | None
    epochs: int
    stop_reason: str
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class FitState:
    """Where a fit stands after its last epoch: what a checkpoint keeps and a resumed fit starts from."""

    stopper: EarlyStopping
    epoch: int = 0
    best_state: dict[str, Tensor] | None = None  # the best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Batches,
    val: Batches,
    task: Task,
    *,
    max_epochs: int,
    patience: int,
    on_epoch: EpochCallback | None = None,
    state: FitState | None = None,
) -> FitResult:
    """Train until validation loss stops improving, then restore the best epoch's weights.

    A non-finite training or validation loss stops at that epoch (its values are not reported).
    ``on_epoch(epoch, values)`` sees each finite epoch once ``state`` holds it; it may raise (e.g.
    ``optuna.TrialPruned``). ``state``, updated as epochs end: where to start (a resumed fit) and where it stands.
    """
    loss_fn = task.loss_fn()
    state = state or FitState(EarlyStopping(patience))
    stopper = state.stopper
    stop_reason = stopper.reason if stopper.should_stop else reached(max_epochs)
    epoch = state.epoch
    last = state.epoch if stopper.should_stop else max_epochs  # a fit resumed at its end trains no epoch
    for epoch in range(state.epoch + 1, last + 1):
        values = {"train_loss": train_epoch(model, train, task, loss_fn, optimizer)}
        if stopped := non_finite(values, "train_loss", epoch):
            stop_reason = stopped
            break
        values.update(evaluate(model, val, task, loss_fn))
        if stopped := non_finite(values, "val_loss", epoch):
            stop_reason = stopped
            break
        state.history.append(values)
        if stopper.update(values["val_loss"], epoch):
            state.best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        state.epoch = epoch
        if on_epoch is not None:
            on_epoch(epoch, values)
        if stopper.should_stop:
            stop_reason = stopper.reason
            break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return FitResult(stopper.best, stopper.best_epoch, epoch, stop_reason, state.history)


@dataclass
class Training:
    """One trial's training as it goes: its model, optimizer, batches and fit state (what a checkpoint saves)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Batches
    val: Batches
    state: FitState


def build_trial(
    study: Study, trial: Trial, task: Task, device: torch.device, start: Start | None = None
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A trial's model (seeded with its seed, then built, initialised, loaded and frozen) and optimizer, on
    ``device``: what a trial trains, alone or in a pack."""
    torch.manual_seed(trial.seed)
    model = build_model(study, trial, task, start).to(device)
    return model, build_optimizer(model, trial.params)


def train_trial(
    study: Study,
    trial: Trial,
    train_data: Data,
    val_data: Data,
    device: torch.device,
    *,
    max_epochs: int,
    patience: int,
    start: Start | None = None,
    on_built: Callable[[Training], None] = lambda training: None,
    on_epoch: EpochCallback | None = None,
    batch_seed: int | None = None,
) -> tuple[nn.Module, FitResult]:
    """The loop for one trial's params and seed: seed → model → optimizer → batches → fit (best weights kept).

    The same code trains a trial in a search and replays it later, so that a CPU replay matches exactly.
    ``batch_seed`` orders the batches (default: the trial's seed; a packed trial's: its pack's). ``on_built`` sees
    the training before its first epoch (a resumed trial restores its checkpoint there).
    """
    task = get_task(study.task)
    model, optimizer = build_trial(study, trial, task, device, start)
    size = batch_size(trial.params)
    seed = trial.seed if batch_seed is None else batch_seed
    training = Training(
        model,
        optimizer,
        make_batches(train_data, size, shuffle=True, seed=seed, device=device),
        make_batches(val_data, eval_batch_size(val_data, size), shuffle=False, seed=seed, device=device),
        FitState(EarlyStopping(patience)),
    )
    on_built(training)
    result = fit(
        model,
        optimizer,
        training.train,
        training.val,
        task,
        max_epochs=max_epochs,
        patience=patience,
        on_epoch=on_epoch,
        state=training.state,
    )
    return model, result
