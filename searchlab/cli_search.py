"""The ``searchlab`` commands that train: run, nightly, schedule, check, worker, replay, resume."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from searchlab import schedule as scheduling
from searchlab.cli_options import TRACKING_HELP, device_options, search_options, store_options
from searchlab.config import resolve_config
from searchlab.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, INTERRUPTED_LINE, ConfigError
from searchlab.forkserver import start_early
from searchlab.forkserver import stop as stop_fork_server
from searchlab.results import open_results
from searchlab.signals import interrupt_once
from searchlab.study import check_study_path, load_study_file


def load_for_search(file: str, workers: str | None) -> Any:
    """The study FILE declares, for a search with this --workers setting, and the modules a search needs: a bad path
    fails at once, before anything loads, and the fork server of several workers starts loading before the study
    file's own imports. Meanwhile a Ctrl-C ends the command at once (see ``exit_at_once_on_ctrl_c``)."""
    check_study_path(file)
    with exit_at_once_on_ctrl_c():
        start_early(workers)
        study = load_study_file(file)
        import searchlab.lifecycle  # noqa: F401  (torch, optuna, mlflow: what the search imports)
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
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        stop_fork_server()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@click.command()
@click.argument("file")
@search_options
def run(file: str, no_check: bool, **flags: Any) -> None:
    """Search the study declared in FILE and track every trial in MLflow.

    Settings come from the study file, then SEARCHLAB_* variables, then these flags.
    Running again with the same study name continues the study.
    """
    study = load_for_search(file, flags["workers"])
    from searchlab.lifecycle import run_study  # torch, optuna, mlflow
    from searchlab.summary import StudyInterrupted

    try:
        summary = run_study(study, resolve_config(study, flags), study_file=file, check=not no_check)
    except StudyInterrupted as interrupted:
        click.echo(INTERRUPTED_LINE, err=True)
        click.echo("\n".join(interrupted.summary.lines()))
        sys.exit(EXIT_INTERRUPTED)
    click.echo("\n".join(summary.lines()))
    failure = summary.failure()
    if failure:
        click.echo(f"Error: {failure}", err=True)
        sys.exit(EXIT_FAILED)


@click.command()
@click.argument("file")
@search_options
@click.option(
    "--reevaluate",
    type=int,
    default=0,
    show_default=True,
    help="Run the K best earlier configurations first, on tonight's data (they count in --trials).",
)
@click.option(
    "--threshold",
    type=float,
    default=0.01,
    show_default=True,
    help="Promote tonight's best to the champion only when its val_loss is lower by this fraction.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="Set the variables of this KEY=VALUE file first, as systemd's EnvironmentFile does (a crontab line's night).",
)
def nightly(file: str, no_check: bool, reevaluate: int, threshold: float, env_file: str | None, **flags: Any) -> None:
    """Run one night's sweep of FILE's study: continue it, compare tonight's best with the registered champion
    (alias 'champion') on tonight's data, promote it if it is better by --threshold, and summarise the night.

    Exit 0: improved or held; 1: the sweep failed, or another night of this study is running; 3: the champion
    got worse on the new data and nothing replaced it. One night per study at a time (a lock beside the storage,
    or a PostgreSQL advisory lock).
    """
    if env_file is not None:
        os.environ.update(scheduling.read_env_file(Path(env_file)))
    study = load_for_search(file, flags["workers"])
    from searchlab.nightly import compact_after_night, run_night  # torch, optuna, mlflow
    from searchlab.summary import StudyInterrupted

    config = resolve_config(study, flags)
    try:
        night, summary = run_night(
            study,
            config,
            study_file=file,
            reevaluate=reevaluate,
            threshold=threshold,
            check=not no_check,
        )
    except StudyInterrupted:
        click.echo(INTERRUPTED_LINE, err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo("\n".join([*(summary.lines() if summary else []), *night.lines()]))
    kept = compact_after_night(config.storage)  # the journal compacted, or the database's statistics refreshed
    if kept:
        click.echo(kept)
    sys.exit(night.exit_code)


@click.command()
@click.argument("file")
@click.option("--cron", required=True, help="When nights start, e.g. '0 2 * * *' (minute hour day month weekday).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(scheduling.FORMATS),
    default="cron",
    show_default=True,
    help="A crontab line, a systemd service and timer, or a Kubernetes CronJob.",
)
@click.option("--install", is_flag=True, help="Add the line to your crontab, or write the systemd units.")
@click.option(
    "--systemd-dir",
    type=click.Path(file_okay=False),
    default="~/.config/systemd/user",
    show_default=True,
    help="Where --install writes systemd units.",
)
@click.option("--image", default="searchlab:latest", show_default=True, help="The container image of a CronJob.")
@click.option("--serve", is_flag=True, help="Stay in the foreground and run each night when due (for containers).")
@click.option("--max-nights", type=int, help="With --serve: stop after this many nights.")
@click.option("--trials", type=int, help="Passed to each night's `searchlab nightly`.")
@click.option("--timeout", type=float, help="Passed to each night's `searchlab nightly`.")
@click.option("--reevaluate", type=int, help="Passed to each night's `searchlab nightly`.")
@click.option("--threshold", type=float, help="Passed to each night's `searchlab nightly`.")
@click.option("--workers", help="Passed to each night's `searchlab nightly`.")
def schedule(
    file: str,
    cron: str,
    output_format: str,
    install: bool,
    systemd_dir: str,
    image: str,
    serve: bool,
    max_nights: int | None,
    **passed: Any,
) -> None:
    """Run `searchlab nightly FILE` on a cron schedule: print (or --install) a crontab line, systemd units or a
    Kubernetes CronJob, or --serve: an in-process scheduler loop that logs each night's start and outcome.

    Storage and tracking come from each night's environment (SEARCHLAB_STORAGE, SEARCHLAB_TRACKING_URI): the file
    ~/.config/searchlab/env for cron and systemd (--install adds this shell's to it), the Secret searchlab-env for
    a CronJob."""
    scheduling.check_cron(cron, seconds=serve)
    if install and output_format == "k8s":
        raise ConfigError("--install does not apply a CronJob: pipe the manifest to kubectl apply -f -")
    name = load_study_file(file).name
    args = [text for key, value in passed.items() if value is not None for text in (f"--{key}", str(value))]
    if serve:
        command = scheduling.nightly_command(file, args)
        with interrupt_once():  # SIGTERM (docker stop) too: the running night stops cleanly before the loop does
            try:
                nights = scheduling.serve(
                    cron,
                    lambda: scheduling.run_in_subprocess(command),
                    log=lambda line: click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True),
                    max_nights=max_nights,
                )
            except KeyboardInterrupt:
                click.echo("interrupted: the running night (if any) was stopped and closed its runs", err=True)
                sys.exit(EXIT_INTERRUPTED)
        click.echo(f"{nights} night(s) ran", err=True)
        return
    if output_format == "k8s":
        in_image = scheduling.image_path(file)
        click.echo(scheduling.cronjob_manifest(cron, ["searchlab", "nightly", in_image, *args], name, image), nl=False)
        if not in_image.startswith("studies/"):
            note = f"# note: docker/Dockerfile copies only studies/ into the image: add {in_image} to yours"
            click.echo(note, err=True)
        secret, env_file = scheduling.SECRET, scheduling.ENV_FILE
        click.echo(f"# its settings: kubectl create secret generic {secret} --from-env-file ~/{env_file}", err=True)
        return
    command = scheduling.nightly_command(file, args)
    if output_format == "cron":
        line = scheduling.crontab_line(cron, command, Path.cwd(), name)
        if install:
            scheduling.install_crontab(line, scheduling.unit_name(name))
            click.echo(f"added to your crontab: {line}")
        else:
            click.echo(line)
    else:
        units = scheduling.systemd_units(cron, command, Path.cwd(), name)
        if install:
            paths = scheduling.install_systemd(units, Path(systemd_dir).expanduser())
            click.echo(
                "wrote " + ", ".join(map(str, paths)) + "\nthen: systemctl --user daemon-reload && "
                f"systemctl --user enable --now {scheduling.unit_name(name)}.timer"
            )
        else:
            click.echo("\n".join(f"# {unit}\n{text}" for unit, text in units.items()))
    _share_environment(install)


def _share_environment(install: bool) -> None:
    """A scheduled night sees the environment file, not this shell: --install adds this shell's storage and
    tracking URI to it; otherwise a note says what it lacks."""
    if install:
        carried = scheduling.carry_environment(dict(os.environ))
        if carried:
            click.echo(
                f"wrote {', '.join(carried)} from this shell to {scheduling.env_file()} (readable by you only), "
                "which each night loads"
            )
        return
    missing = scheduling.missing_from_env_file(dict(os.environ))
    if missing:
        click.echo(
            f"note: {', '.join(missing)} is set in this shell but not in ~/{scheduling.ENV_FILE}, which each night "
            "loads: add it there, or schedule with --install",
            err=True,
        )


@click.command()
@click.argument("file")
@click.option("--seed", type=int, help="Study seed for the data split and the model's initialisation [default: 0].")
@click.option("--storage", help="Where a start_from='study:NAME' study is [default: searchlab.journal here].")
@click.option("--tracking-uri", help=TRACKING_HELP)
def check(file: str, seed: int | None, storage: str | None, tracking_uri: str | None) -> None:
    """Try to overfit one tiny batch with the study's model: exit 0 when the loss falls near zero, 1 with the
    likely cause when it does not (no gradient, a loss that never moves, NaN); 2, as for `run`, when the model
    does not fit the task (wrong head or output shape)."""
    from searchlab.check import check_study  # torch
    from searchlab.preparation import prepare

    study = load_study_file(file)
    config = resolve_config(study, {"seed": seed, "storage": storage, "tracking_uri": tracking_uri})
    prepared = prepare(study, config)  # a model that does not fit the task is bad input (exit 2), as for `run`
    result = check_study(study, prepared.train, seed=config.seed, start=prepared.start)
    click.echo(result.summary)
    sys.exit(EXIT_OK if result.passed else EXIT_FAILED)


@click.command()
@click.argument("file")
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@device_options
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the study's runs instead of exiting: join each run (and each night) as it starts, until stopped.",
)
@click.option("--poll", type=float, default=30.0, show_default=True, help="Seconds between looks, with --wait.")
def worker(file: str, wait: bool, poll: float, **flags: Any) -> None:
    """Join a study that `searchlab run` started (from any host that reaches its storage) and take its
    trials until its budget is met. Use the same --storage and --tracking-uri as the run."""
    from searchlab.summary import unsent_note  # torch, optuna, mlflow
    from searchlab.worker import join_every_run, join_study

    if poll <= 0:
        raise ConfigError(f"--poll must be more than 0 seconds, got {poll:g}")
    study = load_study_file(file)
    config = resolve_config(study, flags)
    try:
        if wait:
            join_every_run(study, config, poll=poll, say=lambda line: click.echo(line))  # until stopped
        finished = join_study(study, config)
    except KeyboardInterrupt:
        click.echo("interrupted: any open trial was failed and its MLflow run closed", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"worker done: {finished} trial(s) finished here")
    for line in unsent_note(config.tracking_uri):
        click.echo(line)


@click.command()
@click.argument("trial_number", type=int)
@click.argument("file")
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP + " Needed when the study starts from weights in MLflow.")
def replay(trial_number: int, file: str, storage: str | None, study_name: str | None, tracking_uri: str | None) -> None:
    """Retrain trial TRIAL_NUMBER of the study in FILE with its parameters and seed, and print its curve next to
    the recorded one (on the CPU they match exactly). Exit 0 when identical, 1 when not."""
    from searchlab.replay import replay_trial  # torch, optuna
    from searchlab.weights import start_weights

    study = load_study_file(file)
    trials = open_results(file, storage, study_name).trials
    if not 0 <= trial_number < len(trials):
        raise ConfigError(f"no trial {trial_number}: the study has trials 0..{len(trials) - 1}")
    config = resolve_config(study, {"storage": storage, "study_name": study_name, "tracking_uri": tracking_uri})
    start = start_weights(study, storage=config.storage, tracking_uri=config.tracking_uri)
    result = replay_trial(study, trials[trial_number], start)
    click.echo("\n".join(result.lines()))
    sys.exit(EXIT_OK if result.identical else EXIT_FAILED)


@click.command()
@click.argument("trial_number", type=int)
@click.argument("file")
@click.option("--epochs", type=int, required=True, help="Train it until this epoch (early stopping may end it sooner).")
@store_options
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--checkpoint-every", type=click.FloatRange(min=0), help="Seconds between its checkpoints [default: 60].")
def resume(trial_number: int, file: str, epochs: int, **flags: Any) -> None:
    """Go on with pruned (or failed) trial TRIAL_NUMBER of the study in FILE up to --epochs, from its last
    checkpoint, in its own MLflow run: the result is a new trial of the study, with the same params and seed."""
    from searchlab.resume import resume_trial  # torch, optuna, mlflow

    study = load_study_file(file)
    config = resolve_config(study, flags)
    try:
        trial = resume_trial(study, config, trial_number, epochs)
    except KeyboardInterrupt:
        click.echo("interrupted: the trial was failed and its MLflow run closed; its checkpoint stays", err=True)
        sys.exit(EXIT_INTERRUPTED)
    attrs = trial.user_attrs
    if trial.value is None:
        click.echo(f"trial {trial.number} ({trial.state.name}): {attrs.get('fail_reason')}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(
        f"trial {trial_number} resumed from epoch {attrs.get('resumed_from', {}).get('epoch', 0)} as trial "
        f"{trial.number}: best_val_loss={trial.value:.6g} at epoch {attrs.get('best_epoch')} ({attrs.get('reason')});"
        f" run {attrs.get('mlflow_run_id')}"
    )
