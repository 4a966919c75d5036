"""MlflowTracker against real MLflow stores: runs, nesting, batched curves, weights, reachability checks."""

from __future__ import annotations

import importlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from conftest import by_host_name, one_line_config_error
from mlflow import MlflowClient

from searchlab.endpoints import check_tracking_uri
from searchlab.errors import ConfigError
from searchlab.settings import CREATE_TOKEN_TAG, OLD_CREATE_TOKEN_TAG, PARENT_RUN_TAG, STATE_DICT_FILE, WORKER
from searchlab.tracking import ENVIRONMENT_PROBES, MlflowTracker, every_page, remember_missing, run_by_token


@pytest.fixture
def tracker(tmp_path: Path) -> MlflowTracker:
    return MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", flush_seconds=3600)


def count_batches(tracker: MlflowTracker) -> list[dict]:
    """Record every log_batch call the tracker makes (the real client still does the work)."""
    calls: list[dict] = []
    real = tracker.client.log_batch

    def log_batch(run_id: str, **kwargs: object) -> None:
        calls.append(kwargs)
        real(run_id, **kwargs)

    tracker.client.log_batch = log_batch  # type: ignore[method-assign]
    return calls


def test_experiment_is_created_once_and_restored_if_deleted(tracker: MlflowTracker) -> None:
    first = tracker.experiment_id("study")
    assert tracker.experiment_id("study") == first
    tracker.client.delete_experiment(first)
    assert tracker.experiment_id("study") == first
    assert tracker.client.get_experiment(first).lifecycle_stage == "active"


def test_child_runs_nest_under_the_parent(tracker: MlflowTracker) -> None:
    experiment = tracker.experiment_id("study")
    parent = tracker.start_run(experiment, "parent", tags={"role": "study"})
    child = tracker.start_run(experiment, "trial-0", parent_run_id=parent, tags={"trial_number": 0})
    run = tracker.client.get_run(child)
    assert run.data.tags[PARENT_RUN_TAG] == parent and run.data.tags["trial_number"] == "0"
    assert run.info.run_name == "trial-0" and run.info.status == "RUNNING"
    tracker.end_run(child, "FAILED")
    tracker.end_run(parent, "FINISHED")
    assert tracker.client.get_run(child).info.status == "FAILED"
    assert tracker.client.get_run(parent).info.status == "FINISHED"


def test_curves_are_buffered_and_sent_in_one_batch(tracker: MlflowTracker) -> None:
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    calls = count_batches(tracker)
    for epoch in range(1, 21):
        tracker.log_metrics(run, {"train_loss": 1 / epoch, "val_loss": 2 / epoch, "val_mse": 2 / epoch}, step=epoch)
    assert calls == [] and tracker.client.get_run(run).data.metrics == {}
    tracker.end_run(run, "FINISHED", tags={"state": "COMPLETE", "mlflow.runName": "trial-0 val_loss=0.1"})
    assert len(calls) == 1  # the curves and the final tags together
    finished = tracker.client.get_run(run)
    assert finished.data.tags["state"] == "COMPLETE" and finished.info.run_name == "trial-0 val_loss=0.1"
    history = tracker.client.get_metric_history(run, "val_loss")
    assert [(p.step, p.value) for p in history] == [(epoch, 2 / epoch) for epoch in range(1, 21)]


def test_points_mlflow_refuses_are_dropped_so_the_run_still_closes_with_its_tags(tracker: MlflowTracker) -> None:
    from mlflow.exceptions import MlflowException

    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    tracker.log_metrics(run, {"val_loss": 0.5, "bad key!": 1.0}, step=1)
    with pytest.raises(MlflowException):
        tracker.flush(run)
    tracker.log_metrics(run, {"val_loss": 0.4}, step=2)
    tracker.end_run(run, "FINISHED", tags={"state": "COMPLETE"})  # not refused again for the same points
    closed = tracker.client.get_run(run)
    assert closed.info.status == "FINISHED" and closed.data.tags["state"] == "COMPLETE"
    assert [p.step for p in tracker.client.get_metric_history(run, "val_loss")] == [2]


def test_a_retried_run_creation_never_makes_a_second_run(
    tracker: MlflowTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = tracker.experiment_id("study")
    real = tracker.client.create_run
    answers: list[str] = []

    def created_but_unanswered(*args: object, **kwargs: object) -> object:
        run = real(*args, **kwargs)
        if not answers:
            answers.append(run.info.run_id)
            raise ConnectionError("the server died before it answered")
        return run

    monkeypatch.setattr(tracker.client, "create_run", created_but_unanswered)
    run_id = tracker.start_run(experiment_id, "trial-0")
    assert run_id == answers[0]
    assert [run.info.run_id for run in tracker.client.search_runs([experiment_id])] == [run_id]


def test_a_creation_token_finds_its_run_under_the_tag_it_had_before(tracker: MlflowTracker) -> None:
    experiment_id = tracker.experiment_id("study")
    new = tracker.start_run(experiment_id, "trial-0", token="new-token")
    assert CREATE_TOKEN_TAG.startswith("mlflow.")  # the UI hides it: not on every run's page
    old = tracker.client.create_run(experiment_id, tags={OLD_CREATE_TOKEN_TAG: "old-token"}).info.run_id
    assert run_by_token(tracker.client, experiment_id, "new-token").info.run_id == new
    assert run_by_token(tracker.client, experiment_id, "old-token").info.run_id == old  # a run from an older release
    assert run_by_token(tracker.client, experiment_id, "no-such-token") is None


def test_dead_runs_are_closed_past_the_first_page_of_a_search(tracker: MlflowTracker) -> None:
    """A long-lived experiment holds more runs than one page of MLflow's search (1,000): the cleanup sees them all."""
    experiment_id = tracker.experiment_id("study")
    for number in range(1_100):
        tracker.client.create_run(experiment_id, tags={WORKER: "gone:1"}, run_name=f"trial {number}")
    tracker.client.create_run(experiment_id, tags={WORKER: "alive:1"}, run_name="trial alive")
    assert len(tracker.client.search_runs([experiment_id], "attributes.status = 'RUNNING'")) == 1_000  # one page

    closed = tracker.close_dead_runs(experiment_id, lambda worker: worker == "gone:1")

    assert len(closed) == 1_100
    running = every_page(tracker.client.search_runs, [experiment_id], "attributes.status = 'RUNNING'")
    assert [run.info.run_name for run in running] == ["trial alive"]


def test_a_dead_run_gets_the_params_its_worker_had_no_time_to_send(tracker: MlflowTracker) -> None:
    """A worker killed between its run's creation and its params: the close logs the trial's params that the run
    lacks (those it has stay), so that MLflow and Optuna agree on the dead trial."""
    experiment_id = tracker.experiment_id("dead")
    run_id = tracker.start_run(experiment_id, "trial-0", tags={"trial_number": 0})
    tracker.log_params(run_id, {"lr": 0.01})  # sent before the kill
    tracker.close_dead_run(run_id, reason="its worker process died", retried=True, params={"lr": 0.01, "width": 64})
    run = tracker.client.get_run(run_id)
    assert run.data.params == {"lr": "0.01", "width": "64"}
    assert run.info.status == "KILLED" and run.data.tags["retried"] == "True"
    assert run.info.run_name == "trial-0 failed", "named as the runs of the trials that failed in their worker"
    tracker.reopen_run(run_id, {"trial_number": 0})  # its retry resumes in it
    assert tracker.client.get_run(run_id).info.run_name == "trial-0"


def test_runs_of_dead_processes_are_named_failed(tracker: MlflowTracker) -> None:
    experiment_id = tracker.experiment_id("dead processes")
    trial = tracker.start_run(experiment_id, "trial-4", tags={WORKER: "gone:1", "trial_number": 4})
    parent = tracker.start_run(experiment_id, "regression-run", tags={WORKER: "gone:1"})
    assert sorted(tracker.close_dead_runs(experiment_id, lambda worker: worker == "gone:1")) == sorted([trial, parent])
    assert tracker.client.get_run(trial).info.run_name == "trial-4 failed"
    assert tracker.client.get_run(parent).info.run_name == "regression-run"


def test_weights_of_a_run_started_here_go_straight_to_its_artifact_store(
    tracker: MlflowTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")

    def no_lookup(run_id: str) -> None:
        raise AssertionError("the upload looked the run up again")

    monkeypatch.setattr(tracker.client, "get_run", no_lookup)
    tracker.log_state_dict(run, {"weight": torch.ones(2, 2)})
    monkeypatch.undo()
    assert [item.path for item in tracker.client.list_artifacts(run)] == [STATE_DICT_FILE]


def test_large_flushes_respect_mlflow_batch_limits(tracker: MlflowTracker) -> None:
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    calls = count_batches(tracker)
    tracker.log_params(run, {f"p{i}": i for i in range(150)})
    for step in range(1, 1201):
        tracker.log_metrics(run, {"val_loss": float(step)}, step=step)
    tracker.flush(run)
    assert [len(call.get("params") or call.get("metrics")) for call in calls] == [100, 50, 1000, 200]
    assert len(tracker.client.get_run(run).data.params) == 150
    assert len(tracker.client.get_metric_history(run, "val_loss")) == 1200


def test_a_periodic_flush_keeps_the_curve_of_a_long_trial(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", flush_seconds=0)
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    tracker.log_metrics(run, {"val_loss": 0.5}, step=1)
    assert tracker.client.get_metric_history(run, "val_loss")[0].value == 0.5


def test_weights_round_trip_as_a_plain_state_dict(tracker: MlflowTracker, tmp_path: Path) -> None:
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    model = torch.nn.Linear(3, 2)
    tracker.log_state_dict(run, model.state_dict())
    path = tracker.download_state_dict(run, tmp_path)
    assert path.name == STATE_DICT_FILE
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weight"], model.weight.detach())


def test_tracking_server_reachability(mlflow_server: str, tmp_path: Path) -> None:
    check_tracking_uri(mlflow_server)
    check_tracking_uri(mlflow_server + "/")
    check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match=r"cannot reach the MLflow tracking server at http://u:\*\*\*@127.0.0.1:1"):
        check_tracking_uri("http://u:pw@127.0.0.1:1")
    with pytest.raises(ConfigError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists(), "checking must not create the store"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://x", "unsupported tracking URI 'ftp://x': use sqlite:///PATH, postgresql://USER@HOST/DB or http://"),
        (
            "./mlruns",
            "tracking URI './mlruns' is a folder (MLflow's file store, which MLflow 3 refuses): use sqlite:///",
        ),
        ("mlruns", "is a folder"),
        ("file:///tmp/mlruns", "is a folder"),
        ("", "is a folder"),
    ],
)
def test_a_tracking_uri_searchlab_cannot_track_to_is_refused(uri: str, message: str) -> None:
    """MLflow 3 raises on a file store only at the first call, after the run has created its study."""
    assert message in one_line_config_error(check_tracking_uri, uri)


def test_a_server_that_refuses_the_host_name_is_refused_before_the_run(mlflow_server: str) -> None:
    """MLflow's host check exempts /health: the check asks an endpoint it covers, as the run's first call does."""
    url = by_host_name(mlflow_server)
    with urllib.request.urlopen(url + "/health", timeout=10) as response:  # what the check used to ask
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 403
    message = one_line_config_error(check_tracking_uri, url)
    assert message == (
        f"the MLflow tracking server at {url} refuses the host name {urlsplit(url).netloc!r} (HTTP 403, "
        f"MLflow's host check): start it with --allowed-hosts {urlsplit(url).hostname}, or "
        "reach it by a private IP address"
    )


def test_sqlite_tracking_in_a_read_only_folder_is_refused_at_once(read_only_folder: Path) -> None:
    """MLflow would retry the store it cannot write for minutes, after the run created its study."""
    uri = f"sqlite:///{read_only_folder / 'mlflow.db'}"
    assert "cannot be written here" in one_line_config_error(check_tracking_uri, uri)
    check_tracking_uri(uri, writes=False)  # reading commands (ui, best --export) need no write access


def test_runs_against_a_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    tracker = MlflowTracker(mlflow_server, flush_seconds=3600)
    run = tracker.start_run(tracker.experiment_id("over-http"), "trial-0")
    tracker.log_metrics(run, {"val_loss": 1.0}, step=1)
    tracker.log_state_dict(run, torch.nn.Linear(2, 1).state_dict())
    tracker.end_run(run, "FINISHED")
    client = MlflowClient(mlflow_server)
    assert client.get_run(run).info.status == "FINISHED"
    assert client.get_metric_history(run, "val_loss")[0].step == 1
    assert torch.load(tracker.download_state_dict(run, tmp_path), weights_only=True)["weight"].shape == (1, 2)


def test_a_missing_module_is_remembered_and_an_installed_one_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client imports its environment probes on every request; a missing one then fails at once."""
    monkeypatch.delitem(sys.modules, "searchlab_no_such_module", raising=False)
    remember_missing(("searchlab_no_such_module", "json"))
    try:
        assert sys.modules["searchlab_no_such_module"] is None
        with pytest.raises(ImportError):
            importlib.import_module("searchlab_no_such_module")
        assert sys.modules["json"] is json
    finally:
        sys.modules.pop("searchlab_no_such_module", None)
    MlflowTracker("sqlite:///:memory:")  # the tracker does it for MLflow's probes (Databricks' runtime: not here)
    assert "dbruntime" in ENVIRONMENT_PROBES and sys.modules.get("dbruntime", "not remembered") is None


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_a_run_renamed_as_it_ends_is_renamed_by_its_closing_update(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    # Not as a tag in log_batch: the server then sets it through two more transactions and reloads the run.
    uri = request.getfixturevalue("mlflow_server") if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, flush_seconds=3600)
    batches = count_batches(tracker)
    run = tracker.start_run(tracker.experiment_id(f"rename-{store}"), "trial-0")
    tracker.log_metrics(run, {"val_loss": 0.5}, step=1)
    tracker.end_run(run, "FINISHED", tags={"state": "COMPLETE", "mlflow.runName": "trial-0 val_loss=0.5"})
    ended = MlflowClient(uri).get_run(run)
    assert ended.info.run_name == "trial-0 val_loss=0.5" == ended.data.tags["mlflow.runName"]
    assert ended.info.status == "FINISHED" and ended.info.end_time >= ended.info.start_time
    assert ended.data.tags["state"] == "COMPLETE" and ended.data.metrics["val_loss"] == 0.5
    assert [[tag.key for tag in batch["tags"]] for batch in batches] == [["state"]]


def fake_checkpoint(epoch: int) -> dict:
    return {"format": 1, "epoch": epoch, "seed": 7, "model": {"w": torch.full((2,), float(epoch))}}


def test_a_run_keeps_its_latest_checkpoint_only_after_its_curve_and_a_cut_one_is_passed_over(
    tracker: MlflowTracker,
) -> None:
    run_id = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    tracker.log_metrics(run_id, {"val_loss": 0.5}, step=1)  # buffered (flush_seconds=3600)
    tracker.log_checkpoint(run_id, fake_checkpoint(1))
    assert [p.step for p in tracker.client.get_metric_history(run_id, "val_loss")] == [1], "the curve went first"
    tracker.log_checkpoint(run_id, fake_checkpoint(2))
    files = [item.path for item in tracker.client.list_artifacts(run_id, "checkpoints")]
    assert files == ["checkpoints/epoch-00002.pt"], "the older one is removed once the new one is in"
    assert torch.equal(tracker.latest_checkpoint(run_id)["model"]["w"], torch.full((2,), 2.0))

    # a kill in the middle of an upload leaves a cut file beside the whole one before it
    local = Path(tracker.client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints"
    (local / "epoch-00003.pt").write_bytes(b"cut short")
    assert tracker.latest_checkpoint(run_id)["epoch"] == 2

    tracker.delete_checkpoints(run_id)
    assert tracker.client.list_artifacts(run_id, "checkpoints") == [] and tracker.latest_checkpoint(run_id) is None


def test_a_dead_run_reopened_for_its_retry_says_what_it_holds(tracker: MlflowTracker) -> None:
    run_id = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    tracker.log_params(run_id, {"lr": 0.01})
    for step in (1, 2, 3):
        tracker.log_metrics(run_id, {"train_loss": 1.0 / step, "val_loss": 2.0 / step}, step=step)
    tracker.log_checkpoint(run_id, fake_checkpoint(2))
    tracker.flush(run_id)
    tracker.close_dead_run(run_id, reason="its worker process died", retried=True)

    resumed = tracker.resume_run(run_id, {"worker": "here:1", "trial_number": 1})
    run = tracker.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["worker"] == "here:1"
    assert resumed.run == run_id and resumed.params == {"lr": "0.01"} and resumed.checkpoint["epoch"] == 2
    assert resumed.logged == {"train_loss": {1, 2, 3}, "val_loss": {1, 2, 3}}


def test_a_dead_run_with_no_retry_left_loses_its_checkpoints(tracker: MlflowTracker) -> None:
    run_id = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    tracker.log_checkpoint(run_id, fake_checkpoint(4))
    tracker.close_dead_run(run_id, reason="its worker process died", retried=False)
    assert tracker.client.list_artifacts(run_id, "checkpoints") == []


def test_a_dead_workers_run_of_a_trial_it_had_ended_closes_as_the_trial_ended(tracker: MlflowTracker) -> None:
    """kill -9 just after a worker told Optuna its trial COMPLETE, before its sender closed the run: the reaper
    closes that run FINISHED, with the trial's value and name, so that the two stores agree."""
    import optuna

    experiment_id = tracker.experiment_id("ended")
    done = tracker.start_run(experiment_id, "trial-4", tags={WORKER: "gone:1", "trial_number": 4})
    tracker.log_metrics(done, {"val_loss": 0.7}, step=1)
    tracker.flush(done)
    cut = tracker.start_run(experiment_id, "trial-5", tags={WORKER: "gone:1", "trial_number": 5})
    completed = optuna.trial.create_trial(value=0.5, user_attrs={"best_epoch": 1})
    completed.number = 4
    ended = {4: completed}
    assert sorted(tracker.close_dead_runs(experiment_id, lambda w: w == "gone:1", ended.get)) == sorted([done, cut])
    run = tracker.client.get_run(done)
    assert (run.info.status, run.data.tags["state"], run.info.run_name) == (
        "FINISHED",
        "COMPLETE",
        "trial-4 best_val_loss=0.5",
    )
    assert run.data.metrics["best_val_loss"] == 0.5 and run.data.metrics["val_loss"] == 0.7
    killed = tracker.client.get_run(cut)
    assert (killed.info.status, killed.data.tags["state"], killed.info.run_name) == ("KILLED", "FAIL", "trial-5 failed")
