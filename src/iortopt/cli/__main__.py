"""``python -m iortopt.cli``."""

from iortopt.cli.main import entry

entry()
