"""The trainable objective: Optuna trial → params → model → fit → best validation loss, tracked in MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import torch
from torch import nn

from searchlab.config import TrialSettings
from searchlab.data import Data
from searchlab.devices import Slot
from searchlab.errors import TrialStopped, describe_error
from searchlab.model import sample_params, trial_seed
from searchlab.recovery import worker_name
from searchlab.settings import (
    PRUNED_EPOCH_ATTR,
    REASON,
    RUN_ID_ATTR,
    RUN_NAME_TAG,
    RUN_TOKEN_ATTR,
    SEED_ATTR,
    SETUP_ATTR,
    STATE_TAG,
    WORKER,
)
from searchlab.study import Study
from searchlab.train import FitResult, train_trial
from searchlab.transfer import Start
from searchlab.trial import Trial

INTERRUPTED = "interrupted (Ctrl-C)"


class Tracker(Protocol):
    """What a trial needs from an experiment tracker: ``sender.BackgroundTracker`` in a search, over an
    MlflowTracker (which is one too). ``start_run`` returns a handle the other calls take; ``run_id`` names the
    MLflow run behind it."""

    def start_run(
        self, experiment_id: str, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str: ...
    def run_id(self, run: str, *, wait: bool) -> str | None: ...
    def log_params(self, run: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run: str, values: Mapping[str, float], step: int) -> None: ...
    def log_state_dict(self, run: str, state_dict: Mapping[str, Any]) -> None: ...
    def end_run(self, run: str, status: str, tags: Mapping[str, Any] | None = None) -> None: ...


def run_name(number: int, tags: Mapping[str, Any]) -> str:
    """A trial run's name in the MLflow UI: its number and its headline (value, pruned epoch or failure)."""
    if tags.get(STATE_TAG) == "COMPLETE":
        return f"trial-{number} val_loss={tags['val_loss']:.4g}"
    if tags.get(STATE_TAG) == "PRUNED":
        return f"trial-{number} pruned@{tags[PRUNED_EPOCH_ATTR]}"
    return f"trial-{number} failed"


@dataclass
class Objective:
    """Callable for one process: trains a trial and tracks it as a child run of the run's parent run."""

    study: Study
    train_data: Data
    val_data: Data
    tracker: Tracker
    settings: TrialSettings
    slot: Slot
    start: Start | None = None

    def __call__(self, optuna_trial: optuna.Trial) -> float:
        settings = self.settings
        seed = trial_seed(settings.seed, optuna_trial.number)
        optuna_trial.set_user_attr(SEED_ATTR, seed)
        optuna_trial.set_user_attr(
            SETUP_ATTR,
            {
                "data_seed": settings.seed,
                "threads": self.slot.threads,
                "max_epochs": settings.max_epochs,
                "patience": settings.patience,
            },
        )
        params = sample_params(self.study.space, optuna_trial, self.start)
        run = self.tracker.start_run(
            settings.experiment_id,
            f"trial-{optuna_trial.number}",
            parent_run_id=settings.parent_run_id,
            tags={**settings.run_tags, "trial_number": optuna_trial.number, WORKER: worker_name()},
        )
        naming = RunNaming(self.tracker, run, optuna_trial)
        status = "FAILED"
        tags: dict[str, Any] = {STATE_TAG: "FAIL"}
        try:
            result = self._train(optuna_trial, Trial(optuna_trial, params, seed), run, naming, tags)
            tags.update({STATE_TAG: "COMPLETE", "best_epoch": result.best_epoch, "val_loss": result.best_val_loss})
            status = "FINISHED"
            return result.best_val_loss
        except optuna.TrialPruned as pruned:
            status = "FINISHED"  # a pruned trial ended as planned; its curve stays
            tags.update(
                {
                    STATE_TAG: "PRUNED",
                    REASON: str(pruned),
                    PRUNED_EPOCH_ATTR: optuna_trial.user_attrs[PRUNED_EPOCH_ATTR],
                }
            )
            optuna_trial.set_user_attr(REASON, str(pruned))
            raise
        except KeyboardInterrupt as interrupt:
            status, tags[REASON] = "KILLED", str(interrupt) or INTERRUPTED
            raise
        except Exception as error:
            if not isinstance(error, TrialStopped):  # a stopped trial's tags say why already
                tags[REASON] = describe_error(error)
            raise
        finally:
            try:
                naming.record(wait=True)
            finally:
                self.tracker.end_run(run, status, tags={**tags, RUN_NAME_TAG: run_name(optuna_trial.number, tags)})

    def _train(
        self, optuna_trial: optuna.Trial, trial: Trial, run: str, naming: RunNaming, tags: dict[str, Any]
    ) -> FitResult:
        """Train the trial, logging its params, curves and best weights, and say how it ended in ``tags``; a NaN
        before any finite epoch stops it."""
        settings = self.settings

        def on_built(model: nn.Module) -> None:
            n_params = sum(parameter.numel() for parameter in model.parameters())
            lineage = {"start_from": self.start.source, "frozen": ",".join(self.study.freeze)} if self.start else {}
            self.tracker.log_params(
                run,
                {
                    **trial.params,
                    "seed": trial.seed,
                    "n_params": n_params,
                    "device": self.slot.device,
                    "threads": self.slot.threads,
                    "max_epochs": settings.max_epochs,
                    "patience": settings.patience,
                    **lineage,
                },
            )

        def on_epoch(epoch: int, values: dict[str, float]) -> None:
            self.tracker.log_metrics(run, values, step=epoch)
            naming.record(wait=False)
            optuna_trial.report(values["val_loss"], epoch)
            if optuna_trial.should_prune():
                optuna_trial.set_user_attr(PRUNED_EPOCH_ATTR, epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val_loss {values['val_loss']:.6g})")

        model, result = train_trial(
            self.study,
            trial,
            self.train_data,
            self.val_data,
            torch.device(self.slot.torch_device),
            max_epochs=settings.max_epochs,
            patience=settings.patience,
            start=self.start,
            on_built=on_built,
            on_epoch=on_epoch,
        )
        epochs = len(result.history)  # epochs on the curve (a NaN epoch is not)
        tags.update({REASON: result.stop_reason, "epochs": epochs})
        for key, value in ((REASON, result.stop_reason), ("epochs", epochs)):
            optuna_trial.set_user_attr(key, value)
        if result.best_epoch is None:
            raise TrialStopped(result.stop_reason)
        optuna_trial.set_user_attr("best_epoch", result.best_epoch)
        self.tracker.log_state_dict(run, model.state_dict())
        self.tracker.log_metrics(run, {"best_val_loss": result.best_val_loss}, step=result.best_epoch)
        return result


class RunNaming:
    """Names a trial's MLflow run in its Optuna trial once the run exists (it is created in the background). One
    not created by the trial's end (the store unreachable) is named by its handle, its creation token."""

    def __init__(self, tracker: Tracker, run: str, optuna_trial: optuna.Trial) -> None:
        self.tracker, self.run, self.optuna_trial = tracker, run, optuna_trial
        self.recorded = False

    def record(self, *, wait: bool) -> None:
        run_id = None if self.recorded else self.tracker.run_id(self.run, wait=wait)
        if run_id is not None:
            self.optuna_trial.set_user_attr(RUN_ID_ATTR, run_id)
            self.recorded = True
        elif wait and not self.recorded:
            self.optuna_trial.set_user_attr(RUN_TOKEN_ATTR, self.run)
