"""How a searchlab process stops: the first SIGINT or SIGTERM raises KeyboardInterrupt, and later ones wait for the
cleanup; a worker process stops when its coordinator dies."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

COORDINATOR_GONE = "stopped: its searchlab run died"

_stop_reason: list[str] = []  # why this process is being stopped, when it is not a Ctrl-C


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt (its message: why, when it is not a Ctrl-C); later ones
    are ignored, so that cleanup (failing the trial, closing its MLflow run) is not itself interrupted. Restores the
    previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def handler(number: int, frame: Any) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt(*_stop_reason[:1])

    for number in signals:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def stop_with_the_coordinator(orders: Any) -> None:
    """Stop this worker (as SIGTERM does: its trial fails, its runs close) when the coordinator's end of ``orders``
    closes: the coordinator died, even by kill -9, and no one would supervise it. Nothing else comes on ``orders``
    after the go."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                orders.recv()
        _stop_reason.append(COORDINATOR_GONE)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="searchlab-coordinator-watch", daemon=True).start()
