"""The errors searchlab raises on purpose."""


class ConfigError(ValueError):
    """Bad input from the user: a study file, a flag, an environment variable or a URL.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


class TrialStopped(Exception):
    """A trial stopped itself (e.g. a NaN loss before any finite epoch); the study carries on."""
