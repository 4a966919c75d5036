"""Initialisation and transfer learning: init schemes, a starting state_dict, frozen layers.

A study may start every trial from weights: a state_dict file, ``runs:/RUN_ID`` (that run's weights),
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (a registered model), or ``study:NAME`` (the best trial of an
earlier study in the same storage and tracking store). Parameters whose names and shapes match are loaded
(a new head keeps its fresh initialisation); layers named in ``freeze`` stop learning and leave the optimizer.
Weights are always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import ast
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchlab.errors import ConfigError, first_line
from searchlab.tasks import ModelError

# Bookkeeping params of a run that are not hyperparameters of its model.
NOT_MODEL_PARAMS = {"seed", "n_params", "device", "threads", "max_epochs", "patience", "start_from", "frozen"}


def initialise(model: nn.Module, scheme: str) -> None:
    """Kaiming (for ReLU networks) or Xavier (for tanh/sigmoid) weights and zero biases; "default" keeps
    PyTorch's own initialisation."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class Start:
    """Weights to start from, and the source's model params (e.g. its width) for the builder to reuse."""

    source: str
    state_dict: Mapping[str, torch.Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_params(client: Any, run_id: str) -> dict[str, Any]:
    """A run's model params (what its builder was given), parsed back from MLflow's strings."""
    params = client.get_run(run_id).data.params
    return {key: _parse(value) for key, value in params.items() if key not in NOT_MODEL_PARAMS}


def _load(path: Path) -> Mapping[str, torch.Tensor]:
    if path.is_dir():
        files = sorted(path.rglob("*.pt"))
        if not files:
            raise ConfigError(f"no .pt state_dict file in {path}")
        path = files[0]
    try:
        state_dict = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ConfigError(f"{path} does not load as weights (torch.load, weights_only=True): {first_line(error)}") \
            from None
    if not isinstance(state_dict, Mapping):
        raise ConfigError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
    return state_dict


def resolve_start(spec: str, *, storage: str | None, tracking_uri: str) -> Start:
    """Fetch the weights (and the source's model params) that ``spec`` names."""
    from searchlab.tracking import STATE_DICT_FILE, MlflowTracker, trial_run_id

    if spec.startswith("study:"):
        from searchlab.results import best_trial
        from searchlab.storage import load_existing_study, mask_password

        name = spec[len("study:"):]
        best = best_trial(load_existing_study(storage, name))
        run_id = trial_run_id(MlflowTracker(tracking_uri).client, name, best)
        if run_id is None:
            raise ConfigError(f"start_from {spec!r}: its best trial {best.number} has no MLflow run in "
                              f"{mask_password(tracking_uri)}: pass the --tracking-uri it ran with")
        spec = f"runs:/{run_id}"
    if not spec.startswith(("runs:/", "models:/")):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"start_from {spec!r}: no such file (or runs:/RUN_ID, models:/NAME@ALIAS, study:NAME)")
        return Start(spec, _load(path))
    import mlflow.artifacts

    tracker = MlflowTracker(tracking_uri)
    client = tracker.client
    with tempfile.TemporaryDirectory() as folder:
        try:
            if spec.startswith("runs:/"):
                run_id, _, artifact = spec[len("runs:/"):].partition("/")
                uri = f"runs:/{run_id}/{artifact or STATE_DICT_FILE}"
            else:  # the registry of this tracking store, whatever MLflow's global registry URI says
                match = re.fullmatch(r"models:/([^@/]+)(?:@(.+)|/(\d+))", spec)
                if match is None:
                    raise ValueError("write models:/NAME@ALIAS or models:/NAME/VERSION")
                name, alias, number = match.groups()
                version = client.get_model_version_by_alias(name, alias) if alias else \
                    client.get_model_version(name, number)
                run_id, uri = version.run_id, client.get_model_version_download_uri(name, version.version)
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)
            params = run_params(client, run_id) if run_id else {}
        except Exception as error:
            raise ConfigError(f"start_from {spec!r}: cannot fetch the weights ({first_line(error)})") from None
        return Start(spec, _load(Path(local)), params)


def load_start(model: nn.Module, start: Start) -> list[str]:
    """Copy the parameters whose names and shapes match; returns their names (a ModelError when none match)."""
    own = model.state_dict()
    matching = {k: v for k, v in start.state_dict.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ModelError(f"none of the weights in {start.source} fit this model: build the same layers "
                         "(names and shapes) as the model they come from")
    model.load_state_dict(matching, strict=False)
    return sorted(matching)


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Turn off requires_grad for parameters whose names start with one of ``prefixes``; returns their names."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ModelError(f"freeze={prefix!r} names no parameter of the model (it has {', '.join(names[:6])}…)")
    frozen = []
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen
