"""One frozen RunConfig, resolved in one place: study file < SEARCHLAB_* environment < CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchlab.devices import parse_workers
from searchlab.errors import ConfigError
from searchlab.study import (
    PRUNERS,
    SAMPLERS,
    Study,
    check_int,
    check_name,
    check_positive_int,
    check_seed,
    check_timeout,
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
    retries: int = 1
    heartbeat: int = 10  # seconds between heartbeats on database storages; stale after 3 missed
    report: bool = True  # write the study report to the parent run at the end of the run
    register: bool = True  # register the best trial's model (alias best) at the end of the run
    threads: int | None = None  # torch threads per worker; None: 1 per CPU worker, a share of the cores per GPU one
    tracking_wait: float = 120.0  # seconds an unreachable tracking store is waited for before records are saved


def _bool(text: str) -> bool:
    value = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
             "off": False}.get(text.lower())
    if value is None:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


# field → (environment variable, parser)
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "study_name": ("SEARCHLAB_STUDY_NAME", str),
    "n_trials": ("SEARCHLAB_TRIALS", int),
    "timeout": ("SEARCHLAB_TIMEOUT", _positive_float),
    "sampler": ("SEARCHLAB_SAMPLER", str),
    "pruner": ("SEARCHLAB_PRUNER", str),
    "seed": ("SEARCHLAB_SEED", int),
    "storage": ("SEARCHLAB_STORAGE", str),
    "tracking_uri": ("SEARCHLAB_TRACKING_URI", str),
    "max_epochs": ("SEARCHLAB_MAX_EPOCHS", int),
    "workers": ("SEARCHLAB_WORKERS", str),
    "devices": ("SEARCHLAB_DEVICES", str),
    "trials_per_device": ("SEARCHLAB_TRIALS_PER_DEVICE", int),
    "retries": ("SEARCHLAB_RETRIES", int),
    "heartbeat": ("SEARCHLAB_HEARTBEAT", int),
    "report": ("SEARCHLAB_REPORT", _bool),
    "register": ("SEARCHLAB_REGISTER", _bool),
    "threads": ("SEARCHLAB_THREADS", int),
    "tracking_wait": ("SEARCHLAB_TRACKING_WAIT", _positive_float),
}


def default_tracking_uri() -> str:
    """MLflow's own default: ``sqlite:///mlflow.db`` in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings given by SEARCHLAB_* variables (MLFLOW_TRACKING_URI as the tracking fallback)."""
    values: dict[str, Any] = {}
    for name, (variable, parse) in ENVIRONMENT.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            values[name] = parse(text)
        except ValueError:
            kind = {_positive_float: "a positive number", _bool: "true or false"}.get(parse, "an integer")
            raise ConfigError(f"{variable}={text!r} must be {kind}") from None
    if "tracking_uri" not in values and env.get("MLFLOW_TRACKING_URI", "").strip():
        values["tracking_uri"] = env["MLFLOW_TRACKING_URI"].strip()
    return values


def resolve_config(study: Study, flags: Mapping[str, Any] | None = None,
                   env: Mapping[str, str] | None = None) -> RunConfig:
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
    for name in ("n_trials", "max_epochs", "patience", "trials_per_device", "heartbeat"):
        check_positive_int(name, getattr(config, name))
    if config.threads is not None:
        check_positive_int("threads", config.threads)
    check_int("retries", config.retries)
    if config.retries < 0:
        raise ConfigError(f"retries must be 0 or more, got {config.retries}")
    parse_workers(config.workers)
    check_seed("seed", config.seed)
    check_timeout("timeout", config.timeout)
