"""Running a study: open the stores, then the one search loop (ask → objective → tell), then a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.config import RunConfig
from searchlab.errors import ConfigError, TrialStopped, describe_error
from searchlab.storage import describe, mask_password, open_storage
from searchlab.study import Study


@dataclass
class RunSummary:
    """Where one invocation's results are, and how it went."""

    study_name: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    n_trials: int = 0
    states: dict[str, int] = field(default_factory=dict)
    best: FrozenTrial | None = None

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.states.items())) or "none"
        lines = [
            f"study      {self.study_name}: {self.n_trials} trials this run ({counts})",
            f"storage    {self.storage}",
            f"tracking   {mask_password(self.tracking_uri)} (experiment {self.experiment_id}, "
            f"parent run {self.parent_run_id})",
        ]
        if self.best is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in self.best.params.items())
            lines.append(f"best       trial {self.best.number}: val_loss={self.best.value:.6g} "
                         f"(run {self.best.user_attrs.get('mlflow_run_id')}) {params}")
        if self.tracking_uri.startswith(("http://", "https://")):
            lines.append(f"open       {mask_password(self.tracking_uri)}/#/experiments/{self.experiment_id}")
        else:
            lines.append(f"open with  mlflow ui --backend-store-uri {mask_password(self.tracking_uri)}")
        return lines


class StudyInterrupted(Exception):
    """Ctrl-C stopped the run after every open trial and run was closed; carries the summary."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def make_sampler(name: str, seed: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler; the seed also depends on the trials already in the study, so a continued study
    does not replay the first invocation's samples."""
    sampler_seed = int(np.random.SeedSequence([seed, n_existing]).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=sampler_seed)
    return optuna.samplers.TPESampler(seed=sampler_seed)


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, n_trials: int,
             timeout: float | None, on_trial_end: Callable[[FrozenTrial], None]) -> None:
    """The one search loop: ask → objective → tell, until ``n_trials`` are told or ``timeout`` passes.

    A trial that fails is recorded FAIL with its reason and the study goes on; bad input and Ctrl-C fail the
    open trial and stop the loop. No trial is left RUNNING.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(n_trials):
        if deadline is not None and time.monotonic() >= deadline:
            return
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        except (Exception, KeyboardInterrupt) as error:
            if isinstance(error, KeyboardInterrupt):
                reason = "interrupted (Ctrl-C)"
            else:
                reason = str(error) if isinstance(error, TrialStopped) else describe_error(error)
            trial.set_user_attr("fail_reason", reason)
            frozen = study.tell(trial, state=TrialState.FAIL)
            if isinstance(error, ConfigError | KeyboardInterrupt):
                raise
        else:
            frozen = study.tell(trial, value)
        on_trial_end(frozen)


def run_study(study: Study, config: RunConfig, *, progress: bool = True) -> RunSummary:
    """Run ``config.n_trials`` trials of ``study`` and track them; bad input fails before anything is written."""
    import torch  # noqa: F401  (imported before mlflow: heavy either way, but fail here if missing)

    from searchlab.data import prepare_split
    from searchlab.devices import default_device
    from searchlab.objective import Objective
    from searchlab.tasks import get_task
    from searchlab.tracking import MlflowTracker, check_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and summary say it all
    task = get_task(study.task)
    train_data, val_data = prepare_split(load_data(study, config.seed), task)
    preflight_model(study, task, val_data)
    check_tracking_uri(config.tracking_uri)
    storage = open_storage(config.storage)
    optuna_study = optuna.create_study(storage=storage, study_name=config.study_name, direction="minimize",
                                       load_if_exists=True)
    if optuna_study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ConfigError(f"study {config.study_name!r} in {describe(config.storage)} maximizes; "
                          "searchlab minimizes validation loss: choose another --study-name")
    optuna_study.sampler = make_sampler(config.sampler, config.seed, len(optuna_study.trials))
    tracker = MlflowTracker(config.tracking_uri)
    experiment_id = tracker.experiment_id(config.study_name)
    parent_run_id = tracker.start_run(experiment_id, f"{config.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      tags={"study_name": config.study_name, "role": "study"})
    summary = RunSummary(config.study_name, describe(config.storage), config.tracking_uri, experiment_id,
                         parent_run_id)
    status = "FAILED"
    try:
        tracker.log_params(parent_run_id, {
            "task": study.task, "sampler": config.sampler, "seed": config.seed, "n_trials": config.n_trials,
            "timeout": config.timeout, "max_epochs": config.max_epochs, "patience": config.patience,
            "storage": describe(config.storage), "searched": ",".join(study.searched),
        })
        objective = Objective(study, train_data, val_data, tracker, experiment_id, parent_run_id, config.seed,
                              config.max_epochs, config.patience, default_device(),
                              {"study_name": config.study_name, "sampler": config.sampler})
        bar = _progress_bar(config, enabled=progress)

        def on_trial_end(trial: FrozenTrial) -> None:
            summary.n_trials += 1
            summary.states[trial.state.name] = summary.states.get(trial.state.name, 0) + 1
            if trial.state == TrialState.FAIL:
                bar.write(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason')}")
            if trial.state == TrialState.COMPLETE and (summary.best is None or trial.value < summary.best.value):
                summary.best = trial
            bar.update(1)
            if summary.best is not None:
                bar.set_postfix_str(f"best={summary.best.value:.4g} (trial {summary.best.number})")

        try:
            optimize(optuna_study, objective, n_trials=config.n_trials, timeout=config.timeout,
                     on_trial_end=on_trial_end)
        finally:
            bar.close()
        summary.best = _best_trial(optuna_study)
        if summary.best is not None:
            tracker.log_metrics(parent_run_id, {"best_value": summary.best.value}, step=0)
            tracker.set_tags(parent_run_id, {"best_trial": summary.best.number,
                                             "best_run_id": summary.best.user_attrs.get("mlflow_run_id")})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise StudyInterrupted(summary) from None
    finally:
        tracker.set_tags(parent_run_id, {"state": status})
        tracker.end_run(parent_run_id, status)
    return summary


def preflight_model(study: Study, task: Any, val_data: Any) -> None:
    """Build the model from a throwaway in-memory trial and run a few validation examples through it, so that
    a failing builder, a wrong head or a wrong output shape fails before anything is written."""
    import torch

    from searchlab.data import first_examples
    from searchlab.objective import build_model, sample_params
    from searchlab.tasks import ModelError
    from searchlab.trial import Trial

    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    try:
        model = build_model(study, Trial(probe, sample_params(study.space, probe), seed=0), task)
        inputs, targets = first_examples(val_data, 8)
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
        task.align(outputs, targets)
        task.check_outputs(outputs)
    except ModelError:
        raise
    except Exception as error:
        raise ConfigError(f"the study's model failed on a validation batch: {describe_error(error)}") from None


def load_data(study: Study, seed: int) -> Any:
    """The study's Split; a data() that raises is a study-file error."""
    try:
        return study.data(seed)
    except Exception as error:
        raise ConfigError(f"the study's data({seed}) failed: {describe_error(error)}") from None


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _progress_bar(config: RunConfig, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=config.n_trials, desc=config.study_name, unit="trial", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)
