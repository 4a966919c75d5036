"""The errors searchlab raises on purpose, the exit code each ends a command with, and the texts of one-line reports."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WORSE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# What `run` and `nightly` say on Ctrl-C (each interrupted trial was enqueued again: outcome.tell_stopped).
INTERRUPTED_LINE = (
    "interrupted: every open trial was failed and its MLflow run closed; "
    "the same command again resumes them from their last checkpoint"
)
EXIT_MEANINGS = {
    EXIT_OK: "improved or held",
    EXIT_FAILED: "the sweep failed",
    EXIT_BAD_INPUT: "bad input",
    EXIT_WORSE: "the champion got worse",
    EXIT_INTERRUPTED: "interrupted",
}  # of `searchlab nightly`


class ConfigError(ValueError):
    """Bad input from the user: a study file, a flag, an environment variable or a URL.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


class RunFailed(Exception):
    """The run could not go on (e.g. its workers keep dying); the CLI prints it in one line, exit code 1."""


class CheckFailed(RunFailed):
    """`searchlab run` refuses to sweep a model that failed the preflight check."""


class TrialStopped(Exception):
    """A trial stopped itself (e.g. a NaN loss before any finite epoch); the study carries on."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a command after everything it had open was closed; exit code 130."""


def exit_code(error: BaseException) -> int:
    """The exit code a command ends with when ``error`` stops it."""
    if isinstance(error, ConfigError):
        return EXIT_BAD_INPUT
    if isinstance(error, KeyboardInterrupt | Interrupted):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def exit_with(error: BaseException) -> NoReturn:
    """End the process on ``error``: its one line on stderr, then its exit code."""
    print(f"Error: {error}", file=sys.stderr)
    raise SystemExit(exit_code(error))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, for tags, trial attributes and one-line errors."""
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


def format_value(value: Any, digits: int = 6, *, none: str = "None") -> str:
    """A value as reports show it: floats to ``digits`` significant digits, None as ``none`` (``-`` where a value may
    be missing)."""
    if value is None:
        return none
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
