"""``searchlab resume``: go on with a pruned (or dead, not retried) trial for more epochs, in its own MLflow run.

A pruned trial keeps its last checkpoint and its best weights so far. Resuming it adds a trial to the study with
its params and seed (Optuna's records are final: the pruned one stays as it was), trained from that checkpoint (or
from its first epoch when it saved none, which on the CPU retrains the same epochs exactly) up to ``--epochs``,
with early stopping and no pruner; its run goes on from the pruned epoch and ends with the new best weights.
"""

from __future__ import annotations

import dataclasses

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import retried_numbers
from searchlab.config import RunConfig, TrialSettings
from searchlab.errors import ConfigError
from searchlab.objective import Objective
from searchlab.outcome import run_trial
from searchlab.preparation import plan_slots, prepare
from searchlab.recovery import worker_name
from searchlab.settings import (
    EXPERIMENT_ATTR,
    PARENT_RUN_ATTR,
    RESUMES_ATTR,
    RUN_ID_ATTR,
    SEED_ATTR,
    SETUP_ATTR,
    WORKER,
)
from searchlab.signals import interrupt_once
from searchlab.storage import Heartbeat, close_storage, load_existing_study, open_storage, uncached
from searchlab.study import Study
from searchlab.tracking import MlflowTracker


def resumable(trials: list[FrozenTrial], number: int, epochs: int) -> FrozenTrial:
    """Trial ``number``, when it can go on to ``epochs``; else a ConfigError that says why."""
    if not 0 <= number < len(trials):
        raise ConfigError(f"no trial {number}: the study has trials 0..{len(trials) - 1}")
    trial = trials[number]
    if trial.state not in (TrialState.PRUNED, TrialState.FAIL):
        raise ConfigError(f"trial {number} is {trial.state.name}: only a pruned or failed trial can be resumed")
    if number in retried_numbers(trials):
        raise ConfigError(f"trial {number} was retried already: resume its retry instead")
    if SEED_ATTR not in trial.user_attrs or RUN_ID_ATTR not in trial.user_attrs:
        raise ConfigError(f"trial {number} has no recorded seed or MLflow run: it was not run by searchlab")
    trained = max(trial.intermediate_values, default=0)
    if epochs <= trained:
        raise ConfigError(f"--epochs {epochs}: trial {number} has trained {trained} epochs; ask for more")
    return trial


def resume_trial(study: Study, config: RunConfig, number: int, epochs: int) -> FrozenTrial:
    """Train trial ``number`` of the study on to ``epochs`` as a new trial (see the module's docstring)."""
    source = resumable(load_existing_study(config.storage, config.study_name).get_trials(), number, epochs)
    storage = open_storage(config.storage, heartbeat=config.heartbeat)
    try:
        optuna_study = uncached(
            optuna.load_study(study_name=config.study_name, storage=storage, pruner=optuna.pruners.NopPruner())
        )
        setup = source.user_attrs[SETUP_ATTR]
        config = dataclasses.replace(config, seed=setup["data_seed"], max_epochs=epochs, patience=setup["patience"])
        prepared = prepare(study, config, check_tracking=True)
        (slot,) = plan_slots(dataclasses.replace(config, workers="1"))
        import torch

        torch.set_num_threads(slot.threads)
        attrs = optuna_study.user_attrs
        settings = TrialSettings(
            attrs[EXPERIMENT_ATTR],
            attrs[PARENT_RUN_ATTR],
            config.seed,
            epochs,
            config.patience,
            {"study_name": config.study_name, "sampler": "resume", "pruner": "none"},
            config.checkpoint_every,
        )
        tracker = MlflowTracker(config.tracking_uri, retry_seconds=config.tracking_wait)
        objective = Objective(study, prepared.train, prepared.val, tracker, settings, slot, prepared.start)
        template = optuna.create_trial(
            state=TrialState.RUNNING,  # this process's from the start (a kill leaves it to the next run's recovery)
            params=source.params,
            distributions=source.distributions,
            user_attrs={RESUMES_ATTR: number, WORKER: worker_name()},
        )
        trial_id = storage.create_new_trial(optuna_study._study_id, template_trial=template)
        trial = optuna.Trial(optuna_study, trial_id)
        with interrupt_once(), Heartbeat(storage, trial_id, config.heartbeat):
            return run_trial(optuna_study, trial, objective)
    finally:
        close_storage(storage)
