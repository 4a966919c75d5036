"""BackgroundTracker on a real MLflow store: calls return at once, runs arrive whole and in order, errors surface."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from searchlab.sender import BackgroundTracker, TrackingFailed
from searchlab.settings import PARENT_RUN_TAG
from searchlab.tracking import MlflowTracker
from searchlab.unsent import RECORDS_FILE, resend_unsent, save_records, unsent_folder, unsent_runs


class GatedTracker(MlflowTracker):
    """A real MlflowTracker whose calls wait until the test opens the gate; records each MLflow write."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, flush_seconds=3600, retry_seconds=1)
        self.gate = threading.Event()
        self.entered = threading.Event()  # the sender is inside a call, waiting at the gate
        self.writes: list[str] = []
        real_log_batch = self.client.log_batch

        def log_batch(run_id: str, **kwargs: Any) -> None:
            self.writes.append("log_batch")
            real_log_batch(run_id, **kwargs)

        self.client.log_batch = log_batch  # type: ignore[method-assign]

    def start_run(self, *args: Any, **kwargs: Any) -> str:
        self.entered.set()
        self.gate.wait()
        self.writes.append("create")
        return super().start_run(*args, **kwargs)

    def log_state_dict(self, run_id: str, state_dict: Any) -> None:
        self.gate.wait()
        self.writes.append("state_dict")
        super().log_state_dict(run_id, state_dict)


@pytest.fixture
def gated(tmp_path: Path) -> GatedTracker:
    return GatedTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def track_trial(tracker: BackgroundTracker, experiment: str, parent: str, number: int) -> str:
    run = tracker.start_run(experiment, f"trial-{number}", parent_run_id=parent, tags={"trial_number": number})
    tracker.log_params(run, {"lr": 0.01, "batch_size": 32})
    for epoch in range(1, 6):
        tracker.log_metrics(run, {"train_loss": 1 / epoch, "val_loss": 2 / epoch}, step=epoch)
    tracker.log_state_dict(run, {"weight": torch.full((2, 2), float(number))})
    tracker.end_run(run, "FINISHED", tags={"state": "COMPLETE", "mlflow.runName": f"trial-{number} done"})
    return run


def test_a_trial_is_tracked_without_waiting_and_arrives_whole(gated: GatedTracker, tmp_path: Path) -> None:
    experiment = gated.experiment_id("study")
    gated.gate.set()
    parent = gated.start_run(experiment, "parent")
    gated.gate.clear()
    gated.writes.clear()
    with BackgroundTracker(gated) as background:
        run = track_trial(background, experiment, parent, 3)  # returns while MLflow is unreachable (the gate)
        assert gated.writes == [] and background.run_id(run, wait=False) is None
        gated.gate.set()
        run_id = background.run_id(run)
    # Create, the params at once (a killed trial keeps them), the weights, then curves + final tags in one batch
    # with the close: nothing per epoch.
    assert gated.writes == ["create", "log_batch", "state_dict", "log_batch"]
    finished = gated.client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.info.run_name == "trial-3 done"
    assert finished.data.tags[PARENT_RUN_TAG] == parent and finished.data.params == {"lr": "0.01", "batch_size": "32"}
    history = gated.client.get_metric_history(run_id, "val_loss")
    assert [(point.step, point.value) for point in history] == [(epoch, 2 / epoch) for epoch in range(1, 6)]
    weights = torch.load(gated.download_state_dict(run_id, tmp_path), weights_only=True)
    assert torch.equal(weights["weight"], torch.full((2, 2), 3.0))


def test_weights_are_copied_when_queued(gated: GatedTracker, tmp_path: Path) -> None:
    """The model goes on (the next trial, or training) while its weights wait to be sent."""
    experiment = gated.experiment_id("study")
    with BackgroundTracker(gated) as background:
        run = background.start_run(experiment, "trial-0")
        weight = torch.zeros(3)
        background.log_state_dict(run, {"weight": weight})
        weight += 5.0
        background.end_run(run, "FINISHED")
        gated.gate.set()
    sent = torch.load(gated.download_state_dict(background.run_id(run), tmp_path), weights_only=True)
    assert torch.equal(sent["weight"], torch.zeros(3))


def test_runs_are_created_before_queued_writes_of_earlier_runs(gated: GatedTracker) -> None:
    experiment = gated.experiment_id("study")
    with BackgroundTracker(gated) as background:
        background.start_run(experiment, "blocker")
        assert gated.entered.wait(30)  # the sender is busy: what follows is queued together
        first = background.start_run(experiment, "trial-0")
        background.log_state_dict(first, {"w": torch.zeros(1)})
        background.end_run(first, "FINISHED")
        second = background.start_run(experiment, "trial-1")
        gated.gate.set()
    # The next trial's run is created before the previous trial's weights are uploaded; each run keeps its order.
    assert gated.writes[:4] == ["create", "create", "create", "state_dict"]
    assert gated.client.get_run(background.run_id(first)).info.status == "FINISHED"
    assert gated.client.get_run(background.run_id(second)).info.status == "KILLED"  # never ended: closed on exit


def test_a_slow_server_slows_the_search_instead_of_queueing_without_end(gated: GatedTracker) -> None:
    experiment = gated.experiment_id("study")
    background = BackgroundTracker(gated, max_unsent=1)
    try:
        first = background.start_run(experiment, "trial-0")
        background.end_run(first, "FINISHED")  # one ended run may wait to be sent
        second = background.start_run(experiment, "trial-1")
        ended = threading.Event()
        closer = threading.Thread(target=lambda: (background.end_run(second, "FINISHED"), ended.set()))
        closer.start()
        assert not ended.wait(0.5)  # blocked: the first is not sent yet
        gated.gate.set()
        closer.join(timeout=60)
        assert ended.is_set()
    finally:
        gated.gate.set()
        background.close()
    assert all(gated.client.get_run(background.run_id(run)).info.status == "FINISHED" for run in (first, second))


def refused(*args: Any, **kwargs: Any) -> None:
    raise MlflowException("artifact rejected: too large", error_code=INVALID_PARAMETER_VALUE)


def test_an_error_fails_its_own_trial_while_it_trains_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", flush_seconds=3600)
    experiment = tracker.experiment_id("study")
    real_log_params = tracker.log_params
    monkeypatch.setattr(
        tracker, "log_params", lambda run_id, params: refused() if "bad" in params else real_log_params(run_id, params)
    )
    with BackgroundTracker(tracker) as background:
        other = background.start_run(experiment, "trial-0")
        run = background.start_run(experiment, "trial-1")
        background.log_params(run, {"bad": 1})
        background.log_params(other, {"lr": 0.1})
        with pytest.raises(TrackingFailed, match="artifact rejected"):
            for epoch in range(1, 3001):  # the trial's next calls: one of them meets the error
                background.log_metrics(run, {"val_loss": 1.0}, step=epoch)
                background.log_metrics(other, {"val_loss": 2.0}, step=epoch)
                time.sleep(0.01)
        background.end_run(run, "FAILED", tags={"state": "FAIL"})
        background.end_run(other, "FINISHED", tags={"state": "COMPLETE"})  # the other trial never hears of it
    failed, finished = (tracker.client.get_run(background.run_id(handle)) for handle in (run, other))
    assert failed.info.status == "FAILED" and "artifact rejected" in failed.data.tags["tracking_error"]
    assert finished.info.status == "FINISHED" and "tracking_error" not in finished.data.tags
    assert finished.data.params == {"lr": "0.1"}


def test_an_error_after_its_trial_ended_keeps_the_trials_state_and_says_so(
    gated: GatedTracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna has the trial COMPLETE by then: the run stays FINISHED, as the trial, with the error in a tag."""
    experiment = gated.experiment_id("study")
    real_log_state_dict = gated.log_state_dict
    monkeypatch.setattr(gated, "log_state_dict", lambda run_id, weights: (real_log_state_dict, refused())[1])
    with BackgroundTracker(gated) as background:
        run = background.start_run(experiment, "trial-0")
        background.log_metrics(run, {"val_loss": 1.0}, step=1)
        background.log_state_dict(run, {"w": torch.zeros(1)})
        background.end_run(run, "FINISHED", tags={"state": "COMPLETE"})  # queued before the sender meets it
        gated.gate.set()
    finished = gated.client.get_run(background.run_id(run))
    assert finished.info.status == "FINISHED" and finished.data.tags["state"] == "COMPLETE"
    assert "artifact rejected" in finished.data.tags["tracking_error"]
    assert [point.value for point in gated.client.get_metric_history(finished.info.run_id, "val_loss")] == [1.0]


def test_a_refused_creation_fails_its_trial_and_close_raises_nothing(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    background = BackgroundTracker(tracker)
    run = background.start_run("no-such-experiment", "trial-0")
    assert background.run_id(run) is None  # MLflow refused it; later calls for it are skipped
    with pytest.raises(TrackingFailed):
        background.log_metrics(run, {"val_loss": 1.0}, step=1)
    background.end_run(run, "FAILED")
    background.close()


def test_an_outage_holds_the_records_not_the_trials_and_the_next_run_sends_them(
    restartable_server: Any, tmp_path: Path
) -> None:
    """Trials go on while the server is down (weights past max_in_memory wait on disk); closing gives up after
    ``wait``, saves the rest, and resend_unsent sends it once the server is back: every run whole, in order."""
    tracker = MlflowTracker(restartable_server.url, flush_seconds=3600)
    experiment = tracker.experiment_id("study")
    parent = tracker.start_run(experiment, "parent")
    with BackgroundTracker(MlflowTracker(restartable_server.url)) as first:  # server up: sent at once
        track_trial(first, experiment, parent, 0)
    restartable_server.kill()
    background = BackgroundTracker(MlflowTracker(restartable_server.url, flush_seconds=3600), wait=1, max_in_memory=1)
    runs = [track_trial(background, experiment, parent, number) for number in (1, 2, 3)]  # never waits
    background.close()
    assert background.saved is not None and background.run_id(runs[0], wait=False) is None
    assert unsent_runs(restartable_server.url) == 3
    assert resend_unsent(restartable_server.url, wait=1) == 0  # still down: it stays saved
    restartable_server.start()
    assert resend_unsent(restartable_server.url, wait=30) == 3
    assert unsent_runs(restartable_server.url) == 0 and not background.saved.exists()
    client = tracker.client
    children = client.search_runs([experiment], f"tags.`{PARENT_RUN_TAG}` = '{parent}'")
    assert sorted(run.data.tags["trial_number"] for run in children) == ["0", "1", "2", "3"]
    for run in children:
        number = int(run.data.tags["trial_number"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{number} done"
        assert run.data.params == {"lr": "0.01", "batch_size": "32"}
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(point.step, point.value) for point in history] == [(epoch, 2 / epoch) for epoch in range(1, 6)]
        weights = torch.load(tracker.download_state_dict(run.info.run_id, tmp_path / str(number)), weights_only=True)
        assert torch.equal(weights["weight"], torch.full((2, 2), float(number)))


def test_the_synchronous_tracker_names_its_runs_itself(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.start_run(tracker.experiment_id("study"), "trial-0")
    assert tracker.run_id(run, wait=False) == run
    tracker.end_run(run, "FINISHED")


def test_closing_ends_the_runs_no_trial_ended(tmp_path: Path) -> None:
    """A trial cut short where its end could not be queued (a Ctrl-C at that moment) leaves no RUNNING run."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_seconds=1)
    experiment = tracker.experiment_id("study")
    with BackgroundTracker(tracker) as background:
        run = background.start_run(experiment, "trial-0")
        background.log_metrics(run, {"val_loss": 1.0}, step=1)
    closed = tracker.client.get_run(background.run_id(run))
    assert closed.info.status == "KILLED" and closed.data.tags["state"] == "FAIL"
    assert [point.value for point in tracker.client.get_metric_history(closed.info.run_id, "val_loss")] == [1.0]


def test_unreadable_or_planted_records_are_left_alone_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    experiment = tracker.experiment_id("study")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("do not upload")
    torn, planted = (unsent_folder(uri) / f"elsewhere-1-{name}" for name in ("torn", "planted"))
    for folder in (torn, planted):
        folder.mkdir(parents=True)
    (torn / RECORDS_FILE).write_bytes(b"half a file")  # e.g. a disk that filled up mid-write
    save_records(
        planted,
        {
            "ids": {"h": None},
            "calls": [
                ("start", "h", (experiment, "trial-0"), {"parent_run_id": None, "tags": {}}),
                ("log_artifacts", "h", (str(secret), "stolen"), {}),  # not a call searchlab saves
                ("log_state_dict_file", "h", ("../../secret",), {}),
                ("end_run", "h", ("FINISHED",), {"tags": {"state": "COMPLETE"}}),
            ],
        },
    )
    assert resend_unsent(uri, wait=1) == 1
    assert "cannot read the unsent MLflow records" in capsys.readouterr().err
    assert torn.with_name(f"{torn.name}.unreadable").is_dir()  # kept for a person to look at, never retried
    (run,) = tracker.client.search_runs([experiment])
    assert run.info.status == "FINISHED" and tracker.client.list_artifacts(run.info.run_id) == []


def test_only_the_latest_queued_checkpoint_of_a_run_is_sent(gated: GatedTracker) -> None:
    """An outage (or a slow store) keeps one checkpoint per trial in memory, not one per epoch."""
    experiment = gated.experiment_id("study")
    uploaded: list[int] = []
    real = gated.log_checkpoint

    def log_checkpoint(run_id: str, checkpoint: Any) -> None:
        uploaded.append(checkpoint["epoch"])
        real(run_id, checkpoint)

    gated.log_checkpoint = log_checkpoint  # type: ignore[method-assign]
    with BackgroundTracker(gated) as background:
        run = background.start_run(experiment, "trial-0")  # the sender waits at the gate, creating it
        gated.entered.wait(10)
        for epoch in (1, 2, 3):
            background.log_checkpoint(run, {"format": 1, "epoch": epoch, "seed": 0, "model": {}})
        gated.gate.set()
        assert background.run_id(run, wait=True)
        background.end_run(run, "KILLED")
    assert uploaded == [3]
    assert gated.latest_checkpoint(background.run_id(run))["epoch"] == 3
