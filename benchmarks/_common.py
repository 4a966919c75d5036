"""Shared pieces of the benchmark suite: a real MLflow tracking server, child processes that report JSON, stats.

Every measurement runs in a fresh child process (``python benchmarks/<module>.py ... --out FILE``), so that one
variant's imports, caches and threads never help another's; the child writes its figures as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
# The searchlab command: the console script beside this Python, else `python -m searchlab` (searchlab on
# PYTHONPATH, not installed: e.g. on a lent GPU machine).
_SCRIPT = Path(sys.executable).with_name("searchlab")
SEARCHLAB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "searchlab"]
DEFAULT_STUDY = str(HERE / "studies" / "diabetes.py")  # small trials: see its docstring
# Packages whose import costs seconds or pulls a large tree; the start-up benchmark says which path loads which.
HEAVY = (
    "torch",
    "torch._dynamo",
    "mlflow",
    "torchmetrics",
    "optuna",
    "sklearn",
    "pandas",
    "numpy",
    "scipy",
    "sqlalchemy",
    "alembic",
    "matplotlib",
    "plotly",
    "pyarrow",
    "sympy",
    "requests",
    "flask",
    "fastapi",
    "psycopg",
    "tqdm",
    "click",
    "optuna_dashboard",
)


LOADS: list[float] = []  # the 1-minute load average after each child: how busy the machine was meanwhile
SERVER_GROUPS: dict[str, int] = {}  # tracking_server's URL -> its process group (see group_cpu_s)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SEARCHLAB_* or MLflow tracking settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHLAB_") and k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tracking_server(folder: Path) -> Iterator[str]:
    """``searchlab server`` on a free loopback port (sqlite backend, proxied artifacts), as the README starts it;
    yields its URL once /health answers, and stops the server's whole process group at the end."""
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [
            *SEARCHLAB,
            "server",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the tracking server did not start: {(folder / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        warm_up(url)
        SERVER_GROUPS[url] = process.pid
        yield url
    finally:
        process.terminate()  # searchlab server stops its mlflow server on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # what is left of the server's own group (its workers)
        log.close()


def group_cpu_s(group: int) -> float:
    """CPU seconds used so far by the live processes of a process group (Linux; nan elsewhere)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[2]) == group:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else float("nan")


def warm_up(url: str, connections: int = 32) -> None:
    """Make every server process answer a tracking call once: each one's first call sets up its store (seconds),
    which would otherwise land in whichever timed run reaches that process first."""
    from concurrent.futures import ThreadPoolExecutor

    def call(_: int) -> None:
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", headers={"Connection": "close"}
        )
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(connections)))


def run_child(
    module: str,
    args: Sequence[str],
    *,
    cwd: str | Path | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``benchmarks/<module>.py ARGS --out FILE`` in a fresh process and return the JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="searchlab-bench-") as scratch:
        out = Path(scratch) / "result.json"
        command = [PYTHON, str(HERE / f"{module}.py"), *args, "--out", str(out)]
        done = subprocess.run(
            command, cwd=cwd or scratch, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        result = json.loads(out.read_text())
        LOADS.append(os.getloadavg()[0])
        return result


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))


def stats(values: Sequence[float]) -> dict[str, float]:
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def alternate(variants: Sequence[Any], repeat: int) -> list[Any]:
    """The order of the variants in a repeat: as given on even repeats, reversed on odd ones."""
    return list(variants) if repeat % 2 == 0 else list(variants)[::-1]
