"""The trial loop's tracker: each call returns at once, and one sender thread makes it on an ``MlflowTracker``.

Training never waits for MLflow. ``start_run`` returns a handle at once (the run's creation token); the run is
created in the background and ``run_id(handle)`` gives its MLflow id. Calls for one run are made in their order;
run creations go first. A short trial costs four calls: create, its params, its weights, and one ``log_batch``
with its curves and final tags that closes it.

An outage holds the records, never the training: the sender retries each call until the tracking store answers,
while the next trials go on and queue theirs. At most ``max_in_memory`` weights wait in memory; more are written
to disk and uploaded from there. When the tracker closes and the store has been unreachable for ``wait`` seconds
(Ctrl-C: ``GIVE_UP_SECONDS``), what is still queued is saved under ``unsent_folder(uri)``, and the next searchlab
run on that store sends it (``resend_unsent``).

An error that retrying cannot cure (MLflow refused a call) belongs to its run: the trial that owns it fails at its
next call while it is still training; once the trial has ended, its run keeps the trial's status and gets a
``tracking_error`` tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from searchlab.errors import RunFailed, first_line
from searchlab.tracking import STATE_DICT_FILE, MlflowTracker, Unreachable

_STOP = ("stop", "", (), {})
RECORDS_FILE = "records.pt"
GIVE_UP_SECONDS = 2.0  # how long a Ctrl-C waits for an unreachable store before saving the records


class TrackingFailed(RunFailed):
    """MLflow refused a call of a trial that is still training: that trial fails."""


def unsent_folder(tracking_uri: str) -> Path:
    """Where records that could not reach ``tracking_uri`` wait: one folder per store, under
    ``SEARCHLAB_UNSENT_DIR`` (default ``~/.cache/searchlab/unsent``)."""
    root = os.environ.get("SEARCHLAB_UNSENT_DIR") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "searchlab" / "unsent"
    return Path(root) / hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


class BackgroundTracker:
    """A Tracker whose calls are made, in order, by one sender thread (see the module's docstring)."""

    def __init__(self, tracker: MlflowTracker, *, wait: float = 120.0, max_in_memory: int = 2,
                 max_unsent: int = 1000) -> None:
        tracker.retry_seconds = math.inf  # until the store answers, or close() gives up
        self.tracker = tracker
        self.wait = wait
        self.saved: Path | None = None  # where close() saved what could not be sent
        self._queue: queue.SimpleQueue[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()
        self._ids: dict[str, str | None] = {}  # handle -> MLflow run id (None: MLflow refused its creation)
        self._created = threading.Condition()
        self._errors: dict[str, BaseException] = {}  # handle -> an error its trial has not raised yet
        self._broken: dict[str, str] = {}  # handle -> its first error, for the run's tracking_error tag
        self._open: set[str] = set()  # handles started and not yet ended (the trial loop's side)
        self._in_memory = threading.BoundedSemaphore(max_in_memory)
        self._unsent = threading.Semaphore(max_unsent)  # ended runs not sent yet: end_run waits beyond that
        self._leftovers: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []
        self._folder = unsent_folder(tracker.client.tracking_uri) / \
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._thread = threading.Thread(target=self._send, name="searchlab-tracking", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundTracker:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.close(wait=GIVE_UP_SECONDS if kind is KeyboardInterrupt else None)

    # The Tracker calls of the trial loop: queued, never waiting on MLflow.

    def start_run(self, experiment_id: str, name: str, *, parent_run_id: str | None = None,
                  tags: Mapping[str, Any] | None = None) -> str:
        handle = uuid.uuid4().hex
        self._open.add(handle)
        self._queue.put(("start", handle, (experiment_id, name),
                         {"parent_run_id": parent_run_id, "tags": {k: str(v) for k, v in (tags or {}).items()}}))
        return handle

    def log_params(self, run: str, params: Mapping[str, Any]) -> None:
        self._put("log_params", run, {key: str(value) for key, value in params.items()})

    def log_metrics(self, run: str, values: Mapping[str, float], step: int) -> None:
        self._put("log_metrics", run, {key: float(value) for key, value in values.items()}, step,
                  timestamp=int(time.time() * 1000))

    def log_state_dict(self, run: str, state_dict: Mapping[str, Any]) -> None:
        # Detached CPU tensors: the model may go on training (or be freed) while they wait to be sent.
        weights = {key: value.detach().to("cpu", copy=True) for key, value in state_dict.items()}
        if self._in_memory.acquire(blocking=False):
            self._put("log_state_dict", run, weights)
            return
        import torch  # the store is slow or down: this one waits on disk

        name = f"weights-{uuid.uuid4().hex[:8]}"
        (self._folder / name).mkdir(parents=True)
        torch.save(weights, self._folder / name / STATE_DICT_FILE)
        self._put("log_state_dict_file", run, name)

    def end_run(self, run: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        """Queue the run's close; if MLflow refused one of its calls, the run closes FAILED and this raises."""
        error = self._errors.pop(run, None)
        tags = {key: str(value) for key, value in (tags or {}).items()}
        if error is not None:
            status, tags = "FAILED", {**tags, "state": "FAIL", "reason": f"MLflow: {first_line(error)}"[:500]}
        self._unsent.acquire()  # released once the sender has closed the run
        self._queue.put(("end_run", run, (status,), {"tags": tags}))
        self._open.discard(run)
        if error is not None:
            raise TrackingFailed(f"MLflow tracking failed: {first_line(error)}") from error

    def run_id(self, run: str, *, wait: bool = True) -> str | None:
        """The MLflow id of the run behind ``run`` (a handle); None while it is being created (``wait=False``, or
        while the store is unreachable) or when MLflow refused its creation."""
        def known() -> bool:
            return run in self._ids or not self._thread.is_alive() or self.tracker.unreachable_since is not None

        with self._created:
            if wait:
                self._created.wait_for(known, timeout=None)
            return self._ids.get(run)

    def close(self, *, wait: float | None = None) -> None:
        """Close the runs still open (KILLED: their trial was cut short), send everything queued and stop the
        sender; after ``wait`` seconds (default: the tracker's) of an unreachable store, save what is left."""
        wait = self.wait if wait is None else wait
        if self._thread.is_alive():
            for run in list(self._open):
                self._queue.put(("end_run", run, ("KILLED",), {"tags": {"state": "FAIL", "reason": "stopped"}}))
                self._open.discard(run)
            self._queue.put(_STOP)
            closing = time.monotonic()
            while self._thread.is_alive():
                self._thread.join(0.1)
                since = self.tracker.unreachable_since
                if since is not None and time.monotonic() - max(since, closing) > wait:
                    self.tracker.give_up.set()  # the sender keeps what is left, without trying it
        self._save_leftovers()

    # The sender thread.

    def _put(self, call: str, run: str, *args: Any, **kwargs: Any) -> None:
        error = self._errors.pop(run, None)
        if error is not None:
            raise TrackingFailed(f"MLflow tracking failed: {first_line(error)}") from error
        self._queue.put((call, run, args, kwargs))

    def _send(self) -> None:
        while True:
            calls = [self._queue.get()]
            while True:  # whatever else is queued: run creations first, the rest in order
                try:
                    calls.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for call in sorted(calls, key=lambda call: call[0] != "start"):
                if call is not _STOP:
                    self._make(call)
            if _STOP in calls:
                return

    def _make(self, entry: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> None:
        call, run, args, kwargs = entry
        if self.tracker.give_up.is_set():
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
            elif call == "log_state_dict_file":
                self.tracker.log_state_dict_file(run_id, self._folder / args[0] / STATE_DICT_FILE)
                shutil.rmtree(self._folder / args[0], ignore_errors=True)
            else:
                getattr(self.tracker, call)(run_id, *args, **kwargs)
        except Unreachable:  # close() gave up waiting: kept for the next run
            self._leftovers.append(entry)
        except Exception as error:
            self._broken.setdefault(run, first_line(error)[:500])
            if run in self._open:
                self._errors.setdefault(run, error)
            elif call == "end_run":
                print(f"warning: MLflow refused to close run {self._ids.get(run)}: {first_line(error)}",
                      file=sys.stderr)
        finally:
            if call == "log_state_dict":
                self._in_memory.release()
            if call == "end_run" and entry not in self._leftovers:
                self._unsent.release()

    def _end(self, run: str, run_id: str, status: str, tags: dict[str, str]) -> None:
        broken = self._broken.pop(run, None)
        if broken is not None:  # what it lost stays lost; the run says so
            tags = {**tags, "tracking_error": broken}
        self.tracker.end_run(run_id, status, tags)

    def _save_leftovers(self) -> None:
        """Save what the store did not get (calls, and curve points the tracker had buffered) for the next run."""
        points = {}
        for handle, run_id in self._ids.items():
            if run_id is not None and self.tracker.pending_points(run_id):
                points[handle] = self.tracker.pending_points(run_id)
        if not self._leftovers and not points:
            shutil.rmtree(self._folder, ignore_errors=True)  # empty, or the weights it held were sent
            return
        import torch

        self._folder.mkdir(parents=True, exist_ok=True)
        calls = [("log_points", handle, (handle_points,), {}) for handle, handle_points in points.items()]
        record = {"ids": dict(self._ids), "calls": calls + self._leftovers}
        torch.save(record, self._folder / RECORDS_FILE)
        self.saved = self._folder


def unsent_runs(tracking_uri: str) -> int:
    """How many runs have records waiting for ``tracking_uri`` on this host."""
    import torch

    total = 0
    for records in unsent_folder(tracking_uri).glob(f"*/{RECORDS_FILE}"):
        with contextlib.suppress(Exception):
            total += len({handle for _, handle, _, _ in torch.load(records, weights_only=True)["calls"]})
    return total


def resend_unsent(tracking_uri: str, *, wait: float) -> int:
    """Send the records earlier runs on this host saved for ``tracking_uri``; returns how many runs it completed.
    What the store still does not take stays saved. Folders that a dead process left without records (weights it
    had spilled) are removed."""
    import torch

    sent = 0
    for folder in sorted(unsent_folder(tracking_uri).glob("*")):
        if ".sending-" in folder.name:  # claimed by a resend that was killed: give it back
            original, _, pid = folder.name.partition(".sending-")
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    folder.rename(folder.with_name(original))
            continue
        if not (folder / RECORDS_FILE).is_file():
            _remove_if_abandoned(folder)
            continue
        claimed = folder.with_name(f"{folder.name}.sending-{os.getpid()}")
        try:
            folder.rename(claimed)  # one sender per folder, even with several runs starting at once
        except OSError:
            continue
        record = torch.load(claimed / RECORDS_FILE, weights_only=True)
        left = _replay(MlflowTracker(tracking_uri, retry_seconds=wait), record, claimed)
        if left:
            torch.save({"ids": record["ids"], "calls": left}, claimed / RECORDS_FILE)
            claimed.rename(folder)
            break  # the store is unreachable again: the rest waits too
        sent += len({handle for _, handle, _, _ in record["calls"]})
        shutil.rmtree(claimed, ignore_errors=True)
    return sent


def _replay(tracker: MlflowTracker, record: dict[str, Any], folder: Path) -> list[Any]:
    """Make the saved calls in their order; returns those left when the store stopped answering."""
    ids = record["ids"]
    for index, (call, handle, args, kwargs) in enumerate(record["calls"]):
        try:
            if call == "start":
                ids[handle] = tracker.start_run(*args, token=handle, maybe_created=True, **kwargs)
                continue
            run_id = ids.get(handle)
            if run_id is None:
                continue
            if call == "log_state_dict_file":
                tracker.log_state_dict_file(run_id, folder / args[0] / STATE_DICT_FILE)
            else:
                getattr(tracker, call)(run_id, *args, **kwargs)
        except Unreachable:
            return record["calls"][index:]
        except Exception as error:
            print(f"warning: MLflow refused a saved {call} of run {ids.get(handle)}: {first_line(error)}",
                  file=sys.stderr)
    return []


def _remove_if_abandoned(folder: Path) -> None:
    """A folder of this host whose process is gone holds weights nothing will send: remove it."""
    parts = folder.name.rsplit("-", 2)
    if len(parts) == 3 and parts[0] == socket.gethostname() and parts[1].isdigit() and not _alive(int(parts[1])):
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
