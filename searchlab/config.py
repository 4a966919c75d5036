"""One frozen RunConfig, resolved in one place: study file < SEARCHLAB_* environment < CLI flags; and the frozen
settings a run's workers and trials get from it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from searchlab.catalog import PRUNERS, SAMPLERS
from searchlab.devices import parse_workers
from searchlab.errors import ConfigError
from searchlab.settings import default_tracking_uri, from_environment
from searchlab.study import Study, check_int, check_name, check_positive_int, check_seed, check_timeout

# Seconds between two checkpoints of a trial, taken at the end of an epoch (at least 100x what the last one cost:
# checkpoint.Schedule); benchmarks/resume.py measures what a checkpoint costs against the model's size.
CHECKPOINT_EVERY_SECONDS = 60.0

# The run's settings that joining workers adopt (no URLs: those are each host's own).
RUN_SETTINGS = (
    "seed",
    "sampler",
    "pruner",
    "max_epochs",
    "patience",
    "retries",
    "heartbeat",
    "pack",
    "checkpoint_every",
)


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``searchlab run`` invocation uses besides the study itself."""

    study_name: str
    n_trials: int
    timeout: float | None
    sampler: str
    pruner: str
    seed: int
    storage: str | None  # None: the embedded journal file
    tracking_uri: str
    max_epochs: int
    patience: int
    workers: str = "1"  # a count, or "auto": one per device slot
    devices: str = "auto"
    trials_per_device: int = 1
    pack: int = 1  # trials each worker trains at once as one vectorised model (searchlab.pack)
    retries: int = 1
    heartbeat: int = 10  # seconds between heartbeats on database storages; stale after 3 missed
    report: bool = True  # write the study report to the parent run at the end of the run
    register: bool = True  # register the best trial's model (alias best) at the end of the run
    threads: int | None = None  # torch threads per worker; None: 1 per CPU worker, a share of the cores per GPU one
    tracking_wait: float = 120.0  # seconds an unreachable tracking store is waited for before records are saved
    checkpoint_every: float = CHECKPOINT_EVERY_SECONDS  # at an epoch's end, once this many seconds passed; 0: each

    def shared_settings(self) -> dict[str, Any]:
        """The settings that workers joining the run adopt (RUN_SETTINGS)."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}


@dataclass(frozen=True)
class RunStarted:
    """What the coordinator tells its workers once the run is set up: where trials are tracked, and when the run
    stops taking new trials (``time.time()``; None: when the budget is met)."""

    experiment_id: str
    parent_run_id: str
    deadline: float | None


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a run is trained and tracked with, besides its study, data, device and tracker."""

    experiment_id: str
    parent_run_id: str
    seed: int
    max_epochs: int
    patience: int
    run_tags: Mapping[str, str]  # on every trial's MLflow run
    checkpoint_every: float = CHECKPOINT_EVERY_SECONDS

    @classmethod
    def of(cls, config: RunConfig, run: RunStarted) -> TrialSettings:
        return cls(
            run.experiment_id,
            run.parent_run_id,
            config.seed,
            config.max_epochs,
            config.patience,
            {"study_name": config.study_name, "sampler": config.sampler, "pruner": config.pruner},
            config.checkpoint_every,
        )


def resolve_config(
    study: Study, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> RunConfig:
    """Merge the study's own settings, the environment and explicit flags (None means "not given")."""
    values: dict[str, Any] = {
        "study_name": study.name,
        "n_trials": study.n_trials,
        "timeout": study.timeout,
        "sampler": study.sampler,
        "pruner": study.pruner,
        "seed": study.seed,
        "storage": None,
        "tracking_uri": default_tracking_uri(),
        "max_epochs": study.max_epochs,
        "patience": study.patience,
        "pack": study.pack,
        # settings a study file does not hold: RunConfig's own defaults
        **{f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING},
    }
    values.update(from_environment(os.environ if env is None else env))
    unknown = set(flags or {}) - set(values)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}: use {', '.join(values)}")
    values.update({name: value for name, value in (flags or {}).items() if value is not None})
    config = RunConfig(**values)
    _check(config)
    return config


def _check(config: RunConfig) -> None:
    if config.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {config.sampler!r}: use one of {', '.join(SAMPLERS)}")
    if config.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {config.pruner!r}: use one of {', '.join(PRUNERS)}")
    if not config.study_name.strip():
        raise ConfigError("the study name must not be empty")
    check_name("the study name", config.study_name)
    for name in ("n_trials", "max_epochs", "patience", "trials_per_device", "heartbeat", "pack"):
        check_positive_int(name, getattr(config, name))
    if config.threads is not None:
        check_positive_int("threads", config.threads)
    if not (isinstance(config.checkpoint_every, int | float) and config.checkpoint_every >= 0):
        raise ConfigError(f"checkpoint_every must be a number of seconds, 0 or more, got {config.checkpoint_every!r}")
    check_int("retries", config.retries)
    if config.retries < 0:
        raise ConfigError(f"retries must be 0 or more, got {config.retries}")
    parse_workers(config.workers)
    check_seed("seed", config.seed)
    check_timeout("timeout", config.timeout)
