"""Reading a study back: its trials as a table, its best trial, and the best weights from MLflow."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from searchlab.config import default_tracking_uri, from_environment
from searchlab.errors import ConfigError, first_line
from searchlab.storage import load_existing_study, mask_password


def open_results(file: str | None, storage: str | None, study_name: str | None) -> Any:
    """The existing Optuna study named by the flag, SEARCHLAB_STUDY_NAME, or FILE's study (in that order)."""
    env = from_environment(os.environ)
    storage = storage or env.get("storage")
    study_name = study_name or env.get("study_name")
    if study_name is None and file is not None:
        from searchlab.study import load_study_file

        study_name = load_study_file(file).name
    return load_existing_study(storage, study_name)


def tracking_uri_for(flag: str | None) -> str:
    return flag or from_environment(os.environ).get("tracking_uri") or default_tracking_uri()


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_trials(trials: list[Any]) -> str:
    """A plain-text table of trials, one row each."""
    rows = [("number", "state", "value", "mlflow_run_id", "params")]
    for trial in trials:
        params = " ".join(f"{key}={_cell(value)}" for key, value in trial.params.items())
        value = "-" if trial.value is None else _cell(trial.value)
        rows.append((str(trial.number), trial.state.name, value, trial.user_attrs.get("mlflow_run_id", "-"), params))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
                     for row in rows)


def best_trial(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet") from None


def format_best(trial: Any) -> str:
    lines = [f"trial      {trial.number}", f"val_loss   {trial.value:.6g}",
             f"run id     {trial.user_attrs.get('mlflow_run_id', '-')}"]
    lines += [f"param      {key} = {_cell(value)}" for key, value in trial.params.items()]
    return "\n".join(lines)


def export_weights(trial: Any, tracking_uri: str, path: str | Path) -> None:
    """Copy the trial's state_dict artifact to ``path``, after checking that it loads with weights_only=True."""
    import torch

    from searchlab.tracking import MlflowTracker, check_tracking_uri

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id is None:
        raise ConfigError(f"trial {trial.number} has no MLflow run id")
    check_tracking_uri(tracking_uri)
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"folder {str(path.parent)!r} does not exist: create it or choose another --export path")
    with tempfile.TemporaryDirectory() as folder:
        try:
            downloaded = MlflowTracker(tracking_uri).download_state_dict(run_id, folder)
        except Exception as error:
            raise ConfigError(f"cannot fetch the weights of run {run_id} from {mask_password(tracking_uri)}: "
                              f"{first_line(error)}; pass the --tracking-uri the study ran with") from None
        try:
            torch.load(downloaded, weights_only=True)
        except Exception as error:
            raise ConfigError(f"the weights of run {run_id} do not load as a state_dict: {first_line(error)}") from None
        shutil.copyfile(downloaded, path)
