"""The run as a process: Ctrl-C, `python FILE`, and the search loop's bookkeeping."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import SEARCHLAB, clean_env, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

from searchlab.catalog import make_sampler
from searchlab.cli import main
from searchlab.storage import open_storage
from searchlab.window import TrialSeededSampler


def wait_for_running_trial(storage_path: Path, name: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if storage_path.exists():
            try:
                study = optuna.load_study(study_name=name, storage=open_storage(str(storage_path)))
                if study.get_trials(states=(TrialState.RUNNING,)):
                    return
            except KeyError:
                pass
        time.sleep(0.2)
    raise AssertionError("no trial started")


def test_ctrl_c_leaves_nothing_running(workdir: Path) -> None:
    # Long trials (no early stopping within reach) so that Ctrl-C lands in the middle of training.
    path = write_study(workdir, max_epochs=100000, patience=100000)
    process = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--trials", "50"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_running_trial(workdir / "searchlab.journal", "tiny", process)
    time.sleep(1.5)  # some epochs into the trial
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "parent run" in stdout

    study = optuna.load_study(study_name="tiny", storage=open_storage(str(workdir / "searchlab.journal")))
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    interrupted, retry = study.trials[-2:]
    assert interrupted.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.user_attrs["resumes"] == interrupted.number, "for the next run"
    assert "the same command again resumes them" in stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and not [run for run in runs if run.info.status == "RUNNING"]
    killed = client.get_run(interrupted.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"
    assert client.get_metric_history(killed.info.run_id, "val_loss"), "the curve so far is kept"


def test_a_study_file_runs_as_a_script(workdir: Path) -> None:
    path = write_study(workdir)
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(SEARCHLAB_TRIALS="2", SEARCHLAB_SAMPLER="random"),
    )
    assert result.returncode == 0, result.stderr
    assert "best       trial" in result.stdout
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(workdir / "searchlab.journal")))
    assert len(study.trials) == 2


def test_a_study_script_reports_bad_input_in_one_line(workdir: Path) -> None:
    path = write_study(workdir, body="    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())")
    result = subprocess.run(
        [sys.executable, str(path)], cwd=workdir, capture_output=True, text=True, timeout=300, env=clean_env()
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: the model ends in nn.Sigmoid, but MSELoss expects raw outputs: end with a linear unit and no "
        "activation (scale the targets instead of squashing outputs)"
    ]
    assert not (workdir / "searchlab.journal").exists()


def test_trial_n_samples_the_same_params_whichever_worker_asks_for_it() -> None:
    """Two workers, two interleavings: trial N's params depend on the study seed and N, not on which worker's
    sampler asked first (each worker's own seeded sampler made the same set land on other trial numbers)."""

    def by_number(seed: int, order: list[int], sampler: str = "random") -> dict[int, dict]:
        study = optuna.create_study()
        workers = [TrialSeededSampler(lambda number: make_sampler(sampler, seed, number)) for _ in range(2)]
        found = {}
        for worker in order:
            study.sampler = workers[worker]
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            trial.suggest_categorical("b", [16, 32, 64])
            study.tell(trial, trial.params["x"])
            found[trial.number] = trial.params
        return found

    assert by_number(1, [0, 1, 0, 1, 1, 0]) == by_number(1, [1, 0, 1, 1, 0, 0])
    assert by_number(1, [0, 1, 0]) != by_number(2, [0, 1, 0])
    first = by_number(1, [0, 0, 0])
    assert len({params["x"] for params in first.values()}) == 3, "trials must not sample alike"
    assert by_number(1, [0, 1, 0, 1], "tpe") == by_number(1, [1, 1, 0, 0], "tpe")  # TPE's random start-up

    # A pack asks all its trials before any of them samples: each still samples as it would alone.
    study = optuna.create_study(sampler=TrialSeededSampler(lambda number: make_sampler("random", 1, number)))
    asked = [study.ask() for _ in range(3)]
    packed = {trial.number: trial.suggest_float("x", 0, 1) for trial in reversed(asked)}
    assert packed == {number: params["x"] for number, params in by_number(1, [0, 1, 0]).items()}
    assert isinstance(make_sampler("tpe", 0, 0), optuna.samplers.TPESampler)


def test_a_seeded_run_with_two_workers_is_reproducible_trial_by_trial(workdir: Path) -> None:
    """The same command twice, in two folders: each trial number gets the same params, seed and value."""
    results = []
    for folder in ("first", "second"):
        (workdir / folder).mkdir()
        path = write_study(workdir / folder, max_epochs=3)
        command = [SEARCHLAB, "run", str(path), "--workers", "2", "--sampler", "random", "--seed", "5", "--trials", "6"]
        done = subprocess.run(command, cwd=workdir / folder, env=clean_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        study = optuna.load_study(study_name="tiny", storage=open_storage(str(workdir / folder / "searchlab.journal")))
        results.append({t.number: (t.params, t.user_attrs["seed"], t.value) for t in study.trials})
    assert results[0] == results[1]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_studys_value_is_named_for_the_dashboard_and_a_users_own_name_is_kept(workdir: Path) -> None:
    path = write_study(workdir)
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "1"]).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert study.metric_names == ["best_val_loss"]  # not "Objective 0" in optuna-dashboard and Optuna's plots
    study.set_metric_names(["my_loss"])
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "2"]).exit_code == 0
    assert optuna.load_study(study_name="tiny", storage=open_storage(None)).metric_names == ["my_loss"]


def test_enqueued_trials_are_among_the_runs_trials(workdir: Path) -> None:
    path = write_study(workdir)
    study = optuna.create_study(study_name="tiny", storage=open_storage(None))
    enqueued = {"lr": 0.01, "momentum": 0.9, "dropout": 0.1, "weight_decay": 1e-4, "batch_size": 32, "width": 8}
    for _ in range(2):
        study.enqueue_trial(enqueued)
    result = CliRunner().invoke(main, ["run", str(path), "--trials", "3"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=open_storage(None)).trials
    assert len(trials) == 3 and all(trial.state.is_finished() for trial in trials)
    assert [trial.params == enqueued for trial in trials] == [True, True, False]
