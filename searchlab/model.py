"""A trial's model and optimizer: its params sampled, the study's model built, checked against the task,
initialised, loaded from the starting weights and partly frozen; then SGD, Adam or AdamW over what still learns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from searchlab.space import Distribution, suggest
from searchlab.study import Study
from searchlab.tasks import ModelError, Task
from searchlab.transfer import Start, freeze, initialise, load_start
from searchlab.trial import Trial

# Used when a study drops a parameter from its space.
DROPPED_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "optimizer": "sgd"}


def trial_seed(study_seed: int, number: int) -> int:
    """A trial's seed: derived from the study seed and the trial number, so any trial can be replayed."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


def inherited_params(space: Mapping[str, Distribution], start: Start | None) -> dict[str, Any]:
    """The model params of the weights a trial starts from (e.g. their width) that the space does not search: they
    win over the builder's own ``suggest_*`` of the same names, so that the layers they size fit the weights."""
    return {k: v for k, v in (start.params if start else {}).items() if k not in space}


def sample_params(space: Mapping[str, Distribution], optuna_trial: Any, start: Start | None = None) -> dict[str, Any]:
    """Every value of the space for this trial (sampled through Optuna, or fixed), after the inherited ones."""
    sampled = {name: suggest(optuna_trial, name, dist) for name, dist in space.items()}
    return {**inherited_params(space, start), **sampled}


def new_trial(space: Mapping[str, Distribution], optuna_trial: Any, seed: int, start: Start | None = None) -> Trial:
    """The Trial a builder sees: the space sampled, and the starting weights' own params kept."""
    params = sample_params(space, optuna_trial, start)
    return Trial(optuna_trial, params, seed, inherited=inherited_params(space, start))


def build_model(study: Study, trial: Trial, task: Task, start: Start | None = None) -> nn.Module:
    """The study's model for this trial: built, checked against the task's loss, initialised, loaded from the
    starting weights (where names and shapes match) and with the study's frozen layers frozen."""
    model = study.model(trial)
    if not isinstance(model, nn.Module):
        raise ModelError(f"the study's model() must return an nn.Module, got {type(model).__name__}")
    task.check_head(model)
    initialise(model, trial.params.get("init", "default"))
    if start is not None:
        load_start(model, start)
    freeze(model, study.freeze, start)
    return model


def build_optimizer(model: nn.Module, params: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW over the trainable parameters (Adam's beta1 takes ``momentum``)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ModelError("no parameter of the model requires grad: unfreeze at least one layer")
    name = params.get("optimizer", DROPPED_DEFAULTS["optimizer"])
    lr = params.get("lr", DROPPED_DEFAULTS["lr"])
    weight_decay = params.get("weight_decay", DROPPED_DEFAULTS["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=params.get("momentum", 0.0), weight_decay=weight_decay)
    optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    betas = (params.get("momentum", 0.9), 0.999)
    return optimizer_class(trainable, lr=lr, betas=betas, weight_decay=weight_decay)


def batch_size(params: Mapping[str, Any]) -> int:
    """The trial's batch size (the default one when the space drops it)."""
    return int(params.get("batch_size", DROPPED_DEFAULTS["batch_size"]))
