"""The ``searchlab`` command: parse, call the API, print. Heavy modules load only inside the commands that need them
(``cli_search``: the commands that train; ``cli_view``: those that serve and read results)."""

from __future__ import annotations

import gc
import sys
from typing import Any

import click

from searchlab.cli_search import check, nightly, replay, resume, run, schedule, worker
from searchlab.cli_view import best, compact, dashboard, report, server, trials, ui
from searchlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, RunFailed, exit_code


class BadInput(click.ClickException):
    """One line on stderr and exit code 2, for any bad input (flags, files, URLs)."""

    exit_code = EXIT_BAD_INPUT


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
        except RunFailed as error:  # the preflight check, workers that keep dying, MLflow unreachable...
            click.echo(f"Error: {error}", err=True)
            sys.exit(exit_code(error))
        except KeyboardInterrupt:  # Ctrl-C before a command's own handling starts (loading, the check)
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def entry_point() -> None:
    """The ``searchlab`` console script: ``main``, then a quick exit. At exit Python would walk every object
    that torch, mlflow and SQLAlchemy made to collect cycles the process drops anyway, a cost paid at the end of
    every run; frozen, they are skipped. atexit handlers, flushes and closes still run."""
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


for command in (
    run,
    nightly,
    schedule,
    check,
    worker,
    server,
    ui,
    dashboard,
    report,
    replay,
    resume,
    trials,
    best,
    compact,
):
    main.add_command(command)
