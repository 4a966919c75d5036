"""Initialisation and transfer learning: init schemes, starting weights from files and MLflow, frozen layers."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from torch import nn

import searchlab as sl
from searchlab.cli import main
from searchlab.errors import ConfigError
from searchlab.storage import open_storage
from searchlab.tasks import ModelError
from searchlab.tracking import MlflowTracker
from searchlab.transfer import Start, freeze, initialise, load_start
from searchlab.weights import resolve_start

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def mlp(width: int = 8, outputs: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, outputs))


@pytest.mark.parametrize("scheme", ["kaiming", "xavier"])
def test_initialise_sets_weight_scale_and_zero_biases(scheme: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    initialise(layer, scheme)
    expected = (2 / 400) ** 0.5 if scheme == "kaiming" else (2 / 700) ** 0.5
    assert layer.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0


def test_default_initialisation_is_left_alone() -> None:
    layer = nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    initialise(layer, "default")
    assert torch.equal(layer.weight, before)


def test_load_start_copies_matching_layers_and_keeps_a_new_head() -> None:
    source = mlp(outputs=10)
    target = mlp(outputs=1)
    head = target[2].weight.detach().clone()
    loaded = load_start(target, Start("source", source.state_dict()))
    assert loaded == ["0.bias", "0.weight"]
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[2].weight, head)
    with pytest.raises(ModelError, match="none of the weights in other fit this model"):
        load_start(nn.Linear(3, 3), Start("other", source.state_dict()))


def test_freeze_turns_off_gradients_of_named_layers() -> None:
    model = mlp()
    assert freeze(model, ("0.",)) == ["0.weight", "0.bias"]
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    with pytest.raises(ModelError, match=r"freeze='9\.' names no parameter"):
        freeze(model, ("9.",))


def test_start_from_a_state_dict_file(tmp_path: Path) -> None:
    source = mlp()
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    start = resolve_start(str(tmp_path / "weights.pt"), storage=None, tracking_uri="unused")
    assert torch.equal(start.state_dict["0.weight"], source[0].weight.detach()) and start.params == {}
    with pytest.raises(ConfigError, match="no such file"):
        resolve_start(str(tmp_path / "missing.pt"), storage=None, tracking_uri="unused")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a state_dict"):
        resolve_start(str(tmp_path / "list.pt"), storage=None, tracking_uri="unused")


def test_start_from_a_run_and_a_registered_model(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    run_id = tracker.start_run(tracker.experiment_id("source"), "trial-0")
    tracker.log_params(run_id, {"width": 8, "activation": "relu", "seed": 1, "lr": 0.01})
    source = mlp()
    tracker.log_state_dict(run_id, source.state_dict())
    tracker.end_run(run_id, "FINISHED")

    start = resolve_start(f"runs:/{run_id}", storage=None, tracking_uri=uri)
    assert start.params == {"width": 8, "activation": "relu", "lr": 0.01}  # model params, typed; no bookkeeping
    assert torch.equal(start.state_dict["2.weight"], source[2].weight.detach())

    client = MlflowClient(uri)
    client.create_registered_model("digits")
    version = client.create_model_version("digits", f"runs:/{run_id}/model_state_dict.pt", run_id=run_id)
    client.set_registered_model_alias("digits", "best", version.version)
    for spec in ("models:/digits@best", f"models:/digits/{version.version}"):
        registered = resolve_start(spec, storage=None, tracking_uri=uri)
        assert torch.equal(registered.state_dict["0.bias"], source[0].bias.detach())
        assert registered.params["width"] == 8
    with pytest.raises(ConfigError, match="cannot fetch the weights"):
        resolve_start("runs:/0123456789abcdef", storage=None, tracking_uri=uri)


def test_init_can_be_searched() -> None:
    study = sl.Study(
        name="s",
        task="regression",
        data=lambda seed: None,
        model=lambda trial: mlp(),
        init=sl.Choice(["kaiming", "xavier"]),
    )
    assert "init" in study.searched
    with pytest.raises(ConfigError, match="unknown init 'orthogonal'"):
        sl.Study(name="s", task="regression", data=lambda seed: None, model=lambda trial: mlp(), init="orthogonal")


def test_finetune_study_starts_from_the_best_multiclass_weights(workdir: Path) -> None:
    for name in ("multiclass", "finetune"):
        shutil.copy(STUDIES / f"{name}.py", workdir / f"{name}.py")
    first = CliRunner().invoke(main, ["run", "multiclass.py", "--trials", "2", "--max-epochs", "4"])
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(main, ["run", "finetune.py", "--trials", "2", "--max-epochs", "5"])
    assert result.exit_code == 0, result.output

    storage = open_storage(None)
    source = optuna.load_study(study_name="multiclass", storage=storage).best_trial
    tuned = optuna.load_study(study_name="finetune", storage=storage)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    source_weights = torch.load(
        client.download_artifacts(source.user_attrs["mlflow_run_id"], "model_state_dict.pt"), weights_only=True
    )
    for trial in tuned.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["start_from"] == f"runs:/{source.user_attrs['mlflow_run_id']}"
        assert run.data.params["frozen"] == "0." and run.data.params["init"] == "kaiming"
        assert run.data.params["width"] == str(source.params["width"])
        weights = torch.load(client.download_artifacts(run.info.run_id, "model_state_dict.pt"), weights_only=True)
        assert torch.equal(weights["0.weight"], source_weights["0.weight"]), "the frozen layer did not move"
        assert weights["3.weight"].shape == (1, source.params["width"])  # the new head
    replay = CliRunner().invoke(main, ["replay", "0", "finetune.py"])
    assert replay.exit_code == 0 and "identical" in replay.output.splitlines()[-1]


SIZED_BODY = """    width = trial.suggest_int("width", {low}, {high}, log=True)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(trial.params["dropout"]), nn.Linear(width, 1))"""


def test_a_builder_sizing_its_layers_with_suggest_gets_the_source_sizes(workdir: Path) -> None:
    """The regression study's pattern (width from suggest_int) fine-tuned from a study: the source's width wins
    over the builder's own suggest_int, so the frozen layer is the source's, and each run says what loaded."""
    write_study(workdir, name="source", body=SIZED_BODY.format(low=4, high=32), filename="source.py")
    assert CliRunner().invoke(main, ["run", "source.py", "--trials", "2"]).exit_code == 0
    extra = "start_from='study:source', freeze=('0.',)"
    write_study(workdir, name="tuned", body=SIZED_BODY.format(low=4, high=32), extra=extra, filename="tuned.py")
    result = CliRunner().invoke(main, ["run", "tuned.py", "--trials", "3", "--seed", "3"])
    assert result.exit_code == 0, result.output

    storage = open_storage(None)
    source = optuna.load_study(study_name="source", storage=storage).best_trial
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    source_weights = torch.load(
        client.download_artifacts(source.user_attrs["mlflow_run_id"], "model_state_dict.pt"), weights_only=True
    )
    for trial in optuna.load_study(study_name="tuned", storage=storage).trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["width"] == str(source.params["width"]), "the builder's suggest_int won"
        assert run.data.params["loaded"] == "0.bias,0.weight,3.bias,3.weight"
        weights = torch.load(client.download_artifacts(run.info.run_id, "model_state_dict.pt"), weights_only=True)
        assert torch.equal(weights["0.weight"], source_weights["0.weight"])


def test_a_frozen_layer_the_weights_do_not_fit_is_refused_before_anything_is_written(workdir: Path) -> None:
    """Weights from a file bring no params: a sampled width that differs from theirs would freeze layer 0 at its
    random initialisation, so the run is refused, in one line, with no study and no MLflow run."""
    torch.save(nn.Sequential(nn.Linear(4, 70), nn.ReLU(), nn.Dropout(0.0), nn.Linear(70, 1)).state_dict(), "w.pt")
    write_study(workdir, body=SIZED_BODY.format(low=80, high=256), extra="start_from='w.pt', freeze=('0.',)")
    result = CliRunner().invoke(main, ["run", "tiny_study.py", "--trials", "2"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "freeze=('0.',) would freeze 0.weight, 0.bias" in lines[0], result.output
    assert "w.pt" in lines[0] and "(70, 4) there" in lines[0]
    assert sorted(path.name for path in workdir.iterdir() if path.name != "__pycache__") == ["tiny_study.py", "w.pt"]


def test_load_start_and_freeze_refuse_a_frozen_layer_left_at_random() -> None:
    source = mlp(width=8)
    model = mlp(width=5)
    start = Start("source", source.state_dict())
    assert load_start(model, start) == ["2.bias"]
    with pytest.raises(ModelError, match=r"would freeze 0\.weight, 0\.bias at their random init.*\(8, 4\) there"):
        freeze(model, ("0.",), start)
    with pytest.raises(ModelError, match=r"would freeze 2\.weight at"):  # 2.bias fits and loaded
        freeze(model, ("2.",), start)
    assert freeze(mlp(width=8), ("0.",), start) == ["0.weight", "0.bias"]


def test_freeze_without_weights_to_start_from_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"freeze=\.\.\.\) needs Study\(start_from=\.\.\.\)"):
        sl.Study(name="s", task="regression", data=lambda seed: None, model=lambda trial: mlp(), freeze=("0.",))


def test_a_trial_whose_params_size_a_frozen_layer_otherwise_fails_alone(workdir: Path) -> None:
    """The preflight's model fits the weights, but a trial's own params size the frozen layer otherwise: that trial
    fails with the reason, and the search carries on."""
    torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 1)).state_dict(), "w.pt")
    body = """    width = 8 if trial.number % 2 == 0 else 12
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(trial.params["dropout"]), nn.Linear(width, 1))"""
    write_study(workdir, body=body, extra="start_from='w.pt', freeze=('0.',)")
    result = CliRunner().invoke(main, ["run", "tiny_study.py", "--trials", "2"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=open_storage(None)).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "FAIL"]
    assert "would freeze 0.weight, 0.bias at their random initialisation" in trials[1].user_attrs["fail_reason"]
