"""BackgroundTracker on a real MLflow store: calls return at once, runs arrive whole and in order, errors surface."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.exceptions import MlflowException

from searchlab.sender import BackgroundTracker, TrackingFailed
from searchlab.tracking import PARENT_RUN_TAG, MlflowTracker


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
    # Create, then params + curves + final tags in one batch, the weights, and the close: nothing per epoch.
    assert gated.writes == ["create", "state_dict", "log_batch"]
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


def test_an_error_in_the_background_fails_the_next_call_and_marks_its_run(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", flush_seconds=3600, retry_seconds=1)
    experiment = tracker.experiment_id("study")

    def rejected(run_id: str, state_dict: Any) -> None:
        raise MlflowException("artifact rejected: too large")

    monkeypatch.setattr(tracker, "log_state_dict", rejected)
    background = BackgroundTracker(tracker)
    run = background.start_run(experiment, "trial-0")
    background.log_state_dict(run, {"w": torch.zeros(1)})
    background.log_metrics(run, {"val_loss": 1.0}, step=1)
    raised = []
    # end_run raises it if the sender has met it by then (the run is closed either way), else close() does: once.
    for call in (lambda: background.end_run(run, "FINISHED"), background.close):
        try:
            call()
        except TrackingFailed as error:
            raised.append(str(error))
    assert len(raised) == 1 and "artifact rejected" in raised[0]
    failed = tracker.client.get_run(background.run_id(run))
    assert failed.info.status == "FAILED" and "artifact rejected" in failed.data.tags["tracking_error"]
    assert [point.value for point in tracker.client.get_metric_history(failed.info.run_id, "val_loss")] == [1.0]


def test_close_raises_an_error_no_call_raised(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", retry_seconds=1)
    background = BackgroundTracker(tracker)
    run = background.start_run("no-such-experiment", "trial-0")
    with pytest.raises(TrackingFailed):
        background.close()
    assert background.run_id(run) is None  # its creation failed; later calls for it are skipped


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
