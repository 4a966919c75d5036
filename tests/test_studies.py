"""The shipped studies run end to end with both samplers and track what they trained."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import TrialState

from searchlab.cli import main
from searchlab.storage import open_storage
from searchlab.study import load_study_file

STUDIES = Path(__file__).resolve().parent.parent / "studies"
METRICS = {
    "regression": {"val_mse", "val_mae", "val_r2"},
    "binary": {"val_accuracy", "val_auroc", "val_f1"},
    "multiclass": {"val_accuracy", "val_f1"},
}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_shipped_study_runs(workdir: Path, task: str, sampler: str) -> None:
    result = CliRunner().invoke(
        main,
        ["run", str(STUDIES / f"{task}.py"), "--trials", "2", "--max-epochs", "3", "--sampler", sampler],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=task, storage=open_storage(None))
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(study.best_trial.user_attrs["mlflow_run_id"])
    assert METRICS[task] | {"train_loss", "val_loss", "best_val_loss"} <= set(run.data.metrics)
    assert run.data.params["max_epochs"] == "3"


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_shipped_study_declares_its_task_on_real_data(task: str) -> None:
    study = load_study_file(STUDIES / f"{task}.py")
    assert study.task == task and study.name == task
    split = study.data(0)
    assert len(split.train[0]) > 100 and len(split.val[0]) > 30
