"""The trainable objective: Optuna trial → params → model → fit → best validation loss, tracked in MLflow."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from searchlab.data import Data, make_batches
from searchlab.devices import Slot
from searchlab.errors import TrialStopped, describe_error
from searchlab.recovery import worker_name
from searchlab.space import Distribution, suggest
from searchlab.study import Study
from searchlab.tasks import ModelError, Task, get_task
from searchlab.tracking import RUN_ID_ATTR, RUN_NAME_TAG, RUN_TOKEN_ATTR, Tracker
from searchlab.train import EpochCallback, FitResult, fit
from searchlab.transfer import Start, freeze, initialise, load_start
from searchlab.trial import Trial

# Used when a study drops a parameter from its space.
DROPPED_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "optimizer": "sgd"}


def trial_seed(study_seed: int, number: int) -> int:
    """A trial's seed: derived from the study seed and the trial number, so any trial can be replayed."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


def sample_params(space: Mapping[str, Distribution], optuna_trial: Any, start: Start | None = None) -> dict[str, Any]:
    """Every value of the space for this trial (sampled through Optuna, or fixed), after the model params of the
    weights it starts from (e.g. their width), which the space does not search."""
    inherited = {k: v for k, v in (start.params if start else {}).items() if k not in space}
    return {**inherited, **{name: suggest(optuna_trial, name, dist) for name, dist in space.items()}}


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
    freeze(model, study.freeze)
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


def train_trial(study: Study, trial: Trial, train_data: Data, val_data: Data, device: torch.device, *,
                max_epochs: int, patience: int, start: Start | None = None,
                on_built: Callable[[nn.Module], None] = lambda model: None,
                on_epoch: EpochCallback | None = None) -> tuple[nn.Module, FitResult]:
    """The loop for one trial's params and seed: seed → model → optimizer → batches → fit (best weights kept).

    The same code trains a trial in a search and replays it later, so that a CPU replay matches exactly.
    """
    task = get_task(study.task)
    torch.manual_seed(trial.seed)
    model = build_model(study, trial, task, start).to(device)
    optimizer = build_optimizer(model, trial.params)
    on_built(model)
    batch_size = int(trial.params.get("batch_size", DROPPED_DEFAULTS["batch_size"]))
    result = fit(
        model, optimizer,
        make_batches(train_data, batch_size, shuffle=True, seed=trial.seed, device=device),
        make_batches(val_data, batch_size, shuffle=False, seed=trial.seed, device=device),
        task, max_epochs=max_epochs, patience=patience, on_epoch=on_epoch,
    )
    return model, result


def run_name(number: int, tags: Mapping[str, Any]) -> str:
    """A trial run's name in the MLflow UI: its number and its headline (value, pruned epoch or failure)."""
    if tags.get("state") == "COMPLETE":
        return f"trial-{number} val_loss={tags['val_loss']:.4g}"
    if tags.get("state") == "PRUNED":
        return f"trial-{number} pruned@{tags['pruned_epoch']}"
    return f"trial-{number} failed"


@dataclass
class Objective:
    """Callable for one process: trains a trial and tracks it as a child run of ``parent_run_id``."""

    study: Study
    train_data: Data
    val_data: Data
    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    seed: int
    max_epochs: int
    patience: int
    slot: Slot
    run_tags: Mapping[str, str]
    start: Start | None = None

    def __call__(self, optuna_trial: optuna.Trial) -> float:
        seed = trial_seed(self.seed, optuna_trial.number)
        optuna_trial.set_user_attr("seed", seed)
        optuna_trial.set_user_attr("setup", {"data_seed": self.seed, "threads": self.slot.threads,
                                             "max_epochs": self.max_epochs, "patience": self.patience})
        params = sample_params(self.study.space, optuna_trial, self.start)
        run = self.tracker.start_run(
            self.experiment_id, f"trial-{optuna_trial.number}", parent_run_id=self.parent_run_id,
            tags={**self.run_tags, "trial_number": optuna_trial.number, "worker": worker_name()},
        )
        recorded = False

        def record_run_id(wait: bool) -> None:
            """The trial names its MLflow run once the run exists (it is created in the background). One not created
            by the trial's end (the store unreachable) is named by its handle, its creation token."""
            nonlocal recorded
            run_id = None if recorded else self.tracker.run_id(run, wait=wait)
            if run_id is not None:
                optuna_trial.set_user_attr(RUN_ID_ATTR, run_id)
                recorded = True
            elif wait and not recorded:
                optuna_trial.set_user_attr(RUN_TOKEN_ATTR, run)

        status, tags = "FAILED", {"state": "FAIL"}
        try:
            trial = Trial(optuna_trial, params, seed)

            def on_built(model: nn.Module) -> None:
                n_params = sum(parameter.numel() for parameter in model.parameters())
                lineage = {"start_from": self.start.source, "frozen": ",".join(self.study.freeze)} if self.start else {}
                self.tracker.log_params(run, {**trial.params, "seed": seed, "n_params": n_params,
                                              "device": self.slot.device, "threads": self.slot.threads,
                                              "max_epochs": self.max_epochs, "patience": self.patience, **lineage})

            def on_epoch(epoch: int, values: dict[str, float]) -> None:
                self.tracker.log_metrics(run, values, step=epoch)
                record_run_id(wait=False)
                optuna_trial.report(values["val_loss"], epoch)
                if optuna_trial.should_prune():
                    optuna_trial.set_user_attr("pruned_epoch", epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (val_loss {values['val_loss']:.6g})")

            model, result = train_trial(self.study, trial, self.train_data, self.val_data,
                                        torch.device(self.slot.torch_device), max_epochs=self.max_epochs,
                                        patience=self.patience, start=self.start, on_built=on_built,
                                        on_epoch=on_epoch)
            epochs = len(result.history)  # epochs on the curve (a NaN epoch is not)
            tags.update(reason=result.stop_reason, epochs=epochs)
            for key, value in (("reason", result.stop_reason), ("epochs", epochs)):
                optuna_trial.set_user_attr(key, value)
            if result.best_epoch is None:
                raise TrialStopped(result.stop_reason)
            optuna_trial.set_user_attr("best_epoch", result.best_epoch)
            self.tracker.log_state_dict(run, model.state_dict())
            self.tracker.log_metrics(run, {"best_val_loss": result.best_val_loss}, step=result.best_epoch)
            tags.update(state="COMPLETE", best_epoch=result.best_epoch, val_loss=result.best_val_loss)
            status = "FINISHED"
            return result.best_val_loss
        except optuna.TrialPruned as pruned:
            status = "FINISHED"  # a pruned trial ended as planned; its curve stays
            tags.update(state="PRUNED", reason=str(pruned), pruned_epoch=optuna_trial.user_attrs["pruned_epoch"])
            optuna_trial.set_user_attr("reason", str(pruned))
            raise
        except KeyboardInterrupt as interrupt:
            status, tags["reason"] = "KILLED", str(interrupt) or "interrupted (Ctrl-C)"
            raise
        except Exception as error:
            tags["reason"] = tags.get("reason") if isinstance(error, TrialStopped) else describe_error(error)
            raise
        finally:
            try:
                record_run_id(wait=True)
            finally:
                self.tracker.end_run(run, status, tags={**tags, RUN_NAME_TAG: run_name(optuna_trial.number, tags)})

