"""Dead-worker recovery on real Optuna storages: finding dead local trials, failing, retrying, closing runs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from searchlab.recovery import (
    dead_local_trials,
    reap_dead_local_trials,
    recover,
    stale_trial_callback,
    worker_name,
)
from searchlab.tracking import MlflowTracker

optuna.logging.set_verbosity(optuna.logging.WARNING)

HOST = socket.gethostname()


class RecordingTracker:
    """Records close_dead_run calls: the one side effect recovery has outside Optuna."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def close_dead_run(self, run_id: str, *, reason: str, retried: bool, params: dict | None = None) -> None:
        self.calls.append((run_id, reason, retried))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def running(study: optuna.Study, worker: str, *, run_id: str | None = "run-0", curve: int = 2) -> optuna.Trial:
    """A RUNNING trial of ``worker`` with one parameter and ``curve`` reported values (steps 1..curve)."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.set_user_attr("worker", worker)
    if run_id is not None:
        trial.set_user_attr("mlflow_run_id", run_id)
    for step in range(1, curve + 1):
        trial.report(1.0 / step, step)
    return trial


def test_worker_name_is_host_and_pid() -> None:
    assert worker_name() == f"{HOST}:{os.getpid()}"
    assert worker_name(4242) == f"{HOST}:4242"


def test_dead_local_trials_are_those_whose_local_process_is_gone() -> None:
    study = optuna.create_study()
    gone = dead_pid()
    dead = running(study, worker_name(gone))
    running(study, worker_name(os.getpid()))  # alive
    running(study, f"some-other-host:{gone}")  # not ours to judge
    running(study, "no-pid-here")
    finished = running(study, worker_name(gone))
    study.tell(finished, 1.0)
    assert [t.number for t in dead_local_trials(study)] == [dead.number]


def test_given_pids_select_exactly_those_workers() -> None:
    study = optuna.create_study()
    mine = running(study, worker_name(os.getpid()))
    other = running(study, worker_name(os.getpid() + 1))
    running(study, worker_name(os.getpid() + 2))
    selected = dead_local_trials(study, pids={os.getpid(), os.getpid() + 1})
    assert [t.number for t in selected] == [mine.number, other.number]
    assert dead_local_trials(study, pids=set()) == []


def test_recover_fails_the_trial_and_enqueues_a_retry() -> None:
    study, tracker = optuna.create_study(), RecordingTracker()
    trial = running(study, worker_name(dead_pid()), run_id="run-7")
    recover(study, study.trials[trial.number], "its worker process died", retries=1, tracker=tracker)
    failed, retry = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "its worker process died"
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert "mlflow_run_id" not in retry.user_attrs and retry.system_attrs["failed_trial"] == failed.number
    assert tracker.calls == [("run-7", "its worker process died", True)]


def test_recover_without_retries_only_fails_the_trial() -> None:
    study, tracker = optuna.create_study(), RecordingTracker()
    trial = running(study, worker_name(dead_pid()), run_id="run-7")
    recover(study, study.trials[trial.number], "gone", retries=0, tracker=tracker)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert tracker.calls == [("run-7", "gone", False)]


def test_recover_without_an_mlflow_run_closes_nothing() -> None:
    study, tracker = optuna.create_study(), RecordingTracker()
    trial = running(study, worker_name(dead_pid()), run_id=None)
    recover(study, study.trials[trial.number], "gone", retries=1, tracker=tracker)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert tracker.calls == []


def test_a_trial_another_process_recovered_first_is_left_alone() -> None:
    study, tracker = optuna.create_study(), RecordingTracker()
    trial = running(study, worker_name(dead_pid()))
    snapshot = study.trials[trial.number]  # still RUNNING in this snapshot
    study.tell(trial, state=TrialState.FAIL)
    recover(study, snapshot, "gone", retries=1, tracker=tracker)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert tracker.calls == []


def test_reap_recovers_every_dead_local_trial_on_a_journal(tmp_path: Path) -> None:
    from searchlab.storage import open_storage

    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))
    tracker, gone = RecordingTracker(), dead_pid()
    first, second = running(study, worker_name(gone), run_id="a"), running(study, worker_name(gone), run_id="b")
    alive = running(study, worker_name(os.getpid()))
    reaped = reap_dead_local_trials(study, retries=1, tracker=tracker, lock=contextlib.nullcontext)
    assert reaped == [first.number, second.number]
    states = {t.number: t.state for t in study.trials}
    assert states[first.number] == states[second.number] == TrialState.FAIL
    assert states[alive.number] == TrialState.RUNNING
    assert [t.system_attrs["failed_trial"] for t in study.trials if t.state == TrialState.WAITING] == [0, 1]
    assert [(run, reason) for run, reason, _ in tracker.calls] == [
        ("a", "its worker process died"),
        ("b", "its worker process died"),
    ]
    assert reap_dead_local_trials(study, retries=1, tracker=tracker, lock=contextlib.nullcontext) == []


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_stale_trials_are_retried_with_a_heartbeat_reason(tmp_path: Path) -> None:
    tracker = RecordingTracker()
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'o.db'}",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=stale_trial_callback(1, tracker, 30),
    )
    study = optuna.create_study(storage=storage)
    trial = running(study, f"some-other-host:{os.getpid()}", run_id="run-3")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.1)  # sqlite timestamps have one-second resolution
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params
    assert len(tracker.calls) == 1
    run_id, reason, retried = tracker.calls[0]
    assert (run_id, retried) == ("run-3", True)
    assert "heartbeats" in reason and "30s" in reason


def test_stale_trial_callback_recovers_a_running_trial() -> None:
    study, tracker = optuna.create_study(), RecordingTracker()
    trial = running(study, "h:1")
    stale_trial_callback(0, tracker, 12)(study, study.trials[trial.number])
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL and "heartbeats for over 12s" in failed.user_attrs["fail_reason"]
    assert len(study.trials) == 1 and tracker.calls[0][2] is False


def test_a_dead_run_in_mlflow_ends_killed_with_its_curves_alike(tmp_path: Path) -> None:
    """Its curves stay as the worker sent them: none is completed from Optuna's values, so all end alike."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", flush_seconds=3600)
    run_id = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for step, value in ((1, 0.9), (2, 0.8)):
        client.log_metric(run_id, "val_loss", value, step=step)
        client.log_metric(run_id, "train_loss", value + 0.1, step=step)
    study = optuna.create_study()
    trial = running(study, worker_name(dead_pid()), run_id=run_id, curve=0)
    for step, value in ((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.65)):
        trial.report(value, step)
    recover(study, study.trials[trial.number], "its worker process died", retries=1, tracker=tracker)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = {
        name: sorted(m.step for m in client.get_metric_history(run_id, name)) for name in ("val_loss", "train_loss")
    }
    assert steps == {"val_loss": [1, 2], "train_loss": [1, 2]}
    assert run.data.tags["state"] == "FAIL" and run.data.tags["reason"] == "its worker process died"
    assert run.data.tags["retried"] == "True"
