"""Records that could not reach the tracking store, saved on disk until a later searchlab run sends them.

``sender.BackgroundTracker`` saves what it could not send under ``unsent_folder(uri)``, one folder per process:
the calls it did not make (weights it had spilled to disk beside them) and the curve points it had buffered. The
next run on that store resends them in order (``resend_unsent``); a folder a dead process left without records is
removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from searchlab.errors import first_line
from searchlab.settings import STATE_DICT_FILE
from searchlab.tracking import MlflowTracker, Unreachable

Call = tuple[str, str, tuple[Any, ...], dict[str, Any]]  # a tracker call: (method, run handle, args, kwargs)
RECORDS_FILE = "records.pt"
# What a saved record may ask for: nothing else is replayed, whatever the file says.
REPLAYED = {
    "start",
    "log_params",
    "log_metrics",
    "log_points",
    "log_state_dict",
    "log_state_dict_file",
    "delete_checkpoints",
    "end_run",
}


def unsent_folder(tracking_uri: str) -> Path:
    """Where records that could not reach ``tracking_uri`` wait: one folder per store, under
    ``SEARCHLAB_UNSENT_DIR`` (default ``~/.cache/searchlab/unsent``)."""
    root = os.environ.get("SEARCHLAB_UNSENT_DIR")
    if not root:
        try:
            cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (an arbitrary container uid)
            cache = tempfile.gettempdir()
        root = str(Path(cache) / "searchlab" / "unsent")
    return Path(root) / hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


def save_records(folder: Path, record: dict[str, Any]) -> None:
    """Write ``folder``'s records whole or not at all (a kill mid-write leaves the previous file, or none)."""
    import torch

    partial = folder / f"{RECORDS_FILE}.partial"
    with partial.open("wb") as file:
        torch.save(record, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, folder / RECORDS_FILE)


def load_records(folder: Path) -> dict[str, Any] | None:
    """A folder's records (plain containers and tensors only), or None, with a warning, if they do not load."""
    import torch

    try:
        return torch.load(folder / RECORDS_FILE, weights_only=True)
    except Exception as error:
        print(
            f"warning: cannot read the unsent MLflow records in {folder} ({first_line(error)}); left there",
            file=sys.stderr,
        )
        return None


def unsent_runs(tracking_uri: str) -> int:
    """How many runs have records waiting for ``tracking_uri`` on this host."""
    total = 0
    for records in unsent_folder(tracking_uri).glob(f"*/{RECORDS_FILE}"):
        record = load_records(records.parent)
        total += 0 if record is None else len({handle for _, handle, _, _ in record["calls"]})
    return total


def resend_unsent(tracking_uri: str, *, wait: float) -> int:
    """Send the records earlier runs on this host saved for ``tracking_uri``; returns how many runs it completed.
    What the store still does not take stays saved. Folders that a dead process left without records (weights it
    had spilled) are removed."""
    sent = 0
    for folder in sorted(unsent_folder(tracking_uri).glob("*")):
        if ".sending-" in folder.name:  # claimed by a resend that was killed: give it back
            original, _, pid = folder.name.partition(".sending-")
            if pid.isdigit() and not process_alive(int(pid)):
                with contextlib.suppress(OSError):
                    folder.rename(folder.with_name(original))
            continue
        if folder.name.endswith(".unreadable"):
            continue
        if not (folder / RECORDS_FILE).is_file():
            _remove_if_abandoned(folder)
            continue
        claimed = folder.with_name(f"{folder.name}.sending-{os.getpid()}")
        try:
            folder.rename(claimed)  # one sender per folder, even with several runs starting at once
        except OSError:
            continue
        record = load_records(claimed)
        if record is None:
            claimed.rename(folder.with_name(f"{folder.name}.unreadable"))
            continue
        left = _replay(MlflowTracker(tracking_uri, retry_seconds=wait), record, claimed)
        if left:
            save_records(claimed, {"ids": record["ids"], "calls": left})
            claimed.rename(folder)
            break  # the store is unreachable again: the rest waits too
        sent += len({handle for _, handle, _, _ in record["calls"]})
        shutil.rmtree(claimed, ignore_errors=True)
    return sent


def _replay(tracker: MlflowTracker, record: dict[str, Any], folder: Path) -> list[Any]:
    """Make the saved calls in their order; returns those left when the store stopped answering (first the curve
    points the tracker had buffered for them)."""
    ids = record["ids"]
    for index, (call, handle, args, kwargs) in enumerate(record["calls"]):
        try:
            if call not in REPLAYED or (call == "log_state_dict_file" and not _is_weights_name(args[0])):
                raise ValueError(f"not a call searchlab saves: {call}")
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
            points: list[Call] = [
                ("log_points", h, (tracker.pending_points(i),), {})
                for h, i in ids.items()
                if i is not None and tracker.pending_points(i)
            ]
            return points + record["calls"][index:]
        except Exception as error:
            print(
                f"warning: MLflow refused a saved {call} of run {ids.get(handle)}: {first_line(error)}", file=sys.stderr
            )
    return []


def _is_weights_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith("weights-") and "/" not in name and ".." not in name


def _remove_if_abandoned(folder: Path) -> None:
    """A folder of this host whose process is gone holds weights nothing will send: remove it."""
    parts = folder.name.rsplit("-", 2)
    if len(parts) == 3 and parts[0] == socket.gethostname() and parts[1].isdigit() and not process_alive(int(parts[1])):
        shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs under ``pid`` (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
