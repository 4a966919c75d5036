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


def study_name_for(file: str | None, flag: str | None) -> str | None:
    """The study named by the flag, SEARCHLAB_STUDY_NAME, or FILE's study (in that order); None if none is."""
    name = flag or from_environment(os.environ).get("study_name")
    if name is None and file is not None:
        from searchlab.study import load_study_file

        name = load_study_file(file).name
    return name


def storage_for(flag: str | None) -> str | None:
    return flag or from_environment(os.environ).get("storage")


def open_results(file: str | None, storage: str | None, study_name: str | None) -> Any:
    """The existing Optuna study named by the flag, SEARCHLAB_STUDY_NAME, or FILE's study (in that order)."""
    return load_existing_study(storage_for(storage), study_name_for(file, study_name))


def tracking_uri_for(flag: str | None) -> str:
    return flag or from_environment(os.environ).get("tracking_uri") or default_tracking_uri()


def publish_report(study: Any, tracking_uri: str | None, out: str | None) -> str:
    """Write the study report to the folder ``out``, or to the study's latest parent run; says where."""
    from searchlab.report import REPORT_FOLDER, log_report, write_report

    if out is not None:
        notes = write_report(study, out)
        return "\n".join([f"report     {out}/summary.md", *notes])
    from searchlab.tracking import MlflowTracker, check_tracking_uri
    from searchlab.worker import PARENT_RUN_ATTR

    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_run_id is None:
        raise ConfigError(f"study {study.study_name!r} has no MLflow run yet: run it with 'searchlab run', "
                          "or write the report to a folder with --out")
    uri = tracking_uri_for(tracking_uri)
    check_tracking_uri(uri)
    client = MlflowTracker(uri).client
    try:
        client.get_run(parent_run_id)
    except Exception:
        raise ConfigError(f"run {parent_run_id} is not in {mask_password(uri)}: pass the --tracking-uri the "
                          "study ran with") from None
    notes = log_report(study, lambda folder, path: client.log_artifacts(parent_run_id, folder, path))
    return "\n".join([f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html, PNGs)", *notes])


def load_best(study_name: str, tracking_uri: str, file: str | None) -> str:
    """Rebuild the registered best model, check its validation loss, and show the Python that does it."""
    from searchlab.registry import BEST_ALIAS, load_registered, snippet, validation_loss

    if file is None:
        raise ConfigError("--load rebuilds the model with its study's builder: pass the study FILE")
    uri = f"models:/{study_name}@{BEST_ALIAS}"
    loaded = load_registered(uri, tracking_uri=tracking_uri, study_file=file)
    info = loaded.info
    return "\n".join([
        f"model      {uri} (version {loaded.version.version}: trial {info['trial_number']}, "
        f"run {info['mlflow_run_id']})",
        f"rebuilt    {info['builder']} with its params; weights loaded (weights_only=True)",
        f"val_loss   {validation_loss(loaded):.6g} on the validation split (the trial recorded {info['val_loss']:.6g})",
        "in Python:", *("    " + line for line in snippet(uri, mask_password(tracking_uri), file).splitlines()),
    ])


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


def export_weights(trial: Any, study_name: str, tracking_uri: str, path: str | Path) -> None:
    """Copy the trial's state_dict artifact to ``path``, after checking that it loads with weights_only=True."""
    import torch

    from searchlab.tracking import MlflowTracker, check_tracking_uri, trial_run_id

    check_tracking_uri(tracking_uri, writes=False)
    run_id = trial_run_id(MlflowTracker(tracking_uri).client, study_name, trial)
    if run_id is None:
        raise ConfigError(f"trial {trial.number} has no MLflow run in {mask_password(tracking_uri)}: pass the "
                          "--tracking-uri the study ran with")
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
