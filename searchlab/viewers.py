"""Where studies are compared: the MLflow UI on a tracking store, optuna-dashboard on an Optuna storage.

Both bind to 127.0.0.1 unless told otherwise, answer only the host names they are reached by (a page elsewhere
cannot read or change a study through DNS rebinding or a forged form) and run in the foreground until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer, make_server

from searchlab.endpoints import local_store_path
from searchlab.errors import ConfigError
from searchlab.mlflow_app import BACKEND_STORE_ENV
from searchlab.mlflow_ui import charts_page, experiment_page
from searchlab.storage import describe, local_file, open_storage
from searchlab.tracking import MlflowTracker

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
READS = ("GET", "HEAD", "OPTIONS")


def check_port_free(host: str, port: int) -> None:
    """A one-line error, before anything starts, when ``host:port`` cannot be bound.

    The probe binds as the servers do (SO_REUSEADDR): connections a stopped server left in TIME_WAIT do not hold
    the port, a live listener still does."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}): choose another --port") from None


def check_runs_exist(tracking_uri: str) -> None:
    """A local tracking store that is not there yet is an error (a server would create an empty one)."""
    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise ConfigError(
            f"no MLflow runs at {tracking_uri}: run 'searchlab run' here first, or pass the --tracking-uri it used"
        )


def parse_allowed_hosts(value: str | None) -> tuple[str, ...]:
    """The host names of ``--allowed-hosts a,b`` (no scheme, no port), lowercased."""
    names = tuple(name.strip().strip("[]").lower() for name in (value or "").split(",") if name.strip())
    for name in names:
        if "/" in name or name.count(":") == 1:
            raise ConfigError(f"--allowed-hosts takes host names without a scheme or port, not {name!r}")
    return names


def served_names(host: str, allowed_hosts: Iterable[str]) -> tuple[str, ...]:
    """The names a server answers to: loopback, the interface it binds, and the --allowed-hosts."""
    return tuple(dict.fromkeys([*LOOPBACK_NAMES, host.strip("[]").lower(), *allowed_hosts]))


def mlflow_allowed_hosts(names: Iterable[str]) -> str:
    """`mlflow server --allowed-hosts` for these names: MLflow matches the whole Host header, port included, so
    each name goes with and without a port (IPv6 in brackets, escaped for its fnmatch)."""
    patterns = []
    for name in names:
        bare = f"[{name}]" if ":" in name else name
        patterns += [bare, bare.replace("[", "[[]", 1) + ":*"]
    return ",".join(patterns)


def mlflow_server_command(
    host: str,
    port: int,
    *,
    artifacts_destination: str | None = None,
    workers: int = 1,
    allowed_hosts: str | None = None,
) -> list[str]:
    """The `mlflow server` command line (its backend store goes in the environment: see run_until_interrupted).

    One worker by default: with several, uvicorn binds a shared socket on which asyncio never sets TCP_NODELAY,
    so every reply on a kept-alive connection waits for the client's delayed ACK (the benchmarks' notes have the
    figures)."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", artifacts_destination]
    if allowed_hosts is not None:
        command += ["--allowed-hosts", allowed_hosts]
    return [*command, "--workers", str(workers)]


def mlflow_ui_command(host: str, port: int) -> list[str]:
    """The MLflow UI's server for `searchlab ui`: MLflow's app in one process (searchlab.mlflow_app), where `mlflow
    server` starts two; its backend store goes in the environment, as for `mlflow server`."""
    return [sys.executable, "-m", "searchlab.mlflow_app", host, str(port)]


def run_until_interrupted(
    command: list[str], backend_store_uri: str, announce: Callable[[], None] = lambda: None
) -> int:
    """Run an MLflow server ``command`` in the foreground; on Ctrl-C (or SIGTERM) stop it gracefully and return 0.
    ``announce`` runs once the server is starting (what it looks up, e.g. the experiment's page, overlaps with the
    server's own start-up, which imports MLflow).

    The backend store URI travels in the environment, not on the command line that any local user can read (it
    may hold a password). MLflow's job runner (GenAI judges and trace rollups: several extra processes) stays off
    unless asked for."""
    environment = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **os.environ,
        BACKEND_STORE_ENV: backend_store_uri,
    }
    process = subprocess.Popen(command, env=environment)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        announce()
        return process.wait()
    except KeyboardInterrupt:
        _stop(process)
        return 0
    except BaseException:
        _stop(process)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (servers stop gracefully on it, even where SIGINT was ignored), then a kill after 20 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def experiment_url(base: str, tracking_uri: str, study_name: str | None) -> str:
    """The MLflow UI page of the study's experiment, and its charts (the experiment list when there is no such
    experiment)."""
    if study_name is None:
        return base
    experiment = MlflowTracker(tracking_uri).client.get_experiment_by_name(study_name)
    if experiment is None:
        return base
    return f"{experiment_page(base, experiment.experiment_id)} (charts: {charts_page(base, experiment.experiment_id)})"


def host_guard(app: Callable, names: Iterable[str], *, read_only: bool) -> Callable:
    """WSGI middleware in front of the dashboard: 403 for a Host it is not reached by (DNS rebinding), a write
    whose Origin is not the dashboard itself (a forged form or fetch from another site, or from another port of this
    host; ``null`` too), and, read-only, any write. Stricter than `mlflow server`, which lets any loopback port
    write."""
    patterns = tuple(names)

    def allowed(name: str | None) -> bool:
        return name is not None and any(
            fnmatch(name, pattern) if "*" in pattern else name == pattern for pattern in patterns
        )

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        write = environ["REQUEST_METHOD"] not in READS
        host, origin = environ.get("HTTP_HOST", ""), environ.get("HTTP_ORIGIN")
        if not allowed(host_name(host)):
            refusal = "Invalid Host header: add the name to --allowed-hosts"
        elif write and read_only:
            refusal = "This dashboard is read-only"
        elif write and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            refusal = "Cross-origin request blocked"
        else:
            return app(environ, start_response)
        body = refusal.encode()
        start_response(
            "403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return guarded


def host_name(value: str) -> str | None:
    """The host name in a Host header; None when malformed (a user part, a broken IPv6 address)."""
    try:
        split = urlsplit(value if "://" in value else "//" + value)
        return None if "@" in split.netloc else split.hostname
    except ValueError:
        return None


def serve_dashboard(
    storage_url: str | None,
    host: str,
    port: int,
    study_name: str | None,
    *,
    allowed_hosts: Iterable[str] = (),
    read_only: bool = False,
    last: int | None = None,
) -> tuple[str, str, Any]:
    """Open the storage and return (the dashboard URL, what it leaves out, a function that serves it until Ctrl-C).

    optuna-dashboard's own app (`optuna_dashboard.wsgi`) behind host_guard, on wsgiref's threaded server as the
    optuna-dashboard command serves it (its run_server has no way in for the guard); each study cut to its ``last``
    latest trials and its best (searchlab.latest), every trial when ``last`` is None."""
    import optuna_dashboard

    from searchlab.latest import SHOWN_BEST, LatestTrials, latest_trials  # optuna

    path = local_file(storage_url)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"no study storage at {describe(storage_url)}: run 'searchlab run' here first, "
            "or pass the --storage it used"
        )
    check_port_free(host, port)
    storage = open_storage(storage_url, writes=False)  # showing a study needs no write access
    shown = storage if last is None else latest_trials(storage, last)
    url, left_out = f"http://{host}:{port}/dashboard/", ""
    if study_name is not None:
        try:
            study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            raise ConfigError(
                f"no study named {study_name!r} in {describe(storage_url)}: check --study-name or --storage"
            ) from None
        url += f"studies/{study_id}"
        if isinstance(shown, LatestTrials) and shown.hidden(study_id):
            left_out = (
                f"it shows the {last:,} latest trials and the {SHOWN_BEST} best; "
                f"{shown.hidden(study_id):,} earlier trials are left out (--all shows every trial)"
            )

    app = host_guard(optuna_dashboard.wsgi(shown), served_names(host, allowed_hosts), read_only=read_only)

    def serve() -> None:
        with make_wsgi_server(host, port, app) as server, contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()  # Ctrl-C is how it stops

    return url, left_out, serve


def make_wsgi_server(host: str, port: int, app: Callable) -> Any:
    """wsgiref's server, one thread per request (the dashboard polls while pages load), IPv6 where asked."""

    class Server(ThreadingMixIn, WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True  # Ctrl-C does not wait for open connections

    return make_server(host.strip("[]"), port, app, server_class=Server)
