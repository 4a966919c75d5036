"""The ``searchlab`` command: parse, call the API, print. Heavy modules load only inside the commands."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from searchlab.errors import ConfigError, RunFailed


class BadInput(click.ClickException):
    """One line on stderr and exit code 2, for any bad input (flags, files, URLs)."""

    exit_code = 2


class OneLineErrors(click.Group):
    """A group whose usage errors print as one line, like every other bad input."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            raise BadInput(error.format_message() + hint) from None
        except ConfigError as error:
            raise BadInput(str(error)) from None
        except KeyboardInterrupt:  # Ctrl-C before a command's own handling starts (loading, the check)
            click.echo("interrupted", err=True)
            sys.exit(130)


def entry_point() -> None:
    """The ``searchlab`` console script: ``main``, then a quick exit. At exit Python would walk every object
    that torch, mlflow and SQLAlchemy made to collect cycles the process drops anyway (~2 s of every run here);
    frozen, they are skipped. atexit handlers, flushes and closes still run."""
    try:
        main()
    finally:
        gc.freeze()


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="searchlab")
def main() -> None:
    """searchlab: hyperparameter search for PyTorch, tracked in MLflow.

    Write a study file (data, model, task, search space), then `searchlab run FILE`.
    """


def store_options(command: Any) -> Any:
    """--storage and --study-name, shared by every command that reads a study."""
    command = click.option("--study-name", help="Optuna study and MLflow experiment name [default: the study's name].")(
        command)
    return click.option("--storage", help="Optuna storage: sqlite:///FILE, postgresql://USER@HOST/DB or a journal "
                        "file path [default: searchlab.journal here; env SEARCHLAB_STORAGE].")(command)


def device_options(command: Any) -> Any:
    """--devices, --threads and --retries, shared by the commands that run trials."""
    command = click.option("--retries", type=int, help="Times a trial whose worker died is run again [default: 1].")(
        command)
    command = click.option("--threads", type=int, help="Torch threads per worker [default: 1 per CPU worker (use "
                           "--workers auto for every core); a share of the cores per GPU worker].")(command)
    return click.option("--devices", help="auto (every GPU, else the CPU), cpu, cuda, or cuda:0,2 [default: auto].")(
        command)


TRACKING_HELP = "MLflow tracking URI [default: env SEARCHLAB_TRACKING_URI, MLFLOW_TRACKING_URI, sqlite:///mlflow.db]."


def search_options(command: Any) -> Any:
    """The options of a search, shared by `run` and `nightly`."""
    for option in reversed([
        click.option("--trials", "n_trials", type=int, help="Trials to run in this invocation [default: the study's]."),
        click.option("--timeout", type=float, help="Start no new trial after this many seconds."),
        click.option("--sampler", type=click.Choice(["tpe", "random"]), help="Optuna sampler [default: tpe]."),
        click.option("--pruner", type=click.Choice(["none", "median", "hyperband", "sha"]),
                     help="Stop unpromising trials early, on the per-epoch validation loss [default: none]."),
        click.option("--seed", type=int, help="Study seed: sampler, data split and every trial's seed [default: 0]."),
        store_options,
        click.option("--tracking-uri", help=TRACKING_HELP),
        click.option("--max-epochs", type=int, help="Most epochs per trial (early stopping may end sooner)."),
        click.option("--workers", help="Worker processes, or 'auto' for one per device slot [default: 1]."),
        click.option("--trials-per-device", type=int, help="Workers that may share one GPU [default: 1]."),
        device_options,
        click.option("--no-check", is_flag=True, help="Skip the overfit-one-batch check before the first trial."),
        click.option("--report/--no-report", default=None,
                     help="Write the study report (plots, summary) to the parent run at the end; it takes a few "
                     "seconds [default: on; env SEARCHLAB_REPORT]."),
        click.option("--register/--no-register", default=None,
                     help="Register the best trial's model as NAME@best in the MLflow Model Registry at the end "
                     "[default: on; env SEARCHLAB_REGISTER]."),
    ]):
        command = option(command)
    return command


def load_for_search(file: str, workers: str | None) -> Any:
    """The study FILE declares, for a search with this --workers setting, and the modules a search needs: a bad path
    fails at once, before anything loads, and the fork server of several workers starts loading before the study
    file's own imports. Meanwhile a Ctrl-C ends the command at once (see ``exit_at_once_on_ctrl_c``)."""
    from searchlab.forkserver import start_early
    from searchlab.study import check_study_path, load_study_file

    check_study_path(file)
    with exit_at_once_on_ctrl_c():
        start_early(workers)
        study = load_study_file(file)
        import searchlab.check
        import searchlab.execute  # noqa: F401
    return study


@contextlib.contextmanager
def exit_at_once_on_ctrl_c() -> Iterator[None]:
    """While the command loads (nothing is written yet), a Ctrl-C prints one line and ends it, with the fork server:
    raised in the middle of an import, the interrupt can leave a module half-loaded (torch swallows one that comes
    while it imports numpy, and the command then died later with a RecursionError deep in numpy)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame: Any) -> None:
        from searchlab.forkserver import stop as stop_fork_server

        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        stop_fork_server()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@main.command()
@click.argument("file")
@search_options
def run(file: str, no_check: bool, **flags: Any) -> None:
    """Search the study declared in FILE and track every trial in MLflow.

    Settings come from the study file, then SEARCHLAB_* variables, then these flags.
    Running again with the same study name continues the study.
    """
    study = load_for_search(file, flags["workers"])
    from searchlab.check import CheckFailed
    from searchlab.config import resolve_config
    from searchlab.execute import StudyInterrupted, run_study

    try:
        summary = run_study(study, resolve_config(study, flags), study_file=file, check=not no_check)
    except (CheckFailed, RunFailed) as failed:
        click.echo(f"Error: {failed}", err=True)
        sys.exit(1)
    except StudyInterrupted as interrupted:
        click.echo("interrupted: every open trial was failed and its MLflow run closed", err=True)
        click.echo("\n".join(interrupted.summary.lines()))
        sys.exit(130)
    click.echo("\n".join(summary.lines()))


@main.command()
@click.argument("file")
@search_options
@click.option("--reevaluate", type=int, default=0, show_default=True,
              help="Run the K best earlier configurations first, on tonight's data (they count in --trials).")
@click.option("--threshold", type=float, default=0.01, show_default=True,
              help="Promote tonight's best to the champion only when its val_loss is lower by this fraction.")
def nightly(file: str, no_check: bool, reevaluate: int, threshold: float, **flags: Any) -> None:
    """Run one night's sweep of FILE's study: continue it, compare tonight's best with the registered champion
    (alias 'champion') on tonight's data, promote it if it is better by --threshold, and summarise the night.

    Exit 0: improved or held; 1: the sweep failed, or another night of this study is running; 3: the champion
    got worse on the new data and nothing replaced it. One night per study at a time (a lock beside the storage,
    or a PostgreSQL advisory lock).
    """
    study = load_for_search(file, flags["workers"])
    from searchlab.config import resolve_config
    from searchlab.execute import StudyInterrupted
    from searchlab.nightly import run_night

    try:
        night, summary = run_night(study, resolve_config(study, flags), study_file=file, reevaluate=reevaluate,
                          threshold=threshold, check=not no_check)
    except RunFailed as failed:
        click.echo(f"Error: {failed}", err=True)
        sys.exit(1)
    except StudyInterrupted:
        click.echo("interrupted: every open trial was failed and its MLflow run closed", err=True)
        sys.exit(130)
    click.echo("\n".join([*(summary.lines() if summary else []), *night.lines()]))
    sys.exit(night.exit_code)


@main.command()
@click.argument("file")
@click.option("--cron", required=True, help="When nights start, e.g. '0 2 * * *' (minute hour day month weekday).")
@click.option("--format", "output_format", type=click.Choice(["cron", "systemd", "k8s"]), default="cron",
              show_default=True, help="A crontab line, a systemd service and timer, or a Kubernetes CronJob.")
@click.option("--install", is_flag=True, help="Add the line to your crontab, or write the systemd units.")
@click.option("--systemd-dir", type=click.Path(file_okay=False), default="~/.config/systemd/user", show_default=True,
              help="Where --install writes systemd units.")
@click.option("--image", default="searchlab:latest", show_default=True, help="The container image of a CronJob.")
@click.option("--serve", is_flag=True, help="Stay in the foreground and run each night when due (for containers).")
@click.option("--max-nights", type=int, help="With --serve: stop after this many nights.")
@click.option("--trials", type=int, help="Passed to each night's `searchlab nightly`.")
@click.option("--timeout", type=float, help="Passed to each night's `searchlab nightly`.")
@click.option("--reevaluate", type=int, help="Passed to each night's `searchlab nightly`.")
@click.option("--threshold", type=float, help="Passed to each night's `searchlab nightly`.")
@click.option("--workers", help="Passed to each night's `searchlab nightly`.")
def schedule(file: str, cron: str, output_format: str, install: bool, systemd_dir: str, image: str, serve: bool,
             max_nights: int | None, **passed: Any) -> None:
    """Run `searchlab nightly FILE` on a cron schedule: print (or --install) a crontab line, systemd units or a
    Kubernetes CronJob, or --serve: an in-process scheduler loop that logs each night's start and outcome.

    Storage and tracking come from each night's environment (SEARCHLAB_STORAGE, SEARCHLAB_TRACKING_URI)."""
    from pathlib import Path

    from searchlab import schedule as scheduling
    from searchlab.study import load_study_file

    scheduling.check_cron(cron, seconds=serve)
    if install and output_format == "k8s":
        raise ConfigError("--install does not apply a CronJob: pipe the manifest to kubectl apply -f -")
    name = load_study_file(file).name
    args = [text for key, value in passed.items() if value is not None
            for text in (f"--{key}", str(value))]
    if serve:
        from searchlab.worker import interrupt_once

        command = scheduling.nightly_command(file, args)
        with interrupt_once():  # SIGTERM (docker stop) too: the running night stops cleanly before the loop does
            try:
                nights = scheduling.serve(cron, lambda: scheduling.run_in_subprocess(command),
                                          log=lambda line: click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True),
                                          max_nights=max_nights)
            except KeyboardInterrupt:
                click.echo("interrupted: the running night (if any) was stopped and closed its runs", err=True)
                sys.exit(130)
        click.echo(f"{nights} night(s) ran", err=True)
        return
    if output_format == "k8s":
        # in the image, the study file is where it is here, relative to its working directory (docker/Dockerfile)
        click.echo(scheduling.cronjob_manifest(cron, ["searchlab", "nightly", file, *args], name, image), nl=False)
        return
    command = scheduling.nightly_command(file, args)
    if output_format == "cron":
        line = scheduling.crontab_line(cron, command, Path.cwd(), name)
        if install:
            scheduling.install_crontab(line, scheduling.unit_name(name))
            click.echo(f"added to your crontab: {line}")
        else:
            click.echo(line)
        return
    units = scheduling.systemd_units(cron, command, Path.cwd(), name)
    if install:
        paths = scheduling.install_systemd(units, Path(systemd_dir).expanduser())
        click.echo("wrote " + ", ".join(map(str, paths)) + "\nthen: systemctl --user daemon-reload && "
                   f"systemctl --user enable --now {scheduling.unit_name(name)}.timer")
    else:
        click.echo("\n".join(f"# {unit}\n{text}" for unit, text in units.items()))


@main.command()
@click.argument("file")
@click.option("--seed", type=int, help="Study seed for the data split and the model's initialisation [default: 0].")
@click.option("--storage", help="Where a start_from='study:NAME' study is [default: searchlab.journal here].")
@click.option("--tracking-uri", help=TRACKING_HELP)
def check(file: str, seed: int | None, storage: str | None, tracking_uri: str | None) -> None:
    """Try to overfit one tiny batch with the study's model: exit 0 when the loss falls near zero, 1 with the
    likely cause when it does not (wrong head or output shape, no gradient, a loss that never moves, NaN)."""
    from searchlab.check import check_study
    from searchlab.config import resolve_config
    from searchlab.execute import load_split, load_start_for
    from searchlab.study import load_study_file

    study = load_study_file(file)
    config = resolve_config(study, {"seed": seed, "storage": storage, "tracking_uri": tracking_uri})
    train_data, _ = load_split(study, config.seed)
    result = check_study(study, train_data, seed=config.seed, start=load_start_for(study, config))
    click.echo(result.summary)
    sys.exit(0 if result.passed else 1)


@main.command()
@click.argument("file")
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@device_options
def worker(file: str, **flags: Any) -> None:
    """Join a study that `searchlab run` started (from any host that reaches its storage) and take its
    trials until its budget is met. Use the same --storage and --tracking-uri as the run."""
    from searchlab.config import resolve_config
    from searchlab.execute import join_study, unsent_note
    from searchlab.study import load_study_file

    study = load_study_file(file)
    try:
        finished = join_study(study, resolve_config(study, flags))
    except RunFailed as failed:
        click.echo(f"Error: {failed}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: the open trial was failed and its MLflow run closed", err=True)
        sys.exit(130)
    click.echo(f"worker done: {finished} trial(s) finished here")
    for line in unsent_note(resolve_config(study, flags).tracking_uri):
        click.echo(line)


HOST_HELP = "Interface to bind; 0.0.0.0 opens it to other hosts."


ALLOWED_HOSTS_HELP = ("Other host names (comma-separated, no port) clients reach it by, e.g. $(hostname); "
                      "loopback and --host are always allowed.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--backend-store-uri", envvar="SEARCHLAB_BACKEND_STORE_URI", default="sqlite:///mlflow.db",
              show_default=True, help="Where runs are kept: a sqlite file or postgresql://USER@HOST/DB. A URI with a "
              "password goes in env SEARCHLAB_BACKEND_STORE_URI or --backend-store-uri-file, out of `ps`.")
@click.option("--backend-store-uri-file", type=click.Path(exists=True, dir_okay=False),
              help="A file holding the backend store URI (e.g. a Docker or Kubernetes secret).")
@click.option("--artifacts-destination", default="./mlartifacts", show_default=True,
              help="Where the server keeps artifacts (weights) it receives.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Server processes. With more than one, uvicorn's shared socket delays every reply ~40 ms.")
@click.option("--allowed-hosts", help=ALLOWED_HOSTS_HELP + " Without it, MLflow's default: loopback and private IPs.")
def server(host: str, port: int, backend_store_uri: str, backend_store_uri_file: str | None,
           artifacts_destination: str, workers: int, allowed_hosts: str | None) -> None:
    """Start an MLflow tracking server that workers on several hosts log to (--tracking-uri http://HOST:PORT).

    Runs `mlflow server` with these settings until Ctrl-C.
    """
    from searchlab.storage import mask_password
    from searchlab.viewers import (
        check_port_free,
        mlflow_allowed_hosts,
        mlflow_server_command,
        parse_allowed_hosts,
        run_until_interrupted,
        served_names,
    )

    backend_store_uri = backend_store_uri_for(backend_store_uri, backend_store_uri_file)
    names = served_names(host, parse_allowed_hosts(allowed_hosts))
    hosts = None if allowed_hosts is None else mlflow_allowed_hosts(names)  # None: MLflow's defaults
    check_port_free(host, port)
    click.echo(f"MLflow tracking server on http://{host}:{port} (runs in {mask_password(backend_store_uri)}, "
               f"artifacts in {artifacts_destination}); Ctrl-C stops it", err=True)
    sys.exit(run_until_interrupted(mlflow_server_command(host, port, artifacts_destination=artifacts_destination,
                                                         workers=workers, allowed_hosts=hosts), backend_store_uri))


def backend_store_uri_for(flag: str, file: str | None) -> str:
    """The backend store URI from the flag, SEARCHLAB_BACKEND_STORE_URI or a file; a password on the command line
    is refused, since every local user reads it in `ps`."""
    from click.core import ParameterSource

    from searchlab.storage import mask_password

    on_command_line = click.get_current_context().get_parameter_source("backend_store_uri") is \
        ParameterSource.COMMANDLINE
    if file is not None:
        if on_command_line:
            raise ConfigError("pass --backend-store-uri or --backend-store-uri-file, not both")
        with open(file) as text:
            uri = text.read().strip()
        if not uri:
            raise ConfigError(f"{file} is empty: it should hold the backend store URI")
        return uri
    if on_command_line and mask_password(flag) != flag:
        raise ConfigError("--backend-store-uri holds a password, which `ps` shows to every local user: put the URI "
                          "in env SEARCHLAB_BACKEND_STORE_URI or in a file for --backend-store-uri-file")
    return flag


@main.command()
@click.argument("file", required=False)
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--study-name", help="The experiment to open [default: FILE's study, env SEARCHLAB_STUDY_NAME].")
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=5000, show_default=True)
def ui(file: str | None, tracking_uri: str | None, study_name: str | None, host: str, port: int) -> None:
    """Open the MLflow UI on the study's tracking store (select trial runs and press Compare) until Ctrl-C.

    On a tracking server (http://…) the server already serves the UI: its address is printed."""
    from searchlab.results import study_name_for, tracking_uri_for
    from searchlab.storage import mask_password
    from searchlab.tracking import check_tracking_uri
    from searchlab.viewers import (
        check_port_free,
        check_runs_exist,
        experiment_url,
        mlflow_server_command,
        run_until_interrupted,
    )

    uri = tracking_uri_for(tracking_uri)
    check_tracking_uri(uri, writes=False)
    name = study_name_for(file, study_name)
    if uri.startswith(("http://", "https://")):
        click.echo(f"MLflow UI: {experiment_url(mask_password(uri).rstrip('/'), uri, name)} (served by the tracking "
                   "server)")
        return
    check_runs_exist(uri)
    check_port_free(host, port)
    click.echo(f"MLflow UI: {experiment_url(f'http://{host}:{port}', uri, name)} (runs in {mask_password(uri)}); "
               "Ctrl-C stops it", err=True)
    sys.exit(run_until_interrupted(mlflow_server_command(host, port, workers=1), uri))


@main.command()
@click.argument("file", required=False)
@store_options
@click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--allowed-hosts", help=ALLOWED_HOSTS_HELP)
@click.option("--read-only/--read-write", default=False, show_default=True,
              help="Refuse every change (create, rename, delete, notes): for a dashboard others can reach.")
def dashboard(file: str | None, storage: str | None, study_name: str | None, host: str, port: int,
              allowed_hosts: str | None, read_only: bool) -> None:
    """Open optuna-dashboard on the study's storage (history, importances, parallel coordinates) until Ctrl-C.

    It answers only requests for loopback, --host and --allowed-hosts, and refuses changes sent from other sites."""
    from searchlab.results import storage_for, study_name_for
    from searchlab.viewers import parse_allowed_hosts, serve_dashboard

    url, serve = serve_dashboard(storage_for(storage), host, port, study_name_for(file, study_name),
                                 allowed_hosts=parse_allowed_hosts(allowed_hosts), read_only=read_only)
    click.echo(f"Optuna dashboard: {url}{' (read-only)' if read_only else ''}; Ctrl-C stops it", err=True)
    serve()


@main.command()
@click.argument("file", required=False)
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--out", type=click.Path(file_okay=False), help="Write the report to this folder instead of MLflow.")
def report(file: str | None, storage: str | None, study_name: str | None, tracking_uri: str | None,
           out: str | None) -> None:
    """Write the study report (Optuna's plots and a summary table) to the study's latest parent run in MLflow,
    or to --out. `searchlab run` writes it at the end of every run."""
    from searchlab.results import open_results, publish_report

    click.echo(publish_report(open_results(file, storage, study_name), tracking_uri, out))


@main.command()
@click.argument("trial_number", type=int)
@click.argument("file")
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP + " Needed when the study starts from weights in MLflow.")
def replay(trial_number: int, file: str, storage: str | None, study_name: str | None,
           tracking_uri: str | None) -> None:
    """Retrain trial TRIAL_NUMBER of the study in FILE with its parameters and seed, and print its curve next to
    the recorded one (on the CPU they match exactly). Exit 0 when identical, 1 when not."""
    from searchlab.config import resolve_config
    from searchlab.execute import load_start_for
    from searchlab.replay import replay_trial
    from searchlab.results import open_results
    from searchlab.study import load_study_file

    study = load_study_file(file)
    trials = open_results(file, storage, study_name).trials
    if not 0 <= trial_number < len(trials):
        raise ConfigError(f"no trial {trial_number}: the study has trials 0..{len(trials) - 1}")
    config = resolve_config(study, {"storage": storage, "study_name": study_name, "tracking_uri": tracking_uri})
    result = replay_trial(study, trials[trial_number], load_start_for(study, config))
    click.echo("\n".join(result.lines()))
    sys.exit(0 if result.identical else 1)


@main.command()
@click.argument("file", required=False)
@store_options
def trials(file: str | None, storage: str | None, study_name: str | None) -> None:
    """List a study's trials: number, state, value, params and MLflow run id."""
    from searchlab.results import format_trials, open_results

    click.echo(format_trials(open_results(file, storage, study_name).trials))


@main.command()
@click.argument("file", required=False)
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="Write the best trial's weights (a state_dict) to this file.")
@click.option("--load", "load", is_flag=True,
              help="Load the registered best model (models:/STUDY@best) into the study's model, check its "
                   "validation loss, and show the Python that does it.")
def best(file: str | None, storage: str | None, study_name: str | None, tracking_uri: str | None,
         export_path: str | None, load: bool) -> None:
    """Show the best trial's params, value and run id; --export writes its state_dict, --load rebuilds the
    registered model."""
    from searchlab.results import best_trial, export_weights, format_best, load_best, open_results, tracking_uri_for

    study = open_results(file, storage, study_name)
    trial = best_trial(study)
    loaded = load_best(study.study_name, tracking_uri_for(tracking_uri), file) if load else None
    if export_path:
        export_weights(trial, study.study_name, tracking_uri_for(tracking_uri), export_path)
    click.echo(format_best(trial))
    if export_path:
        click.echo(f"weights    {export_path} (load with torch.load(path, weights_only=True))")
    if loaded:
        click.echo(loaded)
