"""The ``iortopt`` command line (typer): ``main`` holds the app and the plan commands."""

from iortopt.cli.main import app, entry

__all__ = ["app", "entry"]
