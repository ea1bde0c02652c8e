"""``iortopt report OUT``: rebuild a plan's ``report.html`` from its output folder alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from iortopt.errors import IortoptError

EXIT_INPUT = 2


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report_command)


def report_command(
    out: Annotated[
        Path,
        typer.Argument(
            help="a plan's output folder (iortopt run --out), or a batch job's files/<id>"
        ),
    ],
):
    """Rebuild OUT/report.html from OUT's summary.json, plan.zarr and figures.

    The report is one self-contained HTML file (figures and DVH data embedded, nothing fetched
    when it is opened) that prints to A4/Letter. Exit code 2 when OUT is not a plan output."""
    console, err = Console(), Console(stderr=True)
    from iortopt.outputs.report import write_report

    t0 = time.perf_counter()
    try:
        path = write_report(out)
    except IortoptError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INPUT) from None
    console.print(
        f"wrote {path} in {time.perf_counter() - t0:.2f} s", highlight=False, markup=False
    )
