"""The errors searchlab raises on purpose."""


class ConfigError(ValueError):
    """Bad input from the user: a study file, a flag, an environment variable or a URL.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, for tags, trial attributes and one-line errors."""
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


class RunFailed(Exception):
    """The run could not go on (e.g. its workers keep dying); the CLI prints it in one line, exit code 1."""


class TrialStopped(Exception):
    """A trial stopped itself (e.g. a NaN loss before any finite epoch); the study carries on."""
