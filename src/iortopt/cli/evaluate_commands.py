"""``iortopt evaluate``: iortopt's DVH metrics of an external RTDOSE on an RTSTRUCT's ROIs.

``register(app)`` adds the command to the main typer app (``iortopt.cli``). The output folder
follows the rules of ``iortopt run --out`` (:mod:`iortopt.io.output_dir`): built in a temporary
sibling and published whole, a foreign non-empty folder refused unless ``--overwrite``.
Exit codes: 0 success; 2 invalid input (the message names the file and what is wrong).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iortopt.errors import ConfigError, IortoptError

console = Console()
err_console = Console(stderr=True)
EXIT_INPUT = 2
#: The "plan" an evaluation folder's marker names.
EVALUATE_PLAN = "evaluate"


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _print_table(evaluated, outside: list[str], title: str) -> None:
    from iortopt.outputs.external_dose import METRICS

    table = Table(title=escape(title))
    table.add_column("ROI")
    for key in METRICS:
        table.add_column(key.removesuffix("_gy").replace("volume_cm3", "cm3"), justify="right")
    for r in evaluated:
        table.add_row(escape(r.name), *(_fmt(r.metrics[k]) for k in METRICS))
        if r.tps is not None:
            cells = (_fmt(r.tps[k]) for k in METRICS)
            table.add_row("  TPS", *cells, style="dim")
    console.print(table)
    if outside:
        console.print(f"no volume inside the dose grid: {', '.join(outside)}", markup=False)
    cut = [r.name for r in evaluated if r.partly_outside]
    if cut:
        console.print(
            f"partly outside the dose grid (only the volume inside is counted): {', '.join(cut)}",
            markup=False,
        )


def evaluate(
    rtdose: Annotated[Path, typer.Option("--rtdose", help="the RTDOSE file (dose in GY)")],
    out: Annotated[Path, typer.Option("--out", help="output folder: metrics.csv, dvh.png")],
    rtstruct: Annotated[
        Path | None, typer.Option("--rtstruct", help="the RTSTRUCT whose ROIs are evaluated")
    ] = None,
    ct: Annotated[
        Path | None,
        typer.Option("--ct", help="CT folder: checks its frame of reference, gives slice spacing"),
    ] = None,
    prescription_gy: Annotated[
        float | None, typer.Option("--prescription-gy", help="prescription (Gy), for V100 and plot")
    ] = None,
    supersample: Annotated[
        int, typer.Option("--supersample", min=1, max=16, help="ROI samples per voxel axis")
    ] = 8,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="write into a foreign folder (its other files are kept)"),
    ] = False,
):
    """DVH metrics of an external RTDOSE per RTSTRUCT ROI (and the TPS's own DVHs beside them)."""
    from iortopt.io.output_dir import (
        check_output_target,
        refuse_other_output,
        write_command_folder,
    )

    try:
        from iortopt.dicom.rtdose import read_rtdose
        from iortopt.dicom.rtstruct import read_structure_set
        from iortopt.outputs import external_dose as ed

        if rtstruct is None:
            raise ConfigError("--rtstruct: required (the ROIs to evaluate the dose on)")
        if prescription_gy is not None and not (prescription_gy > 0):
            raise ConfigError(f"--prescription-gy: must be positive, got {prescription_gy}")
        refuse_other_output(out, EVALUATE_PLAN)
        check_output_target(out, overwrite, EVALUATE_PLAN)
        dose = read_rtdose(rtdose)
        ed.check_dose_units(rtdose, dose)
        structure_set = read_structure_set(rtstruct)
        ed.check_frame_of_reference(rtdose, dose, structure_set)
        if ct is not None:
            thickness = ed.check_ct_frame(ct, dose, rtdose)
        else:
            thickness = ed.contour_slice_thickness_mm(structure_set, dose.grid.spacing_xyz_mm[2])
        evaluated, outside = ed.evaluate_dose(
            dose,
            structure_set,
            thickness,
            prescription_gy=prescription_gy,
            supersample=supersample,
            where=rtstruct,
        )
        title = f"{rtdose.name} on {rtstruct.name}"
        write_command_folder(
            out,
            overwrite,
            EVALUATE_PLAN,
            lambda tmp: ed.write_evaluation(tmp, evaluated, prescription_gy, title),
        )
    except IortoptError as exc:
        _fail(exc)
    _print_table(evaluated, outside, f"{title}: dose metrics in Gy")
    console.print(f"wrote {out / ed.METRICS_CSV} and {out / ed.DVH_PNG}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``iortopt evaluate`` to the ``iortopt`` app."""
    app.command("evaluate")(evaluate)
