"""Weights in the stores: the starting weights a study names, a run's model params, a trial's state_dict exported.

A study may start every trial from a state_dict file, ``runs:/RUN_ID`` (that run's weights), ``models:/NAME@ALIAS``
or ``models:/NAME/VERSION`` (a registered model), or ``study:NAME`` (the best trial of an earlier study in the same
storage and tracking store). Weights are always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from searchlab.endpoints import check_tracking_uri
from searchlab.errors import ConfigError, first_line
from searchlab.results import best_trial, trial_run_id
from searchlab.settings import NOT_MODEL_PARAMS, STATE_DICT_FILE
from searchlab.storage import load_existing_study, mask_password
from searchlab.study import Study
from searchlab.tracking import MlflowTracker
from searchlab.transfer import Start


def parse_model_uri(uri: str) -> tuple[str, str, bool]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as (name, alias or version, whether it is an alias); a
    ConfigError for another URI."""
    match = re.fullmatch(r"models:/([^@/]+)(?:@(.+)|/(\d+))", uri)
    if match is None:
        raise ConfigError(f"{uri!r} is not a registered model: write models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    return (name, alias, True) if number is None else (name, number, False)


def model_version(client: Any, name: str, reference: str, by_alias: bool) -> Any:
    """A registered model's version, by alias or by number."""
    return client.get_model_version_by_alias(name, reference) if by_alias else client.get_model_version(name, reference)


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_params(client: Any, run_id: str) -> dict[str, Any]:
    """A run's model params (what its builder was given), parsed back from MLflow's strings."""
    params = client.get_run(run_id).data.params
    return {key: _parse(value) for key, value in params.items() if key not in NOT_MODEL_PARAMS}


def load_state_dict_file(path: Path) -> Mapping[str, torch.Tensor]:
    """The state_dict in ``path`` (or the first .pt file under a folder), or the error saying why it is not one."""
    if path.is_dir():
        files = sorted(path.rglob("*.pt"))
        if not files:
            raise ConfigError(f"no .pt state_dict file in {path}")
        path = files[0]
    try:
        state_dict = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ConfigError(
            f"{path} does not load as weights (torch.load, weights_only=True): {first_line(error)}"
        ) from None
    if not isinstance(state_dict, Mapping):
        raise ConfigError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
    return state_dict


def start_weights(study: Study, *, storage: str | None, tracking_uri: str) -> Start | None:
    """The weights the study starts from (None when it starts from scratch)."""
    if study.start_from is None:
        return None
    return resolve_start(study.start_from, storage=storage, tracking_uri=tracking_uri)


def resolve_start(spec: str, *, storage: str | None, tracking_uri: str) -> Start:
    """Fetch the weights (and the source's model params) that ``spec`` names."""
    if spec.startswith("study:"):
        name = spec[len("study:") :]
        best = best_trial(load_existing_study(storage, name))
        run_id = trial_run_id(MlflowTracker(tracking_uri).client, name, best)
        if run_id is None:
            raise ConfigError(
                f"start_from {spec!r}: its best trial {best.number} has no MLflow run in "
                f"{mask_password(tracking_uri)}: pass the --tracking-uri it ran with"
            )
        spec = f"runs:/{run_id}"
    if not spec.startswith(("runs:/", "models:/")):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"start_from {spec!r}: no such file (or runs:/RUN_ID, models:/NAME@ALIAS, study:NAME)")
        return Start(spec, load_state_dict_file(path))
    import mlflow.artifacts

    client = MlflowTracker(tracking_uri).client
    with tempfile.TemporaryDirectory() as folder:
        try:
            if spec.startswith("runs:/"):
                run_id, _, artifact = spec[len("runs:/") :].partition("/")
                uri = f"runs:/{run_id}/{artifact or STATE_DICT_FILE}"
            else:  # the registry of this tracking store, whatever MLflow's global registry URI says
                version = model_version(client, *parse_model_uri(spec))
                run_id, uri = version.run_id, client.get_model_version_download_uri(version.name, version.version)
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)
            params = run_params(client, run_id) if run_id else {}
        except Exception as error:
            raise ConfigError(f"start_from {spec!r}: cannot fetch the weights ({first_line(error)})") from None
        return Start(spec, load_state_dict_file(Path(local)), params)


def export_weights(trial: Any, study_name: str, tracking_uri: str, path: str | Path) -> None:
    """Copy the trial's state_dict artifact to ``path``, after checking that it loads with weights_only=True."""
    check_tracking_uri(tracking_uri, writes=False)
    tracker = MlflowTracker(tracking_uri)
    run_id = trial_run_id(tracker.client, study_name, trial)
    if run_id is None:
        raise ConfigError(
            f"trial {trial.number} has no MLflow run in {mask_password(tracking_uri)}: pass the "
            "--tracking-uri the study ran with"
        )
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"folder {str(path.parent)!r} does not exist: create it or choose another --export path")
    with tempfile.TemporaryDirectory() as folder:
        try:
            downloaded = tracker.download_state_dict(run_id, folder)
        except Exception as error:
            raise ConfigError(
                f"cannot fetch the weights of run {run_id} from {mask_password(tracking_uri)}: "
                f"{first_line(error)}; pass the --tracking-uri the study ran with"
            ) from None
        try:
            torch.load(downloaded, weights_only=True)
        except Exception as error:
            raise ConfigError(f"the weights of run {run_id} do not load as a state_dict: {first_line(error)}") from None
        shutil.copyfile(downloaded, path)
