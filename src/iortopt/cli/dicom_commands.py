"""``iortopt dicom inspect`` and ``iortopt dicom import``: look at a DICOM study, build a case.

``register(app)`` adds the ``dicom`` command group to the main typer app (``iortopt.cli``).
Planning from DICOM itself runs through ``iortopt run`` with a ``[case] kind = "dicom"`` config;
these commands help write that config (ROI names, frames of reference) and check the import.
Exit codes: 0 success; 2 invalid input (the message names the file and what is wrong).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iortopt.errors import IortoptError

console = Console()
err_console = Console(stderr=True)
EXIT_INPUT = 2

dicom_app = typer.Typer(
    help="DICOM-RT: inspect a study, import CT + RTSTRUCT to a case store.",
    no_args_is_help=True,
)


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


@dicom_app.command("inspect")
def inspect(
    folder: Annotated[Path, typer.Argument(help="folder with the CT series and RTSTRUCT(s)")],
    rtstruct: Annotated[
        Path | None, typer.Option("--rtstruct", help="an RTSTRUCT file outside the folder")
    ] = None,
):
    """List the image series, their frames of reference, and every RTSTRUCT's ROIs."""
    try:
        from iortopt.dicom.ct import group_series, scan_folder
        from iortopt.dicom.rtstruct import read_structure_set
        from iortopt.dicom.uids import RT_STRUCTURE_SET

        headers = scan_folder(folder)
        series = group_series(headers)
        table = Table(title=escape(f"CT series in {folder} ({len(headers)} DICOM files)"))
        for col in ("series UID", "slices", "description", "frame of reference", "position"):
            table.add_column(col, overflow="fold")
        for uid, items in series.items():
            first = items[0][1]
            cells = (
                uid,
                str(len(items)),
                str(first.get("SeriesDescription", "")),
                str(first.get("FrameOfReferenceUID", "")),
                str(first.get("PatientPosition", "")),
            )
            table.add_row(*map(escape, cells))
        console.print(table)
        ct_frames = {str(items[0][1].get("FrameOfReferenceUID", "")) for items in series.values()}
        paths = [p for p, ds in headers if str(ds.SOPClassUID) == RT_STRUCTURE_SET]
        paths += [rtstruct] if rtstruct is not None else []
        for path in paths:
            structure_set = read_structure_set(path)
            rois = Table(title=escape(f"RTSTRUCT {path}"))
            for col in ("#", "ROI name", "type", "contours", "z range mm", "frame of reference"):
                rois.add_column(col, overflow="fold")
            for roi in structure_set.rois:
                z = roi.plane_z_mm
                contours = str(len(roi.contours))
                if roi.n_ignored_contours:
                    contours += f" (+{roi.n_ignored_contours} point/open)"
                cells = (
                    str(roi.number),
                    roi.name,
                    roi.interpreted_type,
                    contours,
                    f"{z.min():.1f} to {z.max():.1f}" if z.size else "-",
                    "= CT series"
                    if roi.frame_of_reference_uid in ct_frames
                    else (roi.frame_of_reference_uid or "-"),
                )
                rois.add_row(*map(escape, cells))
            console.print(rois)
        if not series and not paths:
            raise IortoptError(f"{folder}: no CT series and no RTSTRUCT found")
    except IortoptError as exc:
        _fail(exc)


def _mapping(values: list[str], role: str) -> dict:
    out = {}
    for value in values:
        name, _, roi = value.partition("=")
        out[name.strip()] = {"roi": (roi or name).strip(), "role": role}
    return out


@dicom_app.command("import")
def import_(
    ct_folder: Annotated[Path, typer.Argument(help="folder with the CT series")],
    out: Annotated[Path, typer.Option("--out", help="case store (zarr v3) to write")],
    rtstruct: Annotated[
        Path | None,
        typer.Option("--rtstruct", help="RTSTRUCT file (default: the one in the folder)"),
    ] = None,
    target: Annotated[
        list[str], typer.Option("--target", help="target ROI, as ROI or NAME=ROI (repeatable)")
    ] = [],  # noqa: B006 - typer needs a literal default
    oar: Annotated[list[str], typer.Option("--oar", help="OAR ROI, as ROI or NAME=ROI")] = [],  # noqa: B006
    other: Annotated[list[str], typer.Option("--other", help="other ROI (e.g. BODY)")] = [],  # noqa: B006
    spacing_mm: Annotated[
        str, typer.Option("--spacing-mm", help="'ct' or a dose grid spacing in mm")
    ] = "ct",
    margin_mm: Annotated[float, typer.Option("--margin-mm", help="crop margin")] = 20.0,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="keep the whole CT extent")] = False,
    supersample: Annotated[int, typer.Option("--supersample")] = 8,
    series_uid: Annotated[str | None, typer.Option("--series-uid")] = None,
):
    """Import a CT series and RTSTRUCT ROIs to a case store (grid, occupancies, HU)."""
    import time

    try:
        from iortopt.cases.case_store import write_case_store
        from iortopt.cases.dicom_case import import_case
        from iortopt.config import DicomCaseSection
        from iortopt.io.output_dir import check_store_target

        check_store_target(out)
        structures = _mapping(target, "target") | _mapping(oar, "oar") | _mapping(other, "other")
        if not structures:
            raise IortoptError("name at least one ROI with --target, --oar or --other")
        try:
            spacing = spacing_mm if spacing_mm == "ct" else float(spacing_mm)
            section = DicomCaseSection(
                ct_folder=str(ct_folder),
                rtstruct=None if rtstruct is None else str(rtstruct),
                series_uid=series_uid,
                structures=structures,
                spacing_mm=spacing,
                crop=not no_crop,
                margin_mm=margin_mm,
                supersample=supersample,
            )
        except ValueError as exc:
            raise IortoptError(f"invalid option: {exc}") from None
        t0 = time.perf_counter()
        case = import_case(section, ct_folder.name or "dicom")
        import_s = time.perf_counter() - t0
        write_case_store(out, case)
    except IortoptError as exc:
        _fail(exc)
    table = Table(title=f"{case.grid.shape_zyx} voxels of {case.grid.spacing_xyz_mm} mm")
    for col in ("structure", "ROI", "role", "volume cm3"):
        table.add_column(col)
    for s in case.structures:
        cells = (s.name, case.info["rois"][s.name], s.role, f"{s.volume_cm3(case.grid):.3f}")
        table.add_row(*map(escape, cells))
    console.print(table)
    console.print(f"imported in {import_s:.2f} s; wrote {out}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``dicom`` command group to the ``iortopt`` app."""
    app.add_typer(dicom_app, name="dicom")
