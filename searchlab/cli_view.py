"""The ``searchlab`` commands that serve and read results: server, ui, dashboard, report, trials, best."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from searchlab.cli_options import ALLOWED_HOSTS_HELP, HOST_HELP, TRACKING_HELP, store_options
from searchlab.endpoints import check_tracking_uri
from searchlab.errors import EXIT_FAILED, ConfigError
from searchlab.registry import load_best
from searchlab.results import best_trial, format_best, format_trials, open_results, study_name_for
from searchlab.settings import storage_for, tracking_uri_for
from searchlab.storage import mask_password
from searchlab.viewers import (
    check_port_free,
    check_runs_exist,
    experiment_url,
    mlflow_allowed_hosts,
    mlflow_server_command,
    mlflow_ui_command,
    parse_allowed_hosts,
    run_until_interrupted,
    serve_dashboard,
    served_names,
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option(
    "--backend-store-uri",
    envvar="SEARCHLAB_BACKEND_STORE_URI",
    default="sqlite:///mlflow.db",
    show_default=True,
    help="Where runs are kept: a sqlite file or postgresql://USER@HOST/DB. A URI with a "
    "password goes in env SEARCHLAB_BACKEND_STORE_URI or --backend-store-uri-file, out of `ps`.",
)
@click.option(
    "--backend-store-uri-file",
    type=click.Path(exists=True, dir_okay=False),
    help="A file holding the backend store URI (e.g. a Docker or Kubernetes secret).",
)
@click.option(
    "--artifacts-destination",
    default="./mlartifacts",
    show_default=True,
    help="Where the server keeps artifacts (weights) it receives.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Server processes. With more than one, uvicorn's shared socket delays every reply on a kept-alive "
    "connection (no TCP_NODELAY).",
)
@click.option("--allowed-hosts", help=ALLOWED_HOSTS_HELP + " Without it, MLflow's default: loopback and private IPs.")
def server(
    host: str,
    port: int,
    backend_store_uri: str,
    backend_store_uri_file: str | None,
    artifacts_destination: str,
    workers: int,
    allowed_hosts: str | None,
) -> None:
    """Start an MLflow tracking server that workers on several hosts log to (--tracking-uri http://HOST:PORT).

    Runs `mlflow server` with these settings until Ctrl-C.
    """
    backend_store_uri = backend_store_uri_for(backend_store_uri, backend_store_uri_file)
    names = served_names(host, parse_allowed_hosts(allowed_hosts))
    hosts = None if allowed_hosts is None else mlflow_allowed_hosts(names)  # None: MLflow's defaults
    check_port_free(host, port)
    click.echo(
        f"MLflow tracking server on http://{host}:{port} (runs in {mask_password(backend_store_uri)}, "
        f"artifacts in {artifacts_destination}); Ctrl-C stops it",
        err=True,
    )
    sys.exit(
        run_until_interrupted(
            mlflow_server_command(
                host, port, artifacts_destination=artifacts_destination, workers=workers, allowed_hosts=hosts
            ),
            backend_store_uri,
        )
    )


def backend_store_uri_for(flag: str, file: str | None) -> str:
    """The backend store URI from the flag, SEARCHLAB_BACKEND_STORE_URI or a file; a password on the command line
    is refused, since every local user reads it in `ps`."""
    on_command_line = (
        click.get_current_context().get_parameter_source("backend_store_uri") is ParameterSource.COMMANDLINE
    )
    if file is not None:
        if on_command_line:
            raise ConfigError("pass --backend-store-uri or --backend-store-uri-file, not both")
        with open(file) as text:
            uri = text.read().strip()
        if not uri:
            raise ConfigError(f"{file} is empty: it should hold the backend store URI")
        return uri
    if on_command_line and mask_password(flag) != flag:
        raise ConfigError(
            "--backend-store-uri holds a password, which `ps` shows to every local user: put the URI "
            "in env SEARCHLAB_BACKEND_STORE_URI or in a file for --backend-store-uri-file"
        )
    return flag


@click.command()
@click.argument("file", required=False)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--study-name", help="The experiment to open [default: FILE's study, env SEARCHLAB_STUDY_NAME].")
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=5000, show_default=True)
def ui(file: str | None, tracking_uri: str | None, study_name: str | None, host: str, port: int) -> None:
    """Open the MLflow UI on the study's tracking store (select trial runs and press Compare) until Ctrl-C.

    On a tracking server (http://…) the server already serves the UI: its address is printed."""

    uri = tracking_uri_for(tracking_uri)
    check_tracking_uri(uri, writes=False)
    name = study_name_for(file, study_name)
    if uri.startswith(("http://", "https://")):
        click.echo(
            f"MLflow UI: {experiment_url(mask_password(uri).rstrip('/'), uri, name)} (served by the tracking server)"
        )
        return
    check_runs_exist(uri)
    check_port_free(host, port)

    def announce() -> None:
        page = experiment_url(f"http://{host}:{port}", uri, name)
        click.echo(f"MLflow UI: {page} (runs in {mask_password(uri)}); Ctrl-C stops it", err=True)

    sys.exit(run_until_interrupted(mlflow_ui_command(host, port), uri, announce))


@click.command()
@click.argument("file", required=False)
@store_options
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--allowed-hosts", help=ALLOWED_HOSTS_HELP)
@click.option(
    "--read-only/--read-write",
    default=False,
    show_default=True,
    help="Refuse every change (create, rename, delete, notes): for a dashboard others can reach.",
)
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Show a study's latest N trials (and every later one), with its 25 best.",
)
@click.option("--all", "every", is_flag=True, help="Show every trial (optuna-dashboard slows past 10,000).")
def dashboard(
    file: str | None,
    storage: str | None,
    study_name: str | None,
    host: str,
    port: int,
    allowed_hosts: str | None,
    read_only: bool,
    last: int,
    every: bool,
) -> None:
    """Open optuna-dashboard on the study's storage (history, importances, parallel coordinates) until Ctrl-C.

    It answers only requests for loopback, --host and --allowed-hosts, and refuses changes sent from other sites."""

    url, left_out, serve = serve_dashboard(
        storage_for(storage),
        host,
        port,
        study_name_for(file, study_name),
        allowed_hosts=parse_allowed_hosts(allowed_hosts),
        read_only=read_only,
        last=None if every else last,
    )
    click.echo(f"Optuna dashboard: {url}{' (read-only)' if read_only else ''}; Ctrl-C stops it", err=True)
    if left_out:
        click.echo(f"Optuna dashboard: {left_out}", err=True)
    serve()


@click.command()
@click.argument("file", required=False)
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--out", type=click.Path(file_okay=False), help="Write the report to this folder instead of MLflow.")
def report(
    file: str | None, storage: str | None, study_name: str | None, tracking_uri: str | None, out: str | None
) -> None:
    """Write the study report (Optuna's plots and a summary table) to the study's latest parent run in MLflow,
    or to --out. `searchlab run` writes it at the end of every run."""
    from searchlab.report import import_importance_without_fanova, publish_report  # optuna

    import_importance_without_fanova()
    click.echo(publish_report(open_results(file, storage, study_name), tracking_uri, out))


@click.command()
@click.option("--storage", help="The journal file to compact [default: searchlab.journal here; env SEARCHLAB_STORAGE].")
def compact(storage: str | None) -> None:
    """Rewrite a journal file as one record per study and per trial (the per-epoch values of older trials go: MLflow
    keeps every curve), so that every process opens it fast. `searchlab nightly` does it after each night. Refused
    while another process has the journal open; plain Optuna and optuna-dashboard read the result."""
    from searchlab.compaction import JournalInUse  # optuna
    from searchlab.compaction import compact as compact_file

    try:
        click.echo(compact_file(storage_for(storage)))
    except JournalInUse as busy:
        click.echo(f"Error: {busy}: close it and try again", err=True)
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("file", required=False)
@store_options
@click.option("--last", type=click.IntRange(min=1), default=50, show_default=True, help="List the latest N trials.")
@click.option("--all", "every", is_flag=True, help="List every trial (a study continued nightly holds thousands).")
def trials(file: str | None, storage: str | None, study_name: str | None, last: int, every: bool) -> None:
    """List a study's latest trials: number, state, value, params and MLflow run id."""
    from searchlab.window import count_trials, trials_since

    study = open_results(file, storage, study_name)
    total = count_trials(study)
    shown = trials_since(study, 0 if every else max(0, total - last))
    click.echo(format_trials(shown))
    if len(shown) < total:
        click.echo(f"({total - len(shown)} earlier trials not listed: --last N or --all)")


@click.command()
@click.argument("file", required=False)
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False),
    help="Write the best trial's weights (a state_dict) to this file.",
)
@click.option(
    "--load",
    "load",
    is_flag=True,
    help="Load the registered best model (models:/STUDY@best) into the study's model, check its "
    "validation loss, and show the Python that does it.",
)
def best(
    file: str | None,
    storage: str | None,
    study_name: str | None,
    tracking_uri: str | None,
    export_path: str | None,
    load: bool,
) -> None:
    """Show the best trial's params, value and run id; --export writes its state_dict, --load rebuilds the
    registered model."""
    study = open_results(file, storage, study_name)
    trial = best_trial(study)
    loaded = load_best(study.study_name, tracking_uri_for(tracking_uri), file) if load else None
    if export_path:
        from searchlab.weights import export_weights  # torch

        export_weights(trial, study.study_name, tracking_uri_for(tracking_uri), export_path)
    click.echo(format_best(trial))
    if export_path:
        click.echo(f"weights    {export_path} (load with torch.load(path, weights_only=True))")
    if loaded:
        click.echo(loaded)
