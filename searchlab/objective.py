"""The trainable objective: Optuna trial → params → model → fit → best validation loss, tracked in MLflow."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from searchlab.checkpoint import Schedule, mismatch, restore, snapshot
from searchlab.config import TrialSettings
from searchlab.data import Data
from searchlab.devices import Slot
from searchlab.errors import TrialStopped, describe_error
from searchlab.model import new_trial, trial_seed
from searchlab.recovery import worker_name
from searchlab.settings import (
    OBJECTIVE_NAME,
    PRUNED_EPOCH_ATTR,
    REASON,
    REEVALUATES_ATTR,
    RESUMED_FROM_ATTR,
    RESUMES_ATTR,
    RUN_ID_ATTR,
    RUN_NAME_TAG,
    RUN_TOKEN_ATTR,
    SEED_ATTR,
    SETUP_ATTR,
    STATE_TAG,
    WORKER,
)
from searchlab.study import Study
from searchlab.tracking import Resumed, run_name
from searchlab.train import FitResult, Training, train_trial
from searchlab.transfer import Start, fitting, loaded_summary
from searchlab.window import trial_numbered

INTERRUPTED = "interrupted (Ctrl-C)"


class Tracker(Protocol):
    """What a trial needs from an experiment tracker: ``sender.BackgroundTracker`` in a search, over an
    MlflowTracker (which is one too). ``start_run`` and ``resume_run`` return a handle the other calls take;
    ``run_id`` names the MLflow run behind it."""

    def start_run(
        self, experiment_id: str, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str: ...
    def resume_run(self, run_id: str, tags: Mapping[str, Any]) -> Resumed: ...
    def run_id(self, run: str, *, wait: bool) -> str | None: ...
    def log_params(self, run: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run: str, values: Mapping[str, float], step: int) -> None: ...
    def log_state_dict(self, run: str, state_dict: Mapping[str, Any]) -> None: ...
    def log_checkpoint(self, run: str, checkpoint: Mapping[str, Any]) -> None: ...
    @property
    def checkpoint_seconds(self) -> float: ...  # what its latest checkpoint's upload took off the trial's thread
    def delete_checkpoints(self, run: str) -> None: ...
    def end_run(self, run: str, status: str, tags: Mapping[str, Any] | None = None) -> None: ...


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
        tracked = self.begin(optuna_trial)
        try:
            model, result = train_trial(
                self.study,
                tracked.trial,
                self.train_data,
                self.val_data,
                torch.device(self.slot.torch_device),
                max_epochs=self.settings.max_epochs,
                patience=self.settings.patience,
                start=self.start,
                on_built=tracked.on_built,
                on_epoch=tracked.on_epoch,
            )
        except BaseException as error:
            tracked.fail(error)
            raise
        return tracked.finish(model, result)

    def begin(self, optuna_trial: optuna.Trial) -> TrackedTrial:
        """Start tracking a claimed trial: its seed and setup recorded, its params sampled, its MLflow run
        started (or a dead trial's reopened, for its retry). Whichever loop trains it (alone or in a pack) then
        ends it with ``finish`` or ``fail``."""
        return TrackedTrial(self, optuna_trial)


def resumed_trial(optuna_trial: optuna.Trial, data_seed: int) -> tuple[FrozenTrial, str | None] | None:
    """The trial a retry resumes (RESUMES_ATTR), when it trained on the same data split, and its MLflow run. One
    killed before it had named its run (while reading it back) passes on the run of the trial it resumed in turn."""
    number = optuna_trial.user_attrs.get(RESUMES_ATTR)
    source = None
    while number is not None:
        trial = trial_numbered(optuna_trial.study, number)
        if SEED_ATTR not in trial.user_attrs or trial.user_attrs.get(SETUP_ATTR, {}).get("data_seed") != data_seed:
            break
        source = source or trial
        if RUN_ID_ATTR in trial.user_attrs:
            return source, trial.user_attrs[RUN_ID_ATTR]
        number = trial.user_attrs.get(RESUMES_ATTR)
    return None if source is None else (source, None)


class TrackedTrial:
    """One trial from its start to its end: params, seed, MLflow run, curves, checkpoints, pruning, weights and how
    it ended. A retry of a dead trial takes up its seed and MLflow run, and (trained alone) its last checkpoint."""

    def __init__(self, objective: Objective, optuna_trial: optuna.Trial) -> None:
        self.objective, self.optuna_trial = objective, optuna_trial
        settings, tracker = objective.settings, objective.tracker
        resumes = resumed_trial(optuna_trial, settings.seed)
        source = None if resumes is None else resumes[0]
        seed = source.user_attrs[SEED_ATTR] if source else trial_seed(settings.seed, optuna_trial.number)
        reevaluates = optuna_trial.user_attrs.get(REEVALUATES_ATTR) or {}
        if source is None and "seed" in reevaluates:  # the configuration's own seed: no seed noise in the comparison
            seed = reevaluates["seed"]
        optuna_trial.set_user_attr(SEED_ATTR, seed)
        optuna_trial.set_user_attr(
            SETUP_ATTR,
            {
                "data_seed": settings.seed,
                "threads": objective.slot.threads,
                "max_epochs": settings.max_epochs,
                "patience": settings.patience,
            },
        )
        self.trial = new_trial(objective.study.space, optuna_trial, seed, objective.start)
        tags = {**settings.run_tags, "trial_number": optuna_trial.number, WORKER: worker_name()}
        self.resumes: int | None = None  # the trial whose run this one went on in
        self.resumed = None if resumes is None else self._continue_run(*resumes, tags)
        if self.resumed is None:
            self.run = tracker.start_run(
                settings.experiment_id, f"trial-{optuna_trial.number}", parent_run_id=settings.parent_run_id, tags=tags
            )
        else:
            self.run = self.resumed.run
        self.naming = RunNaming(tracker, self.run, optuna_trial)
        if self.resumed is not None:
            self.naming.record(wait=False)  # at once: a retry of this one finds the run through it
        self.tags: dict[str, Any] = {STATE_TAG: "FAIL"}
        self.value: float | None = None  # a completed trial's best validation loss
        self.best_so_far: tuple[float, int] | None = None  # (val_loss, epoch) of its best epoch yet
        self.training: Training | None = None  # set once built, when trained alone (checkpoints need it)
        self.best_weights: Callable[[], Mapping[str, Any] | None] = lambda: None  # its best epoch's, so far
        self.schedule = Schedule(settings.checkpoint_every)
        self.checkpointed = self.resumed is not None  # whether its run may hold checkpoints

    def _continue_run(self, source: FrozenTrial, run_id: str | None, tags: dict[str, Any]) -> Resumed | None:
        """Reopen the run of the trial this one resumes; None (a new run) when it has none or cannot be read."""
        if run_id is None:
            return None
        try:
            resumed = self.objective.tracker.resume_run(run_id, {**tags, "resumes_trial": source.number})
        except Exception as error:
            self.optuna_trial.set_user_attr("resume_failed", describe_error(error))
            return None
        self.resumes = source.number
        self.optuna_trial.set_user_attr(RESUMED_FROM_ATTR, {"trial": source.number, "epoch": 0})
        return resumed

    @property
    def number(self) -> int:
        return int(self.optuna_trial.number)

    def on_built(self, training: Training) -> None:
        """Log the trial's params once its model is built (the builder may suggest more of them), and, for a retry,
        put the training back where its last checkpoint left it."""
        self.log_built(training.model)
        self.training = training
        self.best_weights = lambda: training.state.best_state
        checkpoint = None if self.resumed is None else self.resumed.checkpoint
        if checkpoint is None:
            return
        why_not = mismatch(checkpoint, training, self.trial.seed)
        if why_not is not None:
            self.optuna_trial.set_user_attr("resume_failed", f"its checkpoint does not fit: {why_not}")
            return
        restore(training, checkpoint)
        self.optuna_trial.set_user_attr(RESUMED_FROM_ATTR, {"trial": self.resumes, "epoch": training.state.epoch})
        for epoch, values in enumerate(training.state.history, start=1):  # the whole curve, in Optuna and MLflow
            self._log(values, epoch)
            self._note_best(values, epoch)
            self.optuna_trial.report(values["val_loss"], epoch)

    def log_built(self, model: nn.Module) -> None:
        """Log the trial's params (those a resumed run has already are kept as they are)."""
        objective, trial = self.objective, self.trial
        settings, start = objective.settings, objective.start
        n_params = sum(parameter.numel() for parameter in model.parameters())
        lineage = {}
        if start is not None:
            frozen, loaded = ",".join(objective.study.freeze), loaded_summary(fitting(model, start))
            lineage = {"start_from": start.source, "frozen": frozen, "loaded": loaded}
        params = {
            **trial.params,
            "seed": trial.seed,
            "n_params": n_params,
            "device": objective.slot.device,
            "threads": objective.slot.threads,
            "max_epochs": settings.max_epochs,
            "patience": settings.patience,
            **lineage,
        }
        if self.resumed is not None:  # MLflow refuses a param's second value
            params = {key: value for key, value in params.items() if key not in self.resumed.params}
        if params:
            objective.tracker.log_params(self.run, params)

    def _log(self, values: Mapping[str, float], step: int) -> None:
        """Log a step's values, but those the run has already (a resumed trial's first attempt sent them)."""
        if self.resumed is not None:
            values = {key: value for key, value in values.items() if step not in self.resumed.logged.get(key, ())}
        if values:
            self.objective.tracker.log_metrics(self.run, values, step=step)

    def _note_best(self, values: Mapping[str, float], epoch: int) -> None:
        if self.best_so_far is None or values["val_loss"] < self.best_so_far[0]:
            self.best_so_far = (values["val_loss"], epoch)

    def on_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Log an epoch's curves, report its validation loss, checkpoint when due, and stop the trial if the pruner
        says so."""
        self._log(values, epoch)
        self._note_best(values, epoch)
        self.naming.record(wait=False)
        self.optuna_trial.report(values["val_loss"], epoch)
        if self.training is not None and self.schedule.due():
            tracker, started = self.objective.tracker, time.perf_counter()
            tracker.log_checkpoint(self.run, snapshot(self.training, self.trial.seed))
            self.schedule.cost = time.perf_counter() - started + tracker.checkpoint_seconds
            self.checkpointed = True
        if self.optuna_trial.should_prune():
            self.optuna_trial.set_user_attr(PRUNED_EPOCH_ATTR, epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (val_loss {values['val_loss']:.6g})")

    def finish(self, model: nn.Module, result: FitResult) -> float:
        """A trained trial: how it ended, its best weights and value logged, its checkpoints removed; its run
        closed. A NaN before any finite epoch stops it (TrialStopped)."""
        try:
            self._record(model, result)
        except BaseException as error:
            self.fail(error)
            raise
        self.tags.update({STATE_TAG: "COMPLETE", "best_epoch": result.best_epoch})  # the value: metric best_val_loss
        self.value = result.best_val_loss
        if self.checkpointed:
            self.objective.tracker.delete_checkpoints(self.run)
        self._close("FINISHED")
        return result.best_val_loss

    def _record(self, model: nn.Module, result: FitResult) -> None:
        epochs = len(result.history)  # epochs on the curve (a NaN epoch is not)
        self.tags.update({REASON: result.stop_reason, "epochs": epochs})
        for key, value in ((REASON, result.stop_reason), ("epochs", epochs)):
            self.optuna_trial.set_user_attr(key, value)
        if result.best_epoch is None:
            raise TrialStopped(result.stop_reason)
        self.optuna_trial.set_user_attr("best_epoch", result.best_epoch)
        self.objective.tracker.log_state_dict(self.run, model.state_dict())
        self._log({OBJECTIVE_NAME: result.best_val_loss}, result.best_epoch)

    def fail(self, error: BaseException) -> None:
        """Close the trial's run for how it stopped: pruned (its curve, best weights so far and last checkpoint
        stay: ``searchlab resume`` can go on with it), interrupted (its checkpoint stays for its retry), or
        failed."""
        status = "FAILED"
        if isinstance(error, optuna.TrialPruned):
            status = "FINISHED"  # a pruned trial ended as planned
            if self.best_so_far is not None:  # so that every trial run has the metric Compare plots
                loss, epoch = self.best_so_far
                self._log({OBJECTIVE_NAME: loss}, epoch)
            weights = self.best_weights()
            if weights is not None:
                self.objective.tracker.log_state_dict(self.run, weights)
            self.tags.update(
                {
                    STATE_TAG: "PRUNED",
                    REASON: str(error),
                    PRUNED_EPOCH_ATTR: self.optuna_trial.user_attrs[PRUNED_EPOCH_ATTR],
                }
            )
            self.optuna_trial.set_user_attr(REASON, str(error))
        elif isinstance(error, KeyboardInterrupt):
            status, self.tags[REASON] = "KILLED", str(error) or INTERRUPTED
        else:
            if not isinstance(error, TrialStopped):  # a stopped trial's tags say why already
                self.tags[REASON] = describe_error(error)
            if self.checkpointed:  # no retry will resume it
                self.objective.tracker.delete_checkpoints(self.run)
        self._close(status)

    def _close(self, status: str) -> None:
        try:
            self.naming.record(wait=True)
        finally:
            tags = {**self.tags, RUN_NAME_TAG: run_name(self.number, self.tags, self.value)}
            self.objective.tracker.end_run(self.run, status, tags=tags)


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
