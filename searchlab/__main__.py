"""``python -m searchlab``: the ``searchlab`` command, where its console script is not on PATH."""

from searchlab.cli import entry_point

entry_point()
