"""The best model in the MLflow Model Registry: registered at the end of a run, loaded back into PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_config_error, write_study
from mlflow import MlflowClient

import searchlab as sl
from searchlab.cli import main
from searchlab.data import load_split
from searchlab.registry import (
    BEST_ALIAS,
    INFO_FILE,
    MODEL_FOLDER,
    SOURCE_FILE,
    _versions,
    load_registered,
    recorded_value,
    register,
)
from searchlab.storage import open_storage
from searchlab.study import load_study_file
from searchlab.summary import how_to_compare


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def val_loss(model: torch.nn.Module, study_file: Path, seed: int = 0) -> float:
    """MSE of the model on the study's validation split, computed here by hand."""
    x_val, y_val = load_study_file(study_file).data(seed).val
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x_val).squeeze(1), y_val).item()


def test_a_run_registers_its_best_model_which_loads_back(workdir: Path, study_file: Path) -> None:
    result = invoke("run", str(study_file), "--trials", "3")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    best_run_id = study.best_trial.user_attrs["mlflow_run_id"]
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("tiny", BEST_ALIAS)
    assert f"model      models:/tiny@best (version {version.version}, trial {study.best_trial.number}" in result.output
    assert version.run_id == best_run_id
    assert version.tags["trial_number"] == str(study.best_trial.number)
    assert json.loads(version.tags["input_shape"]) == [None, 4]

    files = {item.path for item in client.list_artifacts(best_run_id, MODEL_FOLDER)}
    assert files == {f"{MODEL_FOLDER}/{name}" for name in ("model_state_dict.pt", INFO_FILE, SOURCE_FILE, "MLmodel")}
    from mlflow.models import get_model_info

    signature = get_model_info(f"models:/tiny/{version.version}").signature  # the schema the registry page shows
    assert signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 4)}}]
    info = json.loads(
        Path(client.download_artifacts(best_run_id, f"{MODEL_FOLDER}/{INFO_FILE}", str(workdir))).read_text()
    )
    assert info["builder"] == f"{study_file}:model" and info["params"]["width"] == study.best_params["width"]

    model = sl.load_model("models:/tiny@best", str(study_file), tracking_uri=tracking_uri)  # the public API
    assert not model.training
    assert val_loss(model, study_file) == pytest.approx(study.best_value, rel=1e-5)

    loaded = invoke("best", str(study_file), "--load")
    assert loaded.exit_code == 0, loaded.output
    assert (
        f"val_loss   {study.best_value:.6g} on the validation split (the trial recorded {study.best_value:.6g})"
        in loaded.output
    )
    assert f'sl.load_model("models:/tiny@best", "{study_file}", tracking_uri=' in loaded.output


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_no_register_leaves_the_registry_alone(
    workdir: Path, study_file: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "environment":
        monkeypatch.setenv("SEARCHLAB_REGISTER", "false")
    result = invoke("run", str(study_file), "--trials", "2", *(["--no-register"] if how == "flag" else []))
    assert result.exit_code == 0, result.output
    assert (
        "model      not registered (--no-register): the best weights are in its trial's run "
        "(searchlab best --export)" in result.output
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.search_registered_models() == []
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert client.list_artifacts(study.best_trial.user_attrs["mlflow_run_id"], MODEL_FOLDER) == []
    exported = invoke("best", str(study_file), "--export", "best.pt")
    assert exported.exit_code == 0, exported.output
    assert set(torch.load(workdir / "best.pt", weights_only=True)) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_the_registered_source_rebuilds_the_model_when_trusted(workdir: Path, study_file: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "2").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    moved = shutil.move(study_file, workdir / "elsewhere.py")
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert "needs the study file it was trained with" in one_line_config_error(
        lambda: load_registered("models:/tiny@best", tracking_uri=tracking_uri)
    )  # never runs registry code unasked
    loaded = load_registered("models:/tiny@best", tracking_uri=tracking_uri, trust_source=True)
    assert val_loss(loaded.model, Path(moved)) == pytest.approx(study.best_value, rel=1e-5)
    assert loaded.info["trial_number"] == study.best_trial.number


def test_a_new_best_gets_a_new_version_and_the_alias_an_unchanged_best_none(workdir: Path, study_file: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "3").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    declared = load_study_file(study_file)
    _, val_data = load_split(declared, 0)
    first = client.get_model_version_by_alias("tiny", BEST_ALIAS)
    assert register(client, "tiny", study.best_trial, declared, str(study_file), val_data).version == first.version
    other = next(trial for trial in study.trials if trial.number != study.best_trial.number)
    second = register(client, "tiny", other, declared, str(study_file), val_data)
    assert int(second.version) == int(first.version) + 1
    assert client.get_model_version_by_alias("tiny", BEST_ALIAS).run_id == other.user_attrs["mlflow_run_id"]
    assert len(client.search_model_versions("name='tiny'")) == 2


def test_categorical_params_come_back_as_they_were_sampled(workdir: Path) -> None:
    body = """    layers = trial.suggest_categorical("layers", ["8", "8,4"])
    sizes = [4, *map(int, layers.split(","))]
    hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*hidden, nn.Linear(sizes[-1], 1))"""
    study_file = write_study(workdir, body=body)
    assert invoke("run", str(study_file), "--trials", "3").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    loaded = invoke("best", str(study_file), "--load")
    assert loaded.exit_code == 0, loaded.output
    assert f"val_loss   {study.best_value:.6g} on the validation split" in loaded.output


def test_bad_model_uris_are_one_line(workdir: Path, study_file: Path) -> None:
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert "is not a registered model" in one_line_config_error(
        lambda: load_registered("runs:/abc", tracking_uri=tracking_uri)
    )
    assert "cannot fetch models:/nothere@best from the registry" in one_line_config_error(
        lambda: load_registered("models:/nothere@best", tracking_uri=tracking_uri)
    )
    assert invoke("run", str(study_file), "--trials", "1").exit_code == 0
    result = CliRunner().invoke(
        main, ["best", str(study_file), "--load", "--tracking-uri", f"sqlite:///{workdir / 'empty.db'}"]
    )
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: cannot fetch models:/tiny@best from the registry of sqlite:///")
    assert line.endswith("pass the --tracking-uri the study ran with")


def test_the_parent_runs_description_says_where_the_registered_model_is() -> None:
    assert "*Model registry* in the sidebar" in how_to_compare("1")  # not the experiment's Models tab (empty)


def test_a_versions_recorded_value_is_read_under_its_old_name_too() -> None:
    assert recorded_value({"best_val_loss": "0.25"}) == 0.25
    assert recorded_value({"val_loss": "0.5"}) == 0.5  # registered before the value was named best_val_loss
    assert recorded_value({}) is None


def test_model_versions_are_read_page_after_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model promoted night after night has many versions: the lookup of a run's version reads every page."""
    monkeypatch.setattr("searchlab.tracking.SEARCH_PAGE", 2)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("study")
    experiment_id = client.create_experiment("study")
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(5)]
    for run_id in run_ids:
        client.create_model_version("study", f"runs:/{run_id}/model", run_id=run_id)
    assert sorted(version.run_id for version in _versions(client, "study")) == sorted(run_ids)
