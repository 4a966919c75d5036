"""Regression, binary and multiclass tasks: the loss on raw outputs, the metrics, the head and target checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchmetrics
from torch import Tensor, nn
from torchmetrics import classification, regression

from searchlab.catalog import TASK_LOSSES
from searchlab.errors import ConfigError

SQUASHING_HEADS = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)


class ModelError(ConfigError):
    """The study's model cannot be trained on its task as built (wrong head, wrong output shape)."""


@dataclass(frozen=True)
class Task:
    """What a task fixes: the loss (always on raw outputs), the metrics, and how targets must look."""

    name: str
    loss_name: str

    def loss_fn(self) -> nn.Module:
        return getattr(nn, self.loss_name)()

    def prepare_targets(self, targets: Tensor) -> Tensor:
        """Targets in the dtype the loss expects, checked once when in-memory data is loaded."""
        if self.name == "multiclass":
            if targets.is_floating_point() and not torch.equal(targets, targets.round()):
                raise ConfigError("multiclass targets must be class indices 0..C-1, not fractions")
            targets = targets.long()  # CrossEntropyLoss takes int64 class indices only
            if targets.dim() == 2 and targets.shape[1] == 1:
                targets = targets.squeeze(1)
            if targets.dim() != 1 or (len(targets) and targets.min() < 0):
                raise ConfigError("multiclass targets must be a 1-D tensor of class indices 0..C-1")
            return targets
        targets = targets.float()
        if self.name == "binary" and not torch.all((targets == 0) | (targets == 1)):
            raise ConfigError("binary targets must be 0 or 1 (use task='multiclass' for more classes)")
        return targets

    def align(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Targets shaped like the outputs for the loss, or a ModelError that says how to fix the head."""
        if self.name == "multiclass":
            if outputs.dim() != 2 or outputs.shape[1] < 2:
                raise ModelError(
                    f"multiclass model outputs shape {tuple(outputs.shape)}: end the model with "
                    "nn.Linear(width, n_classes) giving one raw logit per class"
                )
            if targets.dim() == 2 and targets.shape[1] == 1:
                targets = targets.squeeze(1)
            targets = targets.long()  # a Dataset may yield float or int32 class indices; a no-op for int64
            if targets.shape != outputs.shape[:1]:
                raise ModelError(
                    f"multiclass targets have shape {tuple(targets.shape)} for outputs {tuple(outputs.shape)}: "
                    "targets must be one class index per example"
                )
            return targets
        if not targets.is_floating_point():
            targets = targets.to(outputs.dtype)  # a Dataset may yield integer labels
        if targets.shape == outputs.shape:
            return targets
        if targets.dim() == 1 and outputs.shape == (len(targets), 1):
            return targets.unsqueeze(1)  # a view: (N,) targets against (N, 1) outputs
        width = "one output per target column" if self.name == "regression" else "one logit, nn.Linear(width, 1)"
        raise ModelError(
            f"{self.name} model outputs shape {tuple(outputs.shape)} but targets have shape "
            f"{tuple(targets.shape)}: end the model with {width}"
        )

    def check_head(self, model: nn.Module) -> None:
        """Refuse a model whose last layer squashes its output before a loss that expects raw outputs."""
        leaves = [module for module in model.modules() if not list(module.children())]
        if leaves and isinstance(leaves[-1], SQUASHING_HEADS):
            head = type(leaves[-1]).__name__
            if self.name == "regression":
                fix = "end with a linear unit and no activation (scale the targets instead of squashing outputs)"
            else:
                fix = f"remove the final nn.{head} (the loss applies it itself)"
            raise ModelError(f"the model ends in nn.{head}, but {self.loss_name} expects raw outputs: {fix}")

    def check_outputs(self, outputs: Tensor) -> None:
        """Catch a softmax applied inside forward(): rows of probabilities summing to one."""
        if self.name == "multiclass" and outputs.dim() == 2 and len(outputs) > 1:
            rows = outputs.detach().float()
            if bool((rows >= 0).all()) and torch.allclose(rows.sum(dim=1), torch.ones(len(rows)).to(rows), atol=1e-4):
                raise ModelError(
                    "the model outputs probabilities (rows sum to 1), but CrossEntropyLoss expects raw logits: "
                    "remove the softmax from the model"
                )

    def metrics(self, n_outputs: int) -> torchmetrics.MetricCollection:
        """Validation metrics, accumulated over the whole validation set."""
        if self.name == "regression":
            return torchmetrics.MetricCollection(
                {
                    "mse": regression.MeanSquaredError(),
                    "mae": regression.MeanAbsoluteError(),
                    "r2": regression.R2Score(),
                }
            )
        if self.name == "binary":
            return torchmetrics.MetricCollection(
                {
                    "accuracy": classification.BinaryAccuracy(),
                    "auroc": classification.BinaryAUROC(),
                    "f1": classification.BinaryF1Score(),
                }
            )
        return torchmetrics.MetricCollection(
            {
                "accuracy": classification.MulticlassAccuracy(num_classes=n_outputs, average="micro"),
                "f1": classification.MulticlassF1Score(num_classes=n_outputs, average="macro"),
            }
        )

    def metric_inputs(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Predictions and targets as the metrics take them (probabilities for binary, flat for one output)."""
        if self.name == "binary":
            return torch.sigmoid(outputs).flatten(), targets.flatten().long()
        if self.name == "regression" and outputs.dim() == 2 and outputs.shape[1] == 1:
            return outputs.flatten(), targets.flatten()
        return outputs, targets


TASKS = {name: Task(name, loss) for name, loss in TASK_LOSSES.items()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]
