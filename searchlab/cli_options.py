"""The options several ``searchlab`` commands share, and their help texts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from searchlab.catalog import PRUNERS, SAMPLERS


def store_options(command: Any) -> Any:
    """--storage and --study-name, shared by every command that reads a study."""
    command = click.option("--study-name", help="Optuna study and MLflow experiment name [default: the study's name].")(
        command
    )
    return click.option(
        "--storage",
        help="Optuna storage: sqlite:///FILE, postgresql://USER@HOST/DB or a journal "
        "file path [default: searchlab.journal here; env SEARCHLAB_STORAGE].",
    )(command)


def device_options(command: Any) -> Any:
    """--devices, --threads and --retries, shared by the commands that run trials."""
    command = click.option("--retries", type=int, help="Times a trial whose worker died is run again [default: 1].")(
        command
    )
    command = click.option(
        "--threads",
        type=int,
        help="Torch threads per worker [default: 1 per CPU worker (use "
        "--workers auto for every core); a share of the cores per GPU worker].",
    )(command)
    return click.option("--devices", help="auto (every GPU, else the CPU), cpu, cuda, or cuda:0,2 [default: auto].")(
        command
    )


TRACKING_HELP = "MLflow tracking URI [default: env SEARCHLAB_TRACKING_URI, MLFLOW_TRACKING_URI, sqlite:///mlflow.db]."


def search_options(command: Any) -> Any:
    """The options of a search, shared by `run` and `nightly`."""
    options: list[Callable[[Any], Any]] = [
        click.option("--trials", "n_trials", type=int, help="Trials to run in this invocation [default: the study's]."),
        click.option("--timeout", type=float, help="Start no new trial after this many seconds."),
        click.option("--sampler", type=click.Choice(list(SAMPLERS)), help="Optuna sampler [default: tpe]."),
        click.option(
            "--pruner",
            type=click.Choice(list(PRUNERS)),
            help="Stop unpromising trials early, on the per-epoch validation loss [default: none].",
        ),
        click.option("--seed", type=int, help="Study seed: sampler, data split and every trial's seed [default: 0]."),
        store_options,
        click.option("--tracking-uri", help=TRACKING_HELP),
        click.option("--max-epochs", type=int, help="Most epochs per trial (early stopping may end sooner)."),
        click.option("--workers", help="Worker processes, or 'auto' for one per device slot [default: 1]."),
        click.option("--trials-per-device", type=int, help="Workers that may share one GPU [default: 1]."),
        click.option(
            "--pack",
            type=int,
            help="Trials each worker trains at once as one vectorised model (same shapes and batch size, their "
            "own lr, momentum, weight decay, dropout and init) [default: 1; env SEARCHLAB_PACK].",
        ),
        device_options,
        click.option(
            "--checkpoint-every",
            type=click.FloatRange(min=0),
            help="Seconds between a trial's checkpoints, taken at the end of an epoch (0: every epoch); a killed or "
            "interrupted trial resumes from its last one [default: 60; env SEARCHLAB_CHECKPOINT_EVERY].",
        ),
        click.option("--no-check", is_flag=True, help="Skip the overfit-one-batch check before the first trial."),
        click.option(
            "--report/--no-report",
            default=None,
            help="Write the study report (plots, summary) to the parent run at the end; it takes a few "
            "seconds [default: on; env SEARCHLAB_REPORT].",
        ),
        click.option(
            "--register/--no-register",
            default=None,
            help="Register the best trial's model as NAME@best in the MLflow Model Registry at the end "
            "[default: on; env SEARCHLAB_REGISTER].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


HOST_HELP = "Interface to bind; 0.0.0.0 opens it to other hosts."


ALLOWED_HOSTS_HELP = (
    "Other host names (comma-separated, no port) clients reach it by, e.g. $(hostname); "
    "loopback and --host are always allowed."
)
