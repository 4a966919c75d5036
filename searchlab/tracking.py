"""MLflow through ``MlflowClient`` with explicit run ids: experiments, parent/child runs, buffered curves.

Never MLflow's global active run (``mlflow.start_run``): it is process-global state and breaks under parallel
trials. Per-epoch metrics are buffered and sent with ``log_batch``, one call per flush, not one per value; params
are sent at once. The trial loop reaches this class through ``sender.BackgroundTracker``, which
makes these calls on a thread of its own (both are an ``objective.Tracker``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchlab.errors import RunFailed, first_line
from searchlab.settings import (
    CREATE_TOKEN_TAG,
    OBJECTIVE_NAME,
    OLD_CREATE_TOKEN_TAG,
    PARENT_RUN_TAG,
    PRUNED_EPOCH_ATTR,
    REASON,
    RUN_NAME_TAG,
    STATE_DICT_FILE,
    STATE_TAG,
    WORKER,
)
from searchlab.storage import mask_password

EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}
# Modules MLflow's client tries to import on every request, to tell whether it runs on Databricks or in a notebook
# (several attempts per call). Python does not remember an import that failed: each one searches sys.path again,
# a large share of the client's CPU time per call.
ENVIRONMENT_PROBES = ("IPython", "pyspark", "dbruntime")
# MLflow's own limits per log_batch call.
MAX_PARAMS, MAX_TAGS, MAX_METRICS = 100, 100, 1000
SEARCH_PAGE = 1000  # results per page of an MLflow search (its default page size)


def every_page(search: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Every result of an MLflow search (``client.search_runs``, ``search_model_versions``...), page after page: one
    call returns one page, so a cleanup or a lookup that read only the first would miss what a long-lived
    experiment holds past it."""
    from mlflow.utils import get_results_from_paginated_fn

    return list(
        get_results_from_paginated_fn(
            lambda size, token: search(*args, max_results=size, page_token=token, **kwargs), SEARCH_PAGE
        )
    )


def run_by_token(client: Any, experiment_id: str, token: str) -> Any:
    """The run a creation token names (its tag, or the tag's earlier name), or None."""
    for tag in (CREATE_TOKEN_TAG, OLD_CREATE_TOKEN_TAG):  # MLflow's search has no OR
        found = client.search_runs([experiment_id], f"tags.`{tag}` = '{token}'", max_results=1)
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Resumed:
    """A dead trial's run, reopened for its retry: the handle the retry tracks it by, and what it had."""

    run: str
    checkpoint: dict[str, Any] | None  # its latest checkpoint (None: it saved none)
    params: dict[str, str]
    logged: dict[str, set[int]]  # metric -> the steps it has points at


def run_name(number: int | str, tags: Mapping[str, Any], value: float | None = None) -> str:
    """A trial run's name in the MLflow UI: its number and its headline (value, pruned epoch or failure)."""
    if tags.get(STATE_TAG) == "COMPLETE" and value is not None:
        return f"trial-{number} {OBJECTIVE_NAME}={value:.4g}"
    if tags.get(STATE_TAG) == "PRUNED":
        return f"trial-{number} pruned@{tags[PRUNED_EPOCH_ATTR]}"
    return f"trial-{number} failed"


def _dead_name(tags: Mapping[str, Any]) -> str | None:
    """The name of a trial's run closed after its worker died (None for a run that is not a trial's)."""
    return run_name(tags["trial_number"], {STATE_TAG: "FAIL"}) if "trial_number" in tags else None


class MlflowTracker:
    """An ``objective.Tracker`` over ``MlflowClient``; curves are flushed every ``flush_seconds`` and when a run ends.

    Calls that fail for a passing reason (a tracking server down or restarting, a sqlite store locked by another
    worker) are retried for up to ``retry_seconds`` (``math.inf``: until it answers), or until ``give_up`` is set;
    ``unreachable_since`` says since when a call has been failing. A periodic curve flush that fails keeps its
    points and training goes on; they are sent with the next flush. Past the window, the call raises
    ``Unreachable``.
    """

    def __init__(self, tracking_uri: str, *, flush_seconds: float = 5.0, retry_seconds: float = 120.0) -> None:
        # No download progress bars or "View run at" lines in a search's output, unless the user asked for them;
        # and MLflow's own HTTP retries kept short, so that the retry window here is the one that applies.
        for variable, value in (
            ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
            ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
        ):
            os.environ.setdefault(variable, value)
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # set after import: mlflow resets it to INFO
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a line per retry in an outage
        remember_missing(ENVIRONMENT_PROBES)
        self.client = MlflowClient(tracking_uri)
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.give_up = threading.Event()
        self.unreachable_since: float | None = None  # time.monotonic() of the first failure of the current call
        self._pending: dict[str, list[Any]] = {}  # run id -> metric points not sent yet
        self._last_flush: dict[str, float] = {}
        self._artifact_uri: dict[str, str] = {}  # of the runs started here: uploads need no runs/get first
        self.upload_seconds = 0.0  # what the latest log_checkpoint took

    def experiment_id(self, name: str) -> str:
        """The id of the experiment named ``name``, created if missing (call once, before workers start).

        It is marked as model training, so that the MLflow UI opens it on its runs, not on GenAI traces."""
        from mlflow.exceptions import MlflowException

        experiment = self._retry(self.client.get_experiment_by_name, name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name, tags=EXPERIMENT_TAGS)
            except MlflowException:  # created by another process in the meantime
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment_id)
            if experiment.tags.get(EXPERIMENT_KIND) != EXPERIMENT_TAGS[EXPERIMENT_KIND]:
                self._retry(
                    self.client.set_experiment_tag, experiment_id, EXPERIMENT_KIND, EXPERIMENT_TAGS[EXPERIMENT_KIND]
                )
        return experiment_id

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._retry(self.client.set_experiment_tag, experiment_id, key, value)

    def start_run(
        self,
        experiment_id: str,
        name: str,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        token: str | None = None,
        maybe_created: bool = False,
    ) -> str:
        """Create a run; ``token`` (default: a new one) names it in the tag CREATE_TOKEN_TAG. ``maybe_created``:
        an earlier process may have created it already (then it is found by its token, not created twice)."""
        all_tags = {key: str(value) for key, value in (tags or {}).items()}
        if parent_run_id is not None:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        # A server that dies after creating the run but before answering would get a second run from a plain
        # retry, and the first would stay RUNNING: a retry first looks for the run this token names.
        all_tags[CREATE_TOKEN_TAG] = token = token or uuid.uuid4().hex
        attempts = 1 if maybe_created else 0

        def create() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                found = run_by_token(self.client, experiment_id, token)
                if found is not None:
                    return found
            return self.client.create_run(experiment_id, run_name=name, tags=all_tags)

        run = self._retry(create)
        self._last_flush[run.info.run_id] = time.monotonic()
        self._artifact_uri[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def run_id(self, run: str, *, wait: bool = True) -> str:
        """The MLflow id of a run this tracker started: ``start_run`` returned it already."""
        return run

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Send the params now (a run that dies early keeps them)."""
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS):
            self._retry(self.client.log_batch, run_id, params=items[start : start + MAX_PARAMS])

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int, *, timestamp: int | None = None) -> None:
        """Buffer one step's values (``timestamp`` in ms, default now); flush when ``flush_seconds`` have passed."""
        self._buffer_metrics(run_id, values, step, timestamp)
        if time.monotonic() - self._last_flush.get(run_id, 0.0) >= self.flush_seconds:
            try:
                self.flush(run_id, retry=False)
            except Exception as error:
                if not is_transient(error):
                    raise
                self._last_flush[run_id] = time.monotonic()  # keep the points; try again at the next flush

    def _buffer_metrics(
        self, run_id: str, values: Mapping[str, float], step: int, timestamp: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000) if timestamp is None else timestamp
        points = [Metric(key, float(value), timestamp, step) for key, value in values.items()]
        self._pending.setdefault(run_id, []).extend(points)

    def pending_points(self, run_id: str) -> list[tuple[str, float, int, int]]:
        """The run's buffered metric points, as (key, value, timestamp, step)."""
        return [(point.key, point.value, point.timestamp, point.step) for point in self._pending.get(run_id, [])]

    def log_points(self, run_id: str, points: list[tuple[str, float, int, int]]) -> None:
        """Send metric points saved by ``pending_points``."""
        for key, value, timestamp, step in points:
            self._buffer_metrics(run_id, {key: value}, step, timestamp)
        self.flush(run_id)

    def flush(self, run_id: str, *, retry: bool = True, tags: Mapping[str, Any] | None = None) -> None:
        """Send the run's buffered metric points (and ``tags``) in as few ``log_batch`` calls as MLflow allows; what a
        failed call did not send stays buffered."""
        from mlflow.entities import RunTag

        pending = self._pending.get(run_id, [])
        tag_items = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        while pending or tag_items:
            tag_chunk = tag_items[:MAX_TAGS]
            chunk = pending[: MAX_METRICS - len(tag_chunk)]  # 1000 entities per call
            try:
                if retry:
                    self._retry(self.client.log_batch, run_id, metrics=chunk, tags=tag_chunk)
                else:
                    self.client.log_batch(run_id, metrics=chunk, tags=tag_chunk)
            except Exception as error:
                if not is_transient(error):  # (Unreachable, an OSError, counts as transient)
                    del pending[: len(chunk)]  # refused: sending it again would fail every later flush too
                raise
            del pending[: len(chunk)]
            del tag_items[: len(tag_chunk)]
        self._pending.pop(run_id, None)
        self._last_flush[run_id] = time.monotonic()

    def _retry(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        delay = 0.2
        while True:
            try:
                result = call(*args, **kwargs)
            except Exception as error:
                if not is_transient(error):
                    self.unreachable_since = None
                    raise
                if self.unreachable_since is None:
                    self.unreachable_since = start
                waited = time.monotonic() - start
                if self.give_up.is_set() or waited + delay > self.retry_seconds:
                    reason = re.sub(r"\w+://\S+", lambda url: mask_password(url.group()), first_line(error))
                    raise Unreachable(f"MLflow tracking unreachable for {waited:.0f}s: {reason}") from error
                self.give_up.wait(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.unreachable_since = None
                return result

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), MAX_TAGS):
            self._retry(self.client.log_batch, run_id, tags=items[start : start + MAX_TAGS])

    def log_state_dict(self, run_id: str, state_dict: Mapping[str, Any]) -> None:
        """Store weights as a plain state_dict file, loadable with ``torch.load(..., weights_only=True)``."""
        import torch

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / STATE_DICT_FILE
            torch.save({key: value.detach().cpu() for key, value in state_dict.items()}, path)
            self.log_state_dict_file(run_id, path)

    def log_state_dict_file(self, run_id: str, path: str | Path) -> None:
        """Upload a state_dict file saved already (named STATE_DICT_FILE)."""
        if run_id not in self._artifact_uri:
            self._retry(self.client.log_artifact, run_id, str(path))
        else:  # straight to the run's artifact store: MlflowClient would look the run up first (one more call)
            self._retry(self._repository(run_id).log_artifact, str(path))

    def _repository(self, run_id: str) -> Any:
        """The run's artifact repository (its URI read from the run once, unless the run was started here)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifact_uri = self._artifact_uri.get(run_id)
        if artifact_uri is None:
            artifact_uri = self._artifact_uri[run_id] = self._retry(self.client.get_run, run_id).info.artifact_uri
        return get_artifact_repository(artifact_uri, tracking_uri=self.client.tracking_uri)

    def log_checkpoint(self, run_id: str, saved: Mapping[str, Any]) -> None:
        """Upload a trial's checkpoint into its run (folder checkpoint.FOLDER), after the curve points buffered so
        far; then remove the run's older checkpoints. A new file per epoch: a kill during an upload leaves the
        previous one whole."""
        from searchlab import checkpoint

        started = time.perf_counter()
        self.flush(run_id)
        repository = self._repository(run_id)
        with tempfile.TemporaryDirectory() as folder:
            path = checkpoint.save(saved, Path(folder))
            self._retry(repository.log_artifact, str(path), checkpoint.FOLDER)
        for name in self._checkpoint_files(run_id):
            if name != path.name:
                self._retry(repository.delete_artifacts, f"{checkpoint.FOLDER}/{name}")
        self.upload_seconds = time.perf_counter() - started

    @property
    def checkpoint_seconds(self) -> float:
        """Its checkpoints are uploaded on the caller's thread: none of their time is elsewhere."""
        return 0.0

    def _checkpoint_files(self, run_id: str) -> list[str]:
        """The run's checkpoint files, the latest first."""
        from searchlab import checkpoint

        listed = self._retry(self.client.list_artifacts, run_id, checkpoint.FOLDER)
        names = [Path(item.path).name for item in listed if not item.is_dir]
        return sorted((name for name in names if checkpoint.epoch_of(name) is not None), reverse=True)

    def latest_checkpoint(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest checkpoint that loads (one cut short by a kill is passed over); None without one."""
        from searchlab import checkpoint

        for name in self._checkpoint_files(run_id):
            with tempfile.TemporaryDirectory() as folder:
                try:
                    local = self._retry(self.client.download_artifacts, run_id, f"{checkpoint.FOLDER}/{name}", folder)
                    return checkpoint.load(Path(local))
                except Unreachable:
                    raise
                except Exception:  # truncated or unreadable: the one before it
                    continue
        return None

    def delete_checkpoints(self, run_id: str) -> None:
        """Remove the run's checkpoints (its trial has ended: its final weights stay)."""
        from searchlab import checkpoint

        if self._checkpoint_files(run_id):
            self._retry(self._repository(run_id).delete_artifacts, checkpoint.FOLDER)

    def reopen_run(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set a closed run RUNNING again with ``tags`` (its trial resumes in it)."""
        self.set_tags(run_id, tags)
        name = f"trial-{tags['trial_number']}" if "trial_number" in tags else None  # no longer "failed"
        self._retry(self.client.update_run, run_id, status="RUNNING", name=name)
        self._last_flush[run_id] = time.monotonic()

    def resume_run(self, run_id: str, tags: Mapping[str, Any]) -> Resumed:
        """Read what a dead trial's run holds for its retry (see ``Resumed``), then reopen it with ``tags``: a read
        that fails leaves it closed."""
        run = self._retry(self.client.get_run, run_id)
        checkpoint = self.latest_checkpoint(run_id)
        logged = self.logged_steps(run_id, run.data.metrics)
        self.reopen_run(run_id, tags)
        return Resumed(run_id, checkpoint, dict(run.data.params), logged)

    def logged_steps(self, run_id: str, metrics: Mapping[str, float]) -> dict[str, set[int]]:
        """The steps each of the run's ``metrics`` (names) has points at."""
        history = self.client.get_metric_history
        return {key: {point.step for point in self._retry(history, run_id, key)} for key in metrics}

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str) -> None:
        """Upload the files of a local folder under ``artifact_path`` of the run."""
        self._retry(self.client.log_artifacts, run_id, str(folder), artifact_path)

    def end_run(
        self,
        run_id: str,
        status: str,
        tags: Mapping[str, Any] | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Flush what is buffered, with the run's final ``tags`` and ``metrics`` (step 0), and close it as FINISHED,
        FAILED or KILLED; a new name (tag ``mlflow.runName``) goes with the close."""
        tags = dict(tags or {})
        name = tags.pop(RUN_NAME_TAG, None)
        try:
            self._buffer_metrics(run_id, metrics or {}, 0)
            self.flush(run_id, tags=tags)
        finally:
            self._retry(self._terminate, run_id, status, None if name is None else str(name))
            self._last_flush.pop(run_id, None)
            self._artifact_uri.pop(run_id, None)

    def _terminate(self, run_id: str, status: str, name: str | None) -> None:
        """What ``MlflowClient.set_terminated`` does, renaming the run in the same update. A run name sent as a tag
        in log_batch costs the server two more transactions and a reload of the whole run; MlflowClient.update_run
        would look the run up first and leave its end time unset."""
        from mlflow.entities import RunStatus

        self.client._tracking_client.store.update_run_info(
            run_id, run_status=RunStatus.from_string(status), end_time=int(time.time() * 1000), run_name=name
        )

    def close_dead_run(
        self, run_id: str, *, reason: str, retried: bool, params: Mapping[str, Any] | None = None
    ) -> None:
        """Close a dead worker's run as KILLED. Its curves stay as the worker sent them, all cut at the same last
        flush (none is completed from the trial's reported values, so that they stay alike). ``params``, the trial's:
        those the run lacks are logged (a worker sends them just after the run's creation, from its background
        sender, which a kill can stop before they go while the trial's first epochs are already in Optuna)."""
        run = self._retry(self.client.get_run, run_id)
        if params:
            self.log_params(run_id, {key: value for key, value in params.items() if key not in run.data.params})
        self.set_tags(run_id, {STATE_TAG: "FAIL", REASON: reason, "retried": retried})
        self._retry(self._terminate, run_id, "KILLED", _dead_name(run.data.tags))
        if not retried:  # no retry will resume from them
            self.delete_checkpoints(run_id)

    def close_dead_runs(
        self, experiment_id: str, is_dead: Callable[[str], bool], ended: Callable[[int], Any] = lambda number: None
    ) -> list[str]:
        """Close the RUNNING runs (parents and trials) whose process (tag ``worker``) is dead: those its trial's
        recovery cannot name (killed before the trial recorded its run id, or a killed run). Each is KILLED, but for
        a run whose trial ``ended`` (its number → the Optuna trial when it completed or was pruned): its worker died
        after telling Optuna, before its sender closed the run, which then closes as the trial ended."""
        runs = self._retry(every_page, self.client.search_runs, [experiment_id], "attributes.status = 'RUNNING'")
        dead = [run for run in runs if is_dead(run.data.tags.get(WORKER, ""))]
        for run in dead:
            number = run.data.tags.get("trial_number", "")
            trial = ended(int(number)) if number.isdigit() else None
            if trial is None:
                self.set_tags(run.info.run_id, {STATE_TAG: "FAIL", REASON: "its searchlab process died"})
                self._retry(self._terminate, run.info.run_id, "KILLED", _dead_name(run.data.tags))
            else:
                self._close_as_ended(run, trial)
        return [run.info.run_id for run in dead]

    def _close_as_ended(self, run: Any, trial: Any) -> None:
        """Close a dead worker's run as its Optuna ``trial`` ended (COMPLETE or PRUNED), with the value it has."""
        tags: dict[str, Any] = {STATE_TAG: trial.state.name, REASON: "its worker died after the trial ended"}
        if PRUNED_EPOCH_ATTR in trial.user_attrs:
            tags[PRUNED_EPOCH_ATTR] = trial.user_attrs[PRUNED_EPOCH_ATTR]
        if trial.value is not None and OBJECTIVE_NAME not in run.data.metrics:
            self._buffer_metrics(run.info.run_id, {OBJECTIVE_NAME: trial.value}, trial.user_attrs.get("best_epoch", 0))
        self.flush(run.info.run_id, tags=tags)
        name = run_name(trial.number, tags, trial.value)
        self._retry(self._terminate, run.info.run_id, "FINISHED", name)

    def download_state_dict(self, run_id: str, destination: str | Path) -> Path:
        """Fetch a run's state_dict artifact into the folder ``destination``."""
        return Path(self.client.download_artifacts(run_id, STATE_DICT_FILE, str(destination)))


class Unreachable(ConnectionError, RunFailed):
    """The tracking store did not answer within the retry window (or the tracker gave up waiting)."""


def remember_missing(names: tuple[str, ...]) -> None:
    """Make a later ``import NAME`` of a module that is not installed fail at once (``sys.modules[NAME] = None``,
    Python's own marker for it) instead of searching every folder of sys.path again."""
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]


def is_transient(error: BaseException) -> bool:
    """A failure worth retrying: the tracking server unreachable or erroring, or a locked sqlite store."""
    from mlflow.exceptions import MlflowException

    if "database is locked" in str(error):
        return True
    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500
    return isinstance(error, OSError)
