"""A killed or interrupted trial resumes from its last checkpoint, in the same MLflow run, and ends bit for bit as the
same trial never stopped: kill -9 on the default journal, Ctrl-C, and a worker that stopped beating on PostgreSQL
with a tracking server."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from conftest import POSTGRES_URL, SEARCHLAB, clean_env, default_sigint
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_parallel import load, running_trials, wait_until

from searchlab.storage import open_storage

STUDY = """
import torch
from torch import nn

import searchlab as sl


def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 0.1 * torch.randn(3000, generator=g)
    return sl.Split(train=(x[:2400], y[:2400]), val=(x[2400:], y[2400:]))


def model(trial):
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(trial.params["dropout"]), nn.Linear(32, 1))


study = sl.Study(name="resumed", task="regression", data=data, model=model, max_epochs=25, patience=25,
                 space=sl.default_space(batch_size=32), n_trials=1)
"""
ARGS = ["--no-check", "--no-report", "--no-register", "--sampler", "random", "--checkpoint-every", "0"]


def study_in(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "study.py").write_text(STUDY)
    return folder / "study.py"


def searchlab_run(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [SEARCHLAB, "run", str(study_in(folder)), "--trials", "1", *ARGS, *args],
        cwd=folder,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


def searchlab(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SEARCHLAB, *args], cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=600)


def finished(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr


def stop_at_epoch(process: subprocess.Popen, storage: str, epoch: int, how: signal.Signals) -> optuna.trial.FrozenTrial:
    """Stop the run with ``how`` once its trial has reported ``epoch`` epochs; the trial as it was."""
    trial = wait_until(
        lambda: next((t for t in running_trials("resumed", storage) if len(t.intermediate_values) >= epoch), None),
        what=f"a trial at epoch {epoch}",
    )
    process.send_signal(how)
    process.communicate(timeout=120)
    return trial


def outcome(folder: Path, tracking: str, trial: optuna.trial.FrozenTrial) -> tuple[dict, dict, dict, str]:
    """A completed trial's curve in Optuna, its run's curves in MLflow (every point), its weights, its run's status."""
    client = MlflowClient(tracking)
    run_id = trial.user_attrs["mlflow_run_id"]
    curves = {
        key: sorted((point.step, point.value) for point in client.get_metric_history(run_id, key))
        for key in ("train_loss", "val_loss", "val_mae")
    }
    path = client.download_artifacts(run_id, "model_state_dict.pt", str(folder))
    weights = torch.load(path, weights_only=True)
    return dict(trial.intermediate_values), curves, weights, client.get_run(run_id).info.status


def check_resumed_as_never_stopped(
    reference: tuple[dict, dict, dict, str], resumed: tuple[dict, dict, dict, str]
) -> None:
    values, curves, weights, status = resumed
    assert values == reference[0], "the Optuna curve, every epoch, bit for bit"
    assert curves == reference[1], "one MLflow curve, no step twice, the same values"
    assert [step for step, _ in curves["val_loss"]] == list(range(1, 26))
    assert weights.keys() == reference[2].keys() and all(torch.equal(weights[k], reference[2][k]) for k in weights)
    assert status == reference[3] == "FINISHED"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict, str]:
    """The same trial (trial 0 of the study, seed 0) never stopped."""
    folder = tmp_path_factory.mktemp("never-stopped")
    finished(searchlab_run(folder))
    (trial,) = load("resumed", str(folder / "searchlab.journal")).trials
    return outcome(folder, f"sqlite:///{folder / 'mlflow.db'}", trial)


def checkpoints(tracking: str, run_id: str) -> list[str]:
    return [item.path for item in MlflowClient(tracking).list_artifacts(run_id, "checkpoints")]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_stopped_trial_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(
    tmp_path: Path, reference: tuple, how: signal.Signals
) -> None:
    journal, tracking = str(tmp_path / "searchlab.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = stop_at_epoch(searchlab_run(tmp_path), journal, 8, how)
    run_id = dead.user_attrs["mlflow_run_id"]
    assert checkpoints(tracking, run_id), "it saved checkpoints as it trained"

    finished(searchlab_run(tmp_path))  # the same command again
    trials = load("resumed", journal).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.params == dead.params and retry.user_attrs["seed"] == dead.user_attrs["seed"]
    assert retry.user_attrs["mlflow_run_id"] == run_id, "it went on in the same MLflow run"
    resumed_from = retry.user_attrs["resumed_from"]
    assert resumed_from["trial"] == 0 and 1 <= resumed_from["epoch"] <= len(dead.intermediate_values) + 1
    check_resumed_as_never_stopped(reference, outcome(tmp_path, tracking, retry))
    assert checkpoints(tracking, run_id) == [], "a finished trial keeps its weights, not its checkpoints"


def test_a_trial_whose_worker_stopped_beating_resumes_on_postgresql_through_a_tracking_server(
    tmp_path: Path, reference: tuple, mlflow_server: str
) -> None:
    name = f"resumed-{uuid.uuid4().hex[:8]}"
    args = ["--storage", POSTGRES_URL, "--study-name", name, "--tracking-uri", mlflow_server]
    env = clean_env(SEARCHLAB_HEARTBEAT="1")
    try:
        first = searchlab_run(tmp_path, *args, env=env)
        trial = wait_until(
            lambda: next((t for t in running_trials(name, POSTGRES_URL) if len(t.intermediate_values) >= 8), None),
            what="a trial at epoch 8",
        )
        first.kill()
        first.wait()
        # As if its worker ran on another host: only its missing heartbeats tell that it died.
        storage = open_storage(POSTGRES_URL)
        study = optuna.load_study(study_name=name, storage=storage)
        optuna.Trial(study, trial._trial_id).set_user_attr("worker", "another-host:4242")
        time.sleep(4)  # past the grace period (3 heartbeats of 1 s)

        finished(searchlab_run(tmp_path, *args, env=env))
        trials = load(name, POSTGRES_URL).trials
        # (the run counted the stale trial as running when it set its budget: it ran one more)
        assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE
        retry = trials[1]
        assert retry.user_attrs["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]
        assert retry.user_attrs["resumed_from"]["epoch"] >= 1
        check_resumed_as_never_stopped(reference, outcome(tmp_path, mlflow_server, retry))
        assert checkpoints(mlflow_server, retry.user_attrs["mlflow_run_id"]) == []
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def test_a_kill_between_checkpoints_loses_at_most_what_came_after_the_last(tmp_path: Path, reference: tuple) -> None:
    """With checkpoints every second, a trial killed later resumes from one of them; the epochs after it are trained
    again (MLflow keeps their first points: no step twice) and the end is the same."""
    journal, tracking = str(tmp_path / "searchlab.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = stop_at_epoch(searchlab_run(tmp_path, "--checkpoint-every", "1"), journal, 15, signal.SIGKILL)
    finished(searchlab_run(tmp_path))
    retry = load("resumed", journal).trials[1]
    assert retry.user_attrs["resumed_from"]["epoch"] <= len(dead.intermediate_values) + 1
    check_resumed_as_never_stopped(reference, outcome(tmp_path, tracking, retry))


def test_a_pruned_trial_keeps_its_weights_and_checkpoint_and_resume_goes_on_with_it(tmp_path: Path) -> None:
    journal, tracking = str(tmp_path / "searchlab.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    ran = searchlab(tmp_path, "run", str(study_in(tmp_path)), "--trials", "8", "--pruner", "sha", *ARGS)
    assert ran.returncode == 0, ran.stderr
    trials = load("resumed", journal).trials
    pruned = next(t for t in trials if t.state == TrialState.PRUNED)
    client = MlflowClient(tracking)
    run_id = pruned.user_attrs["mlflow_run_id"]
    record = client.get_run(run_id)
    assert record.data.metrics["best_val_loss"] == min(pruned.intermediate_values.values())
    assert "model_state_dict.pt" in [item.path for item in client.list_artifacts(run_id)], "its best weights so far"
    assert checkpoints(tracking, run_id), "its checkpoint stays, for searchlab resume"
    assert all(checkpoints(tracking, t.user_attrs["mlflow_run_id"]) == [] for t in trials if t.state.name == "COMPLETE")

    resumed = searchlab(tmp_path, "resume", str(pruned.number), str(tmp_path / "study.py"), "--epochs", "25")
    assert resumed.returncode == 0, resumed.stderr
    promoted = load("resumed", journal).trials[-1]
    assert f"trial {pruned.number} resumed from epoch {max(pruned.intermediate_values)} as trial" in resumed.stdout
    assert promoted.state == TrialState.COMPLETE and promoted.params == pruned.params
    assert promoted.user_attrs["seed"] == pruned.user_attrs["seed"] and promoted.user_attrs["mlflow_run_id"] == run_id
    assert promoted.user_attrs["resumed_from"] == {"trial": pruned.number, "epoch": max(pruned.intermediate_values)}
    assert {e: v for e, v in promoted.intermediate_values.items() if e in pruned.intermediate_values} == dict(
        pruned.intermediate_values
    )
    assert max(promoted.intermediate_values) == 25
    steps = sorted(point.step for point in client.get_metric_history(run_id, "val_loss"))
    assert steps == list(range(1, 26)), "one curve, going on from the pruned epoch"
    assert client.get_run(run_id).info.status == "FINISHED" and checkpoints(tracking, run_id) == []
    assert load("resumed", journal).trials[pruned.number].state == TrialState.PRUNED, "its record stays as it was"

    again = searchlab(tmp_path, "resume", str(promoted.number), str(tmp_path / "study.py"), "--epochs", "30")
    assert again.returncode == 2 and "only a pruned or failed trial" in again.stderr


def test_resume_without_a_study_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = searchlab(tmp_path, "resume", "0", str(study_in(tmp_path)), "--epochs", "5")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "searchlab run" in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["study.py"]
