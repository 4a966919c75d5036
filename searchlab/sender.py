"""The trial loop's tracker: each call returns at once, and one sender thread makes it on an ``MlflowTracker``.

Training never waits for MLflow. ``start_run`` returns a handle at once (the run's creation token); the run is
created in the background and ``run_id(handle)`` gives its MLflow id. Calls for one run are made in their order;
run creations and params go first (ahead of other runs' weights and curves), so that a run whose id a trial has
recorded gets its params at once after it, and a worker killed mid-trial leaves them. A short trial costs four
calls: create, its params, its weights, and one ``log_batch`` with its curves and final tags that closes it.

An outage holds the records, never the training: the sender retries each call until the tracking store answers,
while the next trials go on and queue theirs. At most ``max_in_memory`` weights wait in memory; more are written
to disk and uploaded from there. When the tracker closes and the store has been unreachable for ``wait`` seconds
(Ctrl-C: ``GIVE_UP_SECONDS``), what is still queued is saved under ``unsent.unsent_folder(uri)``, and the next
searchlab run on that store sends it (``unsent.resend_unsent``).

An error that retrying cannot cure (MLflow refused a call) belongs to its run: the trial that owns it fails at its
next call while it is still training; once the trial has ended, its run keeps the trial's status and gets a
``tracking_error`` tag.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from searchlab.errors import RunFailed, first_line
from searchlab.settings import REASON, STATE_DICT_FILE, STATE_TAG
from searchlab.tracking import MlflowTracker, Resumed, Unreachable
from searchlab.unsent import Call, save_records, unsent_folder

_STOP: Call = ("stop", "", (), {})
FIRST = ("start", "log_params")  # the calls made before any queued behind them: a run's creation and its params
GIVE_UP_SECONDS = 2.0  # how long a Ctrl-C waits for the store, reachable or not, before saving the records
RUN_ID_WAIT_SECONDS = 2.0  # how long a trial's end waits for its run to be created before naming it by its token


class TrackingFailed(RunFailed):
    """MLflow refused a call of a trial that is still training: that trial fails."""


class BackgroundTracker:
    """A Tracker whose calls are made, in order, by one sender thread (see the module's docstring)."""

    def __init__(
        self, tracker: MlflowTracker, *, wait: float = 120.0, max_in_memory: int = 2, max_unsent: int = 1000
    ) -> None:
        tracker.retry_seconds = math.inf  # until the store answers, or close() gives up
        self.tracker = tracker
        self.wait = wait
        self.saved: Path | None = None  # where close() saved what could not be sent
        self._starts: deque[Call] = deque()  # run creations: made before any other queued call
        self._calls: deque[Call] = deque()
        self._wake = threading.Condition()
        self._current: Call | None = None  # the call the sender is making
        self._ids: dict[str, str | None] = {}  # handle -> MLflow run id (None: MLflow refused its creation)
        self._created = threading.Condition()
        self._errors: dict[str, BaseException] = {}  # handle -> an error its trial has not raised yet
        self._broken: dict[str, str] = {}  # handle -> its first error, for the run's tracking_error tag
        self._open: set[str] = set()  # handles started and not yet ended (the trial loop's side)
        self._in_memory = threading.BoundedSemaphore(max_in_memory)
        self._unsent = threading.Semaphore(max_unsent)  # ended runs not sent yet: end_run waits beyond that
        self._leftovers: list[Call] = []
        self._checkpoints: dict[str, Mapping[str, Any]] = {}  # handle -> its latest checkpoint not sent yet
        self._reader: MlflowTracker | None = None  # for the reads a resumed trial waits for
        self._folder = (
            unsent_folder(tracker.client.tracking_uri) / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._thread = threading.Thread(target=self._send, name="searchlab-tracking", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundTracker:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.close(interrupted=kind is KeyboardInterrupt)

    # The Tracker calls of the trial loop: queued, never waiting on MLflow.

    def start_run(
        self, experiment_id: str, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        handle = uuid.uuid4().hex
        self._open.add(handle)
        self._enqueue(
            (
                "start",
                handle,
                (experiment_id, name),
                {"parent_run_id": parent_run_id, "tags": {k: str(v) for k, v in (tags or {}).items()}},
            )
        )
        return handle

    def log_params(self, run: str, params: Mapping[str, Any]) -> None:
        self._put("log_params", run, {key: str(value) for key, value in params.items()})

    def log_metrics(self, run: str, values: Mapping[str, float], step: int) -> None:
        self._put(
            "log_metrics",
            run,
            {key: float(value) for key, value in values.items()},
            step,
            timestamp=int(time.time() * 1000),
        )

    def log_state_dict(self, run: str, state_dict: Mapping[str, Any]) -> None:
        # Detached CPU tensors: the model may go on training (or be freed) while they wait to be sent.
        weights = {key: value.detach().to("cpu", copy=True) for key, value in state_dict.items()}
        self._raise_error_of(run)
        if self._in_memory.acquire(blocking=False):
            self._put("log_state_dict", run, weights)
            return
        import torch  # the store is slow or down: this one waits on disk

        name = f"weights-{uuid.uuid4().hex[:8]}"
        (self._folder / name).mkdir(mode=0o700, parents=True)
        torch.save(weights, self._folder / name / STATE_DICT_FILE)
        self._put("log_state_dict_file", run, name)

    def log_checkpoint(self, run: str, checkpoint: Mapping[str, Any]) -> None:
        """Queue the trial's checkpoint; one still queued for the run is replaced (only the latest is worth sending,
        and an outage keeps one per trial in memory, not one per epoch)."""
        self._raise_error_of(run)
        with self._wake:
            queued = run in self._checkpoints
            self._checkpoints[run] = checkpoint
            if not queued:
                self._calls.append(("log_checkpoint", run, (), {}))
                self._wake.notify()

    @property
    def checkpoint_seconds(self) -> float:
        """What the sender's latest checkpoint upload took (the trial's thread only queued it)."""
        return self.tracker.upload_seconds

    def delete_checkpoints(self, run: str) -> None:
        with self._wake:
            self._checkpoints.pop(run, None)
        self._put("delete_checkpoints", run)

    def resume_run(self, run_id: str, tags: Mapping[str, Any]) -> Resumed:
        """Reopen a dead trial's run for its retry, and read what the retry needs from it (its latest checkpoint,
        params and curve steps): the trial waits for these, up to ``wait`` seconds of an unreachable store."""
        if self._reader is None:
            self._reader = MlflowTracker(self.tracker.client.tracking_uri, retry_seconds=self.wait)
        resumed = self._reader.resume_run(run_id, tags)
        handle = uuid.uuid4().hex
        with self._created:
            self._ids[handle] = run_id
        self._open.add(handle)
        return dataclasses.replace(resumed, run=handle)

    def end_run(self, run: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Queue the run's close. If MLflow refused one of its calls, the run closes FAILED, and a trial that was
        to end FINISHED fails with the error (one ending otherwise, e.g. on Ctrl-C, keeps its own exception)."""
        error = self._errors.pop(run, None)
        tags = {key: str(value) for key, value in (tags or {}).items()}
        if error is not None:
            tags = {**tags, STATE_TAG: "FAIL", REASON: f"MLflow: {first_line(error)}"[:500]}
        self._unsent.acquire()  # released once the sender has closed the run
        self._enqueue(("end_run", run, ("FAILED" if error is not None else status,), {"tags": tags}))
        self._open.discard(run)
        if error is not None and status == "FINISHED":
            raise TrackingFailed(f"MLflow tracking failed: {first_line(error)}") from error

    def run_id(self, run: str, *, wait: bool = True) -> str | None:
        """The MLflow id of the run behind ``run`` (a handle); None while it is being created (``wait=False``; with
        ``wait``, after RUN_ID_WAIT_SECONDS or as soon as the store is unreachable) or when MLflow refused it.
        A run not named yet is found later by its handle, its creation token (results.trial_run_id)."""
        deadline = time.monotonic() + (RUN_ID_WAIT_SECONDS if wait else 0.0)
        with self._created:
            while (
                run not in self._ids
                and self._thread.is_alive()
                and self.tracker.unreachable_since is None
                and time.monotonic() < deadline
            ):
                self._created.wait(0.05)
            return self._ids.get(run)

    def close(self, *, wait: float | None = None, interrupted: bool = False) -> None:
        """Close the runs still open (KILLED: their trial was cut short), send everything queued and stop the
        sender. What is left once the store has been unreachable for ``wait`` seconds (default: the tracker's),
        or, ``interrupted``, after GIVE_UP_SECONDS whatever the store does, is saved for the next run."""
        wait = self.wait if wait is None else wait
        try:
            if self._thread.is_alive():
                for run in list(self._open):
                    self._enqueue(("end_run", run, ("KILLED",), {"tags": {STATE_TAG: "FAIL", REASON: "stopped"}}))
                    self._open.discard(run)
                self._enqueue(_STOP)
                closing = time.monotonic()
                while self._thread.is_alive():
                    self._thread.join(0.1)
                    since = self.tracker.unreachable_since
                    if (interrupted and time.monotonic() - closing > GIVE_UP_SECONDS) or (
                        since is not None and time.monotonic() - max(since, closing) > wait
                    ):
                        break
        except BaseException:  # a Ctrl-C while waiting for the store: save what is left at once
            interrupted = True
            raise
        finally:
            self._stop_sending(GIVE_UP_SECONDS if interrupted else 0.5)
            self._save_leftovers()

    # The sender thread.

    def _put(self, call: str, run: str, *args: Any, **kwargs: Any) -> None:
        self._raise_error_of(run)
        self._enqueue((call, run, args, kwargs))

    def _raise_error_of(self, run: str) -> None:
        error = self._errors.pop(run, None)
        if error is not None:
            raise TrackingFailed(f"MLflow tracking failed: {first_line(error)}") from error

    def _enqueue(self, entry: Call) -> None:
        with self._wake:
            (self._starts if entry[0] in FIRST else self._calls).append(entry)
            self._wake.notify()

    def _send(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._starts or self._calls)
                entry = self._starts.popleft() if self._starts else self._calls.popleft()
                if entry is _STOP:
                    return
                self._current = entry
            self._make(entry)
            self._current = None

    def _stop_sending(self, grace: float) -> None:
        """Stop the sender (it keeps each call it would make from now on) and take every call it did not make."""
        self.tracker.give_up.set()
        self._thread.join(grace)
        with self._wake:
            if self._thread.is_alive() and self._current is not None:  # stuck in a call: it may or may not land
                self._leftovers.append(self._current)
            self._leftovers += [entry for entry in (*self._starts, *self._calls) if entry is not _STOP]
            self._starts.clear()
            self._calls.clear()
            self._calls.append(_STOP)
            self._wake.notify()

    def _make(self, entry: Call) -> None:
        call, run, args, kwargs = entry
        kept = self.tracker.give_up.is_set()
        if kept:
            self._leftovers.append(entry)
            return
        try:
            if call == "start":
                run_id = None
                try:
                    run_id = self.tracker.start_run(*args, token=run, **kwargs)
                finally:
                    with self._created:
                        if run_id is not None or not self.tracker.give_up.is_set():
                            self._ids[run] = run_id
                        self._created.notify_all()
                return
            run_id = self._ids.get(run)
            if run_id is None:
                return  # MLflow refused its creation: its trial knows
            if call == "end_run":
                self._end(run, run_id, *args, **kwargs)
            elif call == "log_checkpoint":
                with self._wake:
                    checkpoint = self._checkpoints.pop(run, None)
                if checkpoint is not None:
                    self.tracker.log_checkpoint(run_id, checkpoint)
            elif call == "log_state_dict_file":
                self.tracker.log_state_dict_file(run_id, self._folder / args[0] / STATE_DICT_FILE)
                shutil.rmtree(self._folder / args[0], ignore_errors=True)
            else:
                getattr(self.tracker, call)(run_id, *args, **kwargs)
        except Unreachable:  # close() gave up waiting: kept for the next run
            kept = True
            self._leftovers.append(entry)
        except Exception as error:
            self._broken.setdefault(run, first_line(error)[:500])
            if run in self._open:
                self._errors.setdefault(run, error)
            elif call == "end_run":
                print(
                    f"warning: MLflow refused to close run {self._ids.get(run)}: {first_line(error)}", file=sys.stderr
                )
        finally:
            if call == "log_state_dict":
                self._in_memory.release()
            if call == "end_run" and not kept:
                self._unsent.release()

    def _end(self, run: str, run_id: str, status: str, tags: dict[str, str]) -> None:
        broken = self._broken.pop(run, None)
        if broken is not None:  # what it lost stays lost; the run says so
            tags = {**tags, "tracking_error": broken}
        self.tracker.end_run(run_id, status, tags)

    def _save_leftovers(self) -> None:
        """Save what the store did not get (calls, and curve points the tracker had buffered) for the next run."""
        self._leftovers = [entry for entry in self._leftovers if entry[0] != "log_checkpoint"]  # its run has ended
        points = {}
        for handle, run_id in self._ids.items():
            if run_id is not None and self.tracker.pending_points(run_id):
                points[handle] = self.tracker.pending_points(run_id)
        if not self._leftovers and not points:
            shutil.rmtree(self._folder, ignore_errors=True)  # empty, or the weights it held were sent
            return
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        calls: list[Call] = [("log_points", handle, (handle_points,), {}) for handle, handle_points in points.items()]
        save_records(self._folder, {"ids": dict(self._ids), "calls": calls + self._leftovers})
        self.saved = self._folder
