"""``iortopt check-plan``: independent TG-43 second check of a clinical brachy RTPLAN.

``register(app)`` adds the command to the main typer app. The rules are in
:mod:`iortopt.dicom.rtplan_reader` (reading) and :mod:`iortopt.outputs.second_check` (the
comparisons). The output folder follows ``iortopt run --out`` (built in a temporary sibling,
published whole; a foreign non-empty folder refused unless ``--overwrite``).
Exit codes: 0 every point and the gamma criterion within tolerance; 1 not; 2 invalid input.
"""

from __future__ import annotations

import datetime as dt
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
EXIT_FAILED = 1
EXIT_INPUT = 2
CHECK_PLAN = "check-plan"


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


def parse_treatment(text: str | None) -> dt.datetime | None:
    """``--treatment`` as a naive datetime (ISO 8601, e.g. 2026-03-04T09:30).

    Raises:
        ConfigError: naming ``--treatment``.
    """
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--treatment: {text!r} is not an ISO 8601 date-time (e.g. 2026-03-04T09:30)"
        ) from None
    return when.replace(tzinfo=None)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_report(report: dict) -> None:
    """The terminal table of points, then gamma, DVH rows, decay and warnings."""
    table = Table(title=escape(f"second check of {Path(report['plan']).name}"))
    for column in ("point", "x, y, z (mm)", "TPS (Gy)", "iortopt (Gy)", "diff (%)", "ok", "from"):
        table.add_column(column, justify="left" if column in ("point", "from") else "right")
    for p in report["points"]:
        ok = {None: "-", True: "[green]yes[/]", False: "[red]NO[/]"}[p["within_tolerance"]]
        xyz = ", ".join(f"{v:.1f}" for v in p["xyz_mm"])
        table.add_row(
            escape(p["name"]),
            xyz,
            _fmt(p["tps_gy"]),
            _fmt(p["iortopt_gy"]),
            _fmt(p["diff_percent"], 2),
            ok,
            p["tps_from"],
        )
    console.print(table)
    for label, line in report["second_check"]["lines"].items():
        console.print(f"{label}: {line}", markup=False, highlight=False)
    if report["dvh"]:
        dvh = Table(title="DVH metrics (Gy, %, cm3): TPS dose, then iortopt's")
        dvh.add_column("ROI")
        keys = [k.removeprefix("tps_") for k in report["dvh"][0] if k.startswith("tps_")]
        for key in keys:
            label = key.removesuffix("_gy").removesuffix("_percent").replace("volume_cm3", "cm3")
            dvh.add_column(label, justify="right")
        for row in report["dvh"]:
            dvh.add_row(escape(row["name"]), *(_fmt(row[f"tps_{k}"], 1) for k in keys))
            cells = (_fmt(row[f"iortopt_{k}"], 1) for k in keys)
            dvh.add_row("  ours", *cells, style="dim")
        console.print(dvh)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    verdict = "[green]PASS[/]" if report["passed"] else "[red]FAIL[/]"
    console.print(f"second check: {verdict}")


def check_plan(
    rtplan: Annotated[Path, typer.Argument(help="the brachy RTPLAN (HDR or PDR)")],
    out: Annotated[Path, typer.Option("--out", help="output folder: check.json, check.png")],
    rtstruct: Annotated[
        Path | None, typer.Option("--rtstruct", help="RTSTRUCT: applicator ROIs and DVH ROIs")
    ] = None,
    rtdose: Annotated[
        Path | None, typer.Option("--rtdose", help="the TPS's RTDOSE: gamma and DVH comparison")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="TG-43 dataset (packaged name or .toml) if not inferred"),
    ] = None,
    treatment: Annotated[
        str | None,
        typer.Option("--treatment", help="treatment date-time (ISO 8601; default: plan's)"),
    ] = None,
    tolerance_percent: Annotated[
        float, typer.Option("--tolerance-percent", help="point dose tolerance (%)")
    ] = 2.0,
    gamma_percent: Annotated[
        float, typer.Option("--gamma-percent", help="gamma dose criterion (%, global)")
    ] = 3.0,
    gamma_mm: Annotated[
        float, typer.Option("--gamma-mm", help="gamma distance criterion (mm)")
    ] = 2.0,
    gamma_pass_percent: Annotated[
        float, typer.Option("--gamma-pass-percent", help="required gamma pass rate (%)")
    ] = 95.0,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="write into a foreign folder (its other files are kept)"),
    ] = False,
):
    """Recompute a clinical brachy plan with iortopt's TG-43 engine and compare with the TPS."""
    from iortopt.io.output_dir import (
        check_output_target,
        refuse_other_output,
        write_command_folder,
    )

    try:
        from iortopt.dicom.rtplan_reader import read_brachy_plan, resolve_source
        from iortopt.outputs import second_check as sc

        for name, value in (
            ("--tolerance-percent", tolerance_percent),
            ("--gamma-percent", gamma_percent),
            ("--gamma-mm", gamma_mm),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: must be a positive number, got {value}")
        if not (0 < gamma_pass_percent <= 100):
            raise ConfigError(
                f"--gamma-pass-percent: must be in (0, 100], got {gamma_pass_percent}"
            )
        settings = sc.CheckSettings(
            tolerance_percent=tolerance_percent,
            gamma_dose_percent=gamma_percent,
            gamma_distance_mm=gamma_mm,
            gamma_pass_percent=gamma_pass_percent,
            treatment=parse_treatment(treatment),
        )
        refuse_other_output(out, CHECK_PLAN)
        check_output_target(out, overwrite, CHECK_PLAN)
        plan = read_brachy_plan(rtplan, rtstruct)
        data, source_warnings = resolve_source(plan.source, source)
        dose = structure_set = None
        if rtdose is not None:
            from iortopt.dicom.rtdose import read_rtdose
            from iortopt.outputs.external_dose import check_dose_units

            dose = read_rtdose(rtdose)
            check_dose_units(rtdose, dose)
            if rtstruct is not None:
                from iortopt.dicom.rtstruct import read_structure_set
                from iortopt.outputs.external_dose import check_frame_of_reference

                structure_set = read_structure_set(rtstruct)
                check_frame_of_reference(rtdose, dose, structure_set)
        result = sc.run_check(plan, data, source_warnings, settings, dose, structure_set)
        write_command_folder(out, overwrite, CHECK_PLAN, lambda tmp: sc.write_check(tmp, result))
    except IortoptError as exc:
        _fail(exc)
    print_report(result.report)
    console.print(f"wrote {out / sc.CHECK_JSON} and {out / sc.CHECK_PNG}", markup=False)
    if not result.passed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add ``iortopt check-plan`` to the ``iortopt`` app."""
    app.command("check-plan")(check_plan)
