"""Where worker processes come from: a fork server that imports what every worker needs once, then forks them.

Workers are never forks of the coordinator, which may hold a CUDA context; the fork server never runs torch.
``searchlab run`` starts it before its own imports when the run will have several workers, so that both load at
once (seconds each); ``pool.Workers`` starts it otherwise. It is stopped when this process exits, even in the
middle of its imports (a run that stopped at once, on bad input). Where the platform has no fork server, each
worker is a fresh interpreter (spawn).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from typing import Any

from searchlab.devices import parse_workers
from searchlab.errors import ConfigError

# What every worker imports before its first trial. searchlab.preload comes first: see its docstring.
WORKER_PRELOAD = ["searchlab.preload", "searchlab.pool", "mlflow", "optuna", "torch", "torch._dynamo", "torchmetrics"]


def worker_context() -> Any:
    """The multiprocessing context workers start from: the fork server (started here if it is not running yet), or
    spawn where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    if threading.current_thread() is threading.main_thread():
        # Start it now (milliseconds) with Ctrl-C ignored: it inherits that until searchlab.preload, its first
        # import, makes a Ctrl-C end it quietly.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
        atexit.unregister(stop)
        atexit.register(stop)
    return context


def stop() -> None:
    """End the fork server now (at exit, or on a Ctrl-C while the command loads): on its own it would notice this
    process's end only once its imports are done."""
    pid = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def start_early(workers: str | None) -> None:
    """Start the fork server now if a run with this ``--workers`` setting (None: ``SEARCHLAB_WORKERS``, else 1) will
    start worker processes: a count above 1, or ``auto`` on a machine with several cores. Bad input is left for the
    run to report; the fork server ends with this process."""
    spec = workers if workers is not None else (os.environ.get("SEARCHLAB_WORKERS", "").strip() or "1")
    try:
        count = parse_workers(spec)
    except ConfigError:
        return
    if (count or os.cpu_count() or 1) > 1:
        worker_context()
