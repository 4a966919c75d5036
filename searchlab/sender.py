"""The trial loop's tracker: each call returns at once, and one sender thread makes it on an ``MlflowTracker``.

Training never waits for MLflow. ``start_run`` returns a handle at once; the run is created in the background
and ``run_id(handle)`` gives its MLflow id. Calls for one run are made in their order; run creations go first.
A run's params, curves and final tags reach MLflow in one ``log_batch`` when they are still queued together
(a short trial: create, one batch, its weights, close). At most ``max_unsent`` ended runs wait to be sent:
``end_run`` blocks beyond that, so a slow server slows the search instead of filling memory.

An error in the background (after the tracker's own retries) is raised by the next call the trial loop makes,
so the trial running then fails with it; the run it happened on still gets its other calls and is closed as
FAILED, with the error in its ``tracking_error`` tag. ``close()`` sends everything queued, then raises an error
that no call raised yet.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from searchlab.errors import RunFailed, first_line
from searchlab.tracking import MlflowTracker

_STOP = ("stop", "", (), {})


class TrackingFailed(RunFailed):
    """A tracking call made in the background failed (in a trial: the trial fails; at the end: the run does)."""


class BackgroundTracker:
    """A Tracker whose calls are made, in order, by one sender thread (see the module's docstring)."""

    def __init__(self, tracker: MlflowTracker, *, max_unsent: int = 2) -> None:
        self.tracker = tracker
        self._queue: queue.SimpleQueue[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()
        self._ids: dict[str, str | None] = {}  # handle -> MLflow run id (None: its creation failed)
        self._created = threading.Condition()
        self._broken: dict[str, BaseException] = {}  # handle -> the first error on that run
        self._error: BaseException | None = None  # not yet raised in the trial loop
        self._error_lock = threading.Lock()
        self._unsent = threading.Semaphore(max_unsent)
        self._open: set[str] = set()  # handles started and not yet ended (the trial loop's side)
        self._retry_seconds = tracker.retry_seconds
        self._thread = threading.Thread(target=self._send, name="searchlab-tracking", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundTracker:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.close(raise_error=kind is None)

    # The Tracker calls of the trial loop: queued, never waiting on MLflow.

    def start_run(self, experiment_id: str, name: str, *, parent_run_id: str | None = None,
                  tags: Mapping[str, Any] | None = None) -> str:
        handle = f"pending-{uuid.uuid4().hex}"
        self._open.add(handle)
        self._put("start", handle, experiment_id, name, parent_run_id=parent_run_id, tags=dict(tags or {}))
        return handle

    def log_params(self, run: str, params: Mapping[str, Any]) -> None:
        self._put("log_params", run, dict(params), buffered=True)

    def log_metrics(self, run: str, values: Mapping[str, float], step: int) -> None:
        self._put("log_metrics", run, dict(values), step, timestamp=int(time.time() * 1000))

    def log_state_dict(self, run: str, state_dict: Mapping[str, Any]) -> None:
        # Detached CPU tensors: the model may go on training (or be freed) while they wait to be sent.
        self._put("log_state_dict", run, {key: value.detach().to("cpu", copy=True) for key, value in
                                          state_dict.items()})

    def end_run(self, run: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Queue the run's close (always, even after an error), then raise an error not raised yet."""
        self._unsent.acquire()  # released once the sender has closed the run
        self._queue.put(("end_run", run, (status,), {"tags": dict(tags or {})}))
        self._open.discard(run)
        self._raise_pending()

    def run_id(self, run: str, *, wait: bool = True) -> str | None:
        """The MLflow id of the run behind ``run`` (a handle); None while it is being created (``wait=False``) or
        when its creation failed."""
        with self._created:
            if wait:
                self._created.wait_for(lambda: run in self._ids or not self._thread.is_alive())
            return self._ids.get(run)

    def close(self, *, raise_error: bool = True) -> None:
        """Close the runs still open (KILLED: their trial was cut short), send everything queued and stop the
        sender; then raise an error the trial loop has not seen."""
        if self._thread.is_alive():
            for run in list(self._open):
                self._queue.put(("end_run", run, ("KILLED",), {"tags": {"state": "FAIL", "reason": "stopped"}}))
                self._open.discard(run)
            self._queue.put(_STOP)
            self._thread.join()
        if raise_error:
            self._raise_pending()

    # The sender thread.

    def _put(self, call: str, run: str, *args: Any, **kwargs: Any) -> None:
        self._raise_pending()
        self._queue.put((call, run, args, kwargs))

    def _raise_pending(self) -> None:
        with self._error_lock:
            error, self._error = self._error, None
        if error is not None:
            raise TrackingFailed(f"MLflow tracking failed: {first_line(error)}") from error

    def _send(self) -> None:
        while True:
            calls = [self._queue.get()]
            while True:  # whatever else is queued: run creations first, the rest in order
                try:
                    calls.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for call in sorted(calls, key=lambda call: call[0] != "start"):
                if call is _STOP:
                    continue
                self._make(*call)
            if _STOP in calls:
                return

    def _make(self, call: str, run: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if call == "start":
                run_id: str | None = None
                try:
                    run_id = self.tracker.start_run(*args, **kwargs)
                finally:
                    with self._created:
                        self._ids[run] = run_id
                        self._created.notify_all()
                return
            run_id = self._ids.get(run)
            if call == "end_run":
                self._end(run, run_id, *args, **kwargs)
            elif run_id is not None:  # after an error the run still gets the rest: it keeps what it can
                getattr(self.tracker, call)(run_id, *args, **kwargs)
            self.tracker.retry_seconds = self._retry_seconds
        except Exception as error:
            if isinstance(error, ConnectionError):  # unreachable for the whole window: later calls try once
                self.tracker.retry_seconds = 0.0
            if call != "end_run":
                self._broken.setdefault(run, error)
            with self._error_lock:
                self._error = self._error or error

    def _end(self, run: str, run_id: str | None, status: str, tags: dict[str, Any]) -> None:
        try:
            if run_id is None:
                return
            broken = self._broken.get(run)
            if broken is not None:  # what it lost stays lost; the run says so
                status, tags = "FAILED", {**tags, "tracking_error": first_line(broken)[:500]}
            self.tracker.end_run(run_id, status, tags)
        finally:
            self._broken.pop(run, None)
            self._unsent.release()
