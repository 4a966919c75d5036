"""What searchlab's modules share by name: the SEARCHLAB_* environment, and the keys written into Optuna and MLflow.

A key spelled here is read back elsewhere (by another module, another process, a later run or the user's own
queries): change it here or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from searchlab.errors import ConfigError

# Optuna study attributes
EXPERIMENT_ATTR = "mlflow_experiment_id"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_SETTINGS_ATTR = "searchlab_run_settings"  # the run's settings that joining workers adopt
BUDGET_ATTR = "searchlab_budget"  # how many counted trials the study is to reach
# [first, counted]: the run's first trial number, and how many trials numbered below it count (they no longer change)
BUDGET_FROM_ATTR = "searchlab_budget_from"
NIGHT_ATTR_PREFIX = "searchlab_night:"  # + the night's number (5 digits): one record per nightly sweep
OLD_NIGHTS_ATTR = "searchlab_nights"  # every night's record in one list, rewritten each night (before 2026-12)

# Optuna trial attributes
RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run
RUN_TOKEN_ATTR = "mlflow_run_token"  # ... or its creation token, when the run did not exist yet at the trial's end
FAIL_REASON_ATTR = "fail_reason"
PRUNED_EPOCH_ATTR = "pruned_epoch"
PACK_ATTR = "pack"  # a packed trial's pack: its first trial, its members and the seed of their batch order
SEED_ATTR = "seed"
RESUMES_ATTR = "resumes"  # a retry's: the number of the trial whose run and checkpoint it continues
REEVALUATES_ATTR = "reevaluates"  # a nightly re-evaluation's: {"trial": the trial it retrains, "seed": its seed}
RESUMED_FROM_ATTR = "resumed_from"  # {"trial": that number, "epoch": the checkpoint's epoch (0: none)}
SETUP_ATTR = "setup"  # the data seed, threads and budget a trial trained with (what a replay needs)
WORKER = "worker"  # the process (host:pid) running a trial: an Optuna trial attribute and an MLflow run tag
REASON = "reason"  # why a trial ended: an Optuna trial attribute and an MLflow run tag

# MLflow run tags and artifacts
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# Under MLflow's prefix so that the UI lists it among its own tags, hidden, not on every run's page.
CREATE_TOKEN_TAG = "mlflow.searchlab.createToken"
OLD_CREATE_TOKEN_TAG = "searchlab_create_token"  # of the runs created before it moved
STATE_TAG = "state"  # a trial run's outcome (COMPLETE, PRUNED, FAIL), a parent run's status
STATE_DICT_FILE = "model_state_dict.pt"
OBJECTIVE_NAME = "best_val_loss"  # a trial's value: its best epoch's validation loss (Optuna's metric name too)
# Params a trial's run logs that are not hyperparameters of its model.
NOT_MODEL_PARAMS = frozenset(
    {"seed", "n_params", "device", "threads", "max_epochs", "patience", "start_from", "frozen", "loaded"}
)


def _bool(text: str) -> bool:
    value = {
        "1": True,
        "true": True,
        "yes": True,
        "on": True,
        "0": False,
        "false": False,
        "no": False,
        "off": False,
    }.get(text.lower())
    if value is None:
        raise ValueError
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError
    return value


# RunConfig field → (environment variable, parser)
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
    "pack": ("SEARCHLAB_PACK", int),
    "retries": ("SEARCHLAB_RETRIES", int),
    "heartbeat": ("SEARCHLAB_HEARTBEAT", int),
    "report": ("SEARCHLAB_REPORT", _bool),
    "register": ("SEARCHLAB_REGISTER", _bool),
    "threads": ("SEARCHLAB_THREADS", int),
    "tracking_wait": ("SEARCHLAB_TRACKING_WAIT", _positive_float),
    "checkpoint_every": ("SEARCHLAB_CHECKPOINT_EVERY", _non_negative_float),
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
            kinds: dict[Callable[[str], Any], str] = {
                _positive_float: "a positive number",
                _non_negative_float: "a number of seconds, 0 or more",
                _bool: "true or false",
            }
            kind = kinds.get(parse, "an integer")
            raise ConfigError(f"{variable}={text!r} must be {kind}") from None
    if "tracking_uri" not in values and env.get("MLFLOW_TRACKING_URI", "").strip():
        values["tracking_uri"] = env["MLFLOW_TRACKING_URI"].strip()
    return values


def tracking_uri_for(flag: str | None) -> str:
    """The tracking URI a command that reads results uses: the flag, the environment, or MLflow's default."""
    return flag or from_environment(os.environ).get("tracking_uri") or default_tracking_uri()


def storage_for(flag: str | None) -> str | None:
    """The storage a command that reads results uses: the flag or SEARCHLAB_STORAGE (None: the journal here)."""
    return flag or from_environment(os.environ).get("storage")
