"""The best model in the MLflow Model Registry, and back into PyTorch.

A registered version is the folder ``model/`` of the trial's run: its state_dict, the study file's source and
``model_info.json`` (the builder, its params, the input shape, the data seed), enough to rebuild the model and
load the weights with ``torch.load(..., weights_only=True)``. The registered model is named after the study.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchlab.errors import ConfigError, describe_error, first_line
from searchlab.results import trial_run_id
from searchlab.settings import OBJECTIVE_NAME, RUN_ID_ATTR, SEED_ATTR, SETUP_ATTR, STATE_DICT_FILE, tracking_uri_for
from searchlab.storage import mask_password
from searchlab.study import load_study_file
from searchlab.tracking import MlflowTracker, every_page
from searchlab.trial import Trial

BEST_ALIAS = "best"
MODEL_FOLDER = "model"
INFO_FILE = "model_info.json"
SOURCE_FILE = "study.py"


def snippet(uri: str, tracking_uri: str, study_file: str | None) -> str:
    """How to get a registered model back into PyTorch, in Python (to paste: the strings are escaped literals)."""
    file = "None" if study_file is None else json.dumps(study_file)  # a JSON string is a Python literal too
    return (
        f"import searchlab as sl\n"
        f"model = sl.load_model({json.dumps(uri)}, {file}, tracking_uri={json.dumps(tracking_uri)})  # eval mode\n"
        f"# by hand: build the study's model with the params in model/{INFO_FILE}, then\n"
        f'# model.load_state_dict(torch.load("model/model_state_dict.pt", weights_only=True))'
    )


def model_info(
    study: Any, study_file: str | None, trial: Any, params: dict[str, Any], val_data: Any, run_id: str
) -> dict[str, Any]:
    """What it takes to rebuild the trial's model: builder, params, shapes, task, and the value it reached."""
    from searchlab.data import first_examples  # torch

    inputs, _ = first_examples(val_data, 1)
    return {
        "study": study.name,
        "task": study.task,
        "trial_number": trial.number,
        OBJECTIVE_NAME: trial.value,
        "builder": f"{study_file or '<study file>'}:{getattr(study.model, '__qualname__', 'model')}",
        "params": params,
        "input_shape": [None, *inputs.shape[1:]],
        "data_seed": trial.user_attrs.get(SETUP_ATTR, {}).get("data_seed"),
        "seed": trial.user_attrs.get(SEED_ATTR),
        RUN_ID_ATTR: run_id,
    }


def _write_signature(folder: Path, run_id: str, val_data: Any) -> None:
    """An ``MLmodel`` file with only the inputs' signature (a float tensor, any batch size): the registry's page
    shows it as the version's schema. It declares no flavor: the weights load through searchlab (load_model)."""
    from mlflow.models import Model, infer_signature

    from searchlab.data import first_examples  # torch

    inputs, _ = first_examples(val_data, 1)
    Model(artifact_path=MODEL_FOLDER, run_id=run_id, signature=infer_signature(inputs.numpy())).save(folder / "MLmodel")


def register(
    client: Any, name: str, trial: Any, study: Any, study_file: str | None, val_data: Any, *, alias: str = BEST_ALIAS
) -> Any:
    """Register ``trial``'s weights as a new version of model ``name`` and point ``alias`` at it; when ``alias``
    already names that trial's run, nothing changes and its version is returned."""
    from mlflow.exceptions import MlflowException

    from searchlab.weights import run_params

    run_id = trial_run_id(client, name, trial)
    if run_id is None:
        raise ConfigError(f"trial {trial.number} has no MLflow run to register")
    current = current_version(client, name, alias)
    if current is not None and current.run_id == run_id:
        return current
    registered = [v for v in _versions(client, name) if v.run_id == run_id]
    if registered:  # e.g. the champion is promoted from a version already registered as the best
        client.set_registered_model_alias(name, alias, registered[0].version)
        return registered[0]
    # the logged params (fixed and inherited ones too), with the sampled ones exactly as Optuna holds them
    info = model_info(study, study_file, trial, {**run_params(client, run_id), **trial.params}, val_data, run_id)
    with tempfile.TemporaryDirectory() as folder:
        client.download_artifacts(run_id, STATE_DICT_FILE, folder)
        if study_file is not None:
            shutil.copyfile(study_file, Path(folder) / SOURCE_FILE)
        (Path(folder) / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        _write_signature(Path(folder), run_id, val_data)
        client.log_artifacts(run_id, folder, MODEL_FOLDER)
    try:
        client.create_registered_model(name, description=f"Best models of the searchlab study {name!r}.")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{MODEL_FOLDER}",
        run_id=run_id,
        tags={
            "trial_number": trial.number,
            OBJECTIVE_NAME: trial.value,
            "builder": info["builder"],
            "input_shape": json.dumps(info["input_shape"]),
        },
        description=f"Trial {trial.number} of study {name!r}: {OBJECTIVE_NAME} {trial.value:.6g}. Load it with:\n\n"
        f"```python\n{snippet(f'models:/{name}@{alias}', mask_password(client.tracking_uri), study_file)}"
        "\n```",
    )
    client.set_registered_model_alias(name, alias, version.version)
    return version


def _versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return every_page(client.search_model_versions, f"name = '{name}'")
    except MlflowException:
        return []


def current_version(client: Any, name: str, alias: str) -> Any:
    """The version ``alias`` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


@dataclass(frozen=True)
class Loaded:
    """A registered model rebuilt in PyTorch, with its version and ``model_info.json``."""

    model: Any
    version: Any
    info: dict[str, Any]
    study: Any


def load_registered(
    uri: str, *, tracking_uri: str, study_file: str | None = None, trust_source: bool = False
) -> Loaded:
    """Rebuild the model of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` from its study and load its weights
    (weights_only=True), in eval mode on the CPU. The study is ``study_file``; the copy registered with the model
    is Python code from the registry, run only with ``trust_source``."""
    import mlflow.artifacts
    import optuna
    import torch

    from searchlab.weights import model_version, parse_model_uri

    reference = parse_model_uri(uri)
    client = MlflowTracker(tracking_uri).client
    with tempfile.TemporaryDirectory() as folder:
        try:
            version = model_version(client, *reference)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=client.get_model_version_download_uri(version.name, version.version),
                    dst_path=folder,
                    tracking_uri=tracking_uri,
                )
            )
            info = json.loads((local / INFO_FILE).read_text())
        except Exception as error:
            raise ConfigError(
                f"cannot fetch {uri} from the registry of {mask_password(tracking_uri)}: "
                f"{first_line(error)}; pass the --tracking-uri the study ran with"
            ) from None
        if study_file is None and not (trust_source and (local / SOURCE_FILE).is_file()):
            raise ConfigError(
                f"rebuilding {uri} needs the study file it was trained with ({info['builder']}): "
                "pass it (or trust_source=True to run the copy registered with the model)"
            )
        study = load_study_file(study_file or local / SOURCE_FILE)
        state_dict = torch.load(local / STATE_DICT_FILE, weights_only=True, map_location="cpu")
    params = dict(info["params"])
    try:
        model = study.model(Trial(optuna.trial.FixedTrial(params, number=info["trial_number"]), params, info["seed"]))
        model.load_state_dict(state_dict)
    except Exception as error:  # the study's builder changed: new knobs, other layers
        raise ConfigError(
            f"the model {info['builder']} builds now does not take the weights of {uri}: {describe_error(error)}"
        ) from None
    return Loaded(model.eval(), version, info, study)


def recorded_value(record: Mapping[str, Any]) -> float | None:
    """The value a version's tags or model_info.json record (``val_loss`` in versions registered before it was
    named ``best_val_loss``); None when neither is there."""
    value = record.get(OBJECTIVE_NAME, record.get("val_loss"))
    return None if value is None else float(value)


def validation_loss(loaded: Loaded, val_data: Any = None) -> float:
    """The loaded model's loss on ``val_data`` (by default its study's validation split for the data seed it
    trained with), in the batches a trial's evaluation uses."""
    import torch

    from searchlab.data import eval_batch_size, load_split, make_batches
    from searchlab.model import batch_size
    from searchlab.tasks import get_task
    from searchlab.train import evaluate

    task = get_task(loaded.study.task)
    if val_data is None:
        _, val_data = load_split(loaded.study, loaded.info["data_seed"])
    size = eval_batch_size(val_data, batch_size(loaded.info["params"]))
    batches = make_batches(val_data, size, shuffle=False, seed=0, device=torch.device("cpu"))
    return evaluate(loaded.model, batches, task, task.loss_fn())["val_loss"]


def load_model(
    uri: str, study_file: str | None = None, *, tracking_uri: str | None = None, trust_source: bool = False
) -> Any:
    """The ``nn.Module`` of a registered model (``models:/NAME@best``), rebuilt by ``study_file``'s builder and
    loaded, in eval mode. ``trust_source=True`` runs the study source registered with the model instead.

    ``tracking_uri`` defaults to SEARCHLAB_TRACKING_URI, MLFLOW_TRACKING_URI, then sqlite:///mlflow.db here."""
    return load_registered(
        uri, tracking_uri=tracking_uri_for(tracking_uri), study_file=study_file, trust_source=trust_source
    ).model


def load_best(study_name: str, tracking_uri: str, file: str | None) -> str:
    """Rebuild the registered best model, check its validation loss, and show the Python that does it."""
    if file is None:
        raise ConfigError("--load rebuilds the model with its study's builder: pass the study FILE")
    uri = f"models:/{study_name}@{BEST_ALIAS}"
    loaded = load_registered(uri, tracking_uri=tracking_uri, study_file=file)
    info = loaded.info
    recorded = recorded_value(info)
    return "\n".join(
        [
            f"model      {uri} (version {loaded.version.version}: trial {info['trial_number']}, "
            f"run {info[RUN_ID_ATTR]})",
            f"rebuilt    {info['builder']} with its params; weights loaded (weights_only=True)",
            f"val_loss   {validation_loss(loaded):.6g} on the validation split "
            f"(the trial recorded {'nothing' if recorded is None else format(recorded, '.6g')})",
            "in Python:",
            *("    " + line for line in snippet(uri, mask_password(tracking_uri), file).splitlines()),
        ]
    )
