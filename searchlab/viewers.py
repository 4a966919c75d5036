"""Where studies are compared: the MLflow UI on a tracking store, optuna-dashboard on an Optuna storage.

Both bind to 127.0.0.1 unless told otherwise and run in the foreground until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from searchlab.errors import ConfigError

MLFLOW_PORT, DASHBOARD_PORT = 5000, 8080


def check_port_free(host: str, port: int) -> None:
    """A one-line error, before anything starts, when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}): choose another --port") from None


def check_runs_exist(tracking_uri: str) -> None:
    """A local tracking store that is not there yet is an error (a server would create an empty one)."""
    from searchlab.tracking import local_store_path

    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise ConfigError(f"no MLflow runs at {tracking_uri}: run 'searchlab run' here first, or pass the "
                          "--tracking-uri it used")


def mlflow_server_command(host: str, port: int, *, artifacts_destination: str | None = None,
                          workers: int = 1) -> list[str]:
    """The `mlflow server` command line (its backend store goes in the environment: see run_until_interrupted).

    One worker by default: with several, uvicorn binds a shared socket on which asyncio never sets TCP_NODELAY,
    so every reply on a kept-alive connection waits ~40 ms for the client's delayed ACK (measured: /health 44 ms
    against 2 ms, log_batch 52 ms against 11-22 ms)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", artifacts_destination]
    return [*command, "--workers", str(workers)]


def run_until_interrupted(command: list[str], backend_store_uri: str) -> int:
    """Run `mlflow server` in the foreground; on Ctrl-C (or SIGTERM) stop it gracefully and return 0.

    The backend store URI travels in the environment, not on the command line that any local user can read (it
    may hold a password). MLflow's job runner (GenAI judges and trace rollups: seven extra processes) stays off
    unless asked for."""
    environment = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ,
                   "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    process = subprocess.Popen(command, env=environment)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return process.wait()
    except KeyboardInterrupt:
        if process.poll() is None:
            process.terminate()  # servers stop gracefully on SIGTERM, even where SIGINT was ignored
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def experiment_url(base: str, tracking_uri: str, study_name: str | None) -> str:
    """The MLflow UI page of the study's experiment (the experiment list when there is no such experiment)."""
    if study_name is None:
        return base
    from searchlab.tracking import MlflowTracker

    experiment = MlflowTracker(tracking_uri).client.get_experiment_by_name(study_name)
    return base if experiment is None else experiment_page(base, experiment.experiment_id)


def experiment_page(base: str, experiment_id: str) -> str:
    """An experiment's runs in the MLflow UI (its model-training view, not the GenAI one it opens on)."""
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def serve_dashboard(storage_url: str | None, host: str, port: int, study_name: str | None) -> tuple[str, Any]:
    """Open the storage and return (the dashboard URL, a function that serves it until Ctrl-C)."""
    import optuna_dashboard

    from searchlab.storage import describe, local_file, open_storage

    path = local_file(storage_url)
    if path is not None and not path.is_file():
        raise ConfigError(f"no study storage at {describe(storage_url)}: run 'searchlab run' here first, "
                          "or pass the --storage it used")
    check_port_free(host, port)
    storage = open_storage(storage_url, writes=False)  # showing a study needs no write access
    url = f"http://{host}:{port}/dashboard/"
    if study_name is not None:
        try:
            url += f"studies/{storage.get_study_id_from_name(study_name)}"
        except KeyError:
            raise ConfigError(f"no study named {study_name!r} in {describe(storage_url)}: check --study-name "
                              "or --storage") from None

    def serve() -> None:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
            optuna_dashboard.run_server(storage, host=host, port=port)

    return url, serve
