"""A CT series on disk -> a Grid with HU values, validated.

Supported: single-frame CT images (one file per slice, any transfer syntax pydicom can decode) in
an axial orientation: rows along the patient x axis and columns along y, either sign (HFS, FFS,
HFP, FFP, ...). The volume is returned with x, y and z increasing along the array axes, so the
same anatomy gives the same arrays whatever the patient position. Rejected with a message:
no CT series, several series (unless one is chosen), mixed frames of reference, non-axial
(oblique, sagittal, coronal) or tilted slices, differing rows/columns/pixel spacing, duplicate
slices and inconsistent slice spacing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from iortopt.dicom.files import dicom_files, read_dataset, try_read_header
from iortopt.dicom.study import StudyRef
from iortopt.dicom.uids import CT_IMAGE
from iortopt.errors import InputFileError
from iortopt.grid import Grid

#: Direction cosines may deviate this much from a patient axis and still count as axial.
AXIS_COSINE_TOLERANCE = 1e-3
#: Slice positions may deviate from a regular spacing by the larger of these (mm, fraction).
SLICE_SPACING_TOLERANCE_MM = 0.01
SLICE_SPACING_TOLERANCE_FRACTION = 0.005


@dataclass(frozen=True, eq=False)
class CtSeries:
    """A validated CT volume.

    Attributes:
        grid: the CT voxel grid (x, y, z increasing; origin = centre of the first voxel).
        hu: (nz, ny, nx) float32 Hounsfield units on ``grid``.
        series_uid: Series Instance UID.
        study: patient, study and frame of reference of the series.
        files: the slice files, in increasing z.
        flipped_xy: whether columns / rows were reversed to make x / y increase.
    """

    grid: Grid
    hu: np.ndarray
    series_uid: str
    study: StudyRef
    files: tuple[Path, ...]
    flipped_xy: tuple[bool, bool]

    @property
    def slice_spacing_mm(self) -> float:
        return self.grid.spacing_xyz_mm[2]


def scan_folder(folder: str | Path) -> list[tuple[Path, Dataset]]:
    """(path, header) of every DICOM object under ``folder``; other files are skipped."""
    found = []
    for path in dicom_files(folder, "CT folder"):
        header = try_read_header(path)
        if header is not None:
            found.append((path, header))
    return found


def _is_ct_image(ds: Dataset) -> bool:
    return str(ds.SOPClassUID) == CT_IMAGE or (
        str(ds.get("Modality", "")) == "CT" and "ImagePositionPatient" in ds
    )


def group_series(headers: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    """CT image headers grouped by Series Instance UID."""
    series = defaultdict(list)
    for path, ds in headers:
        if _is_ct_image(ds):
            series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    return dict(series)


def _describe(series: dict[str, list]) -> str:
    parts = []
    for uid, items in series.items():
        description = items[0][1].get("SeriesDescription", "") or "no description"
        parts.append(f"{uid} ({len(items)} slices, {description})")
    return "; ".join(parts)


def _select_series(folder: Path, headers, series_uid: str | None) -> list[tuple[Path, Dataset]]:
    series = group_series(headers)
    if not series:
        modalities = sorted({str(ds.get("Modality", "?")) for _, ds in headers})
        have = f"modalities found: {', '.join(modalities)}" if modalities else "no DICOM files"
        raise InputFileError(f"{folder}: no CT image series found ({have})")
    if series_uid is not None:
        if series_uid not in series:
            raise InputFileError(
                f"{folder}: no CT series with Series Instance UID {series_uid}; have "
                + _describe(series)
            )
        return series[series_uid]
    if len(series) > 1:
        raise InputFileError(
            f"{folder}: {len(series)} CT series found; choose one with case.dicom.series_uid: "
            + _describe(series)
        )
    return next(iter(series.values()))


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], float)
    except (TypeError, ValueError):
        out = np.array([])
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InputFileError(f"{path}: {keyword} missing or malformed (got {value!r})")
    return out


def axial_signs(orientation: np.ndarray, where: str) -> tuple[float, float]:
    """(sign of the row direction along x, sign of the column direction along y).

    Raises:
        InputFileError: the orientation is not axial (oblique, sagittal, coronal, or rows
        along y), which iortopt does not support.
    """
    row, col = orientation[:3], orientation[3:]
    tol = AXIS_COSINE_TOLERANCE
    axial = (
        abs(abs(row[0]) - 1) < tol
        and abs(row[1]) < tol
        and abs(row[2]) < tol
        and abs(abs(col[1]) - 1) < tol
        and abs(col[0]) < tol
        and abs(col[2]) < tol
    )
    if not axial:
        raise InputFileError(
            f"{where}: ImageOrientationPatient {[round(float(v), 4) for v in orientation]} is "
            "not axial; only axial images (rows along x, columns along y, e.g. HFS "
            "[1,0,0,0,1,0] or FFS [-1,0,0,0,1,0]) are supported: reslice the series to axial"
        )
    return float(np.sign(row[0])), float(np.sign(col[1]))


def regular_spacing_mm(z_mm: np.ndarray, where: str) -> float:
    """The spacing of sorted slice positions; InputFileError if duplicate or irregular."""
    steps = np.diff(z_mm)
    if np.any(steps <= SLICE_SPACING_TOLERANCE_MM):
        k = int(np.argmin(steps))
        raise InputFileError(
            f"{where}: two slices at the same position z = {z_mm[k]:.3f} mm (duplicate slices)"
        )
    spacing = float(np.median(steps))
    tol = max(SLICE_SPACING_TOLERANCE_MM, SLICE_SPACING_TOLERANCE_FRACTION * spacing)
    bad = np.flatnonzero(np.abs(steps - spacing) > tol)
    if bad.size:
        k = int(bad[0])
        raise InputFileError(
            f"{where}: inconsistent slice spacing: {steps[k]:.3f} mm between z = {z_mm[k]:.3f} "
            f"and {z_mm[k + 1]:.3f} mm, {spacing:.3f} mm elsewhere ({bad.size} irregular gaps; "
            "missing or extra slices?)"
        )
    return spacing


def _check_same(items, keyword: str, folder: Path) -> None:
    values = {str(ds.get(keyword, "")) for _, ds in items}
    if len(values) > 1:
        what = "frames of reference" if keyword == "FrameOfReferenceUID" else keyword
        raise InputFileError(f"{folder}: mixed {what} within the CT series: {sorted(values)[:4]}")


def _pixels(path: Path, ds: Dataset) -> np.ndarray:
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError/NotImplementedError/ValueError
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputFileError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}): {exc}"
        ) from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_ct_series(
    folder: str | Path,
    series_uid: str | None = None,
    headers: list[tuple[Path, Dataset]] | None = None,
) -> CtSeries:
    """Read and validate the CT series in ``folder`` (``headers``: a previous scan of it).

    Raises:
        InputFileError: naming the folder or file and what is wrong (see the module docstring).
    """
    folder = Path(folder)
    headers = scan_folder(folder) if headers is None else headers
    items = _select_series(folder, headers, series_uid)
    if len(items) < 2:
        raise InputFileError(f"{folder}: the CT series has {len(items)} slice; need at least 2")
    _check_same(items, "FrameOfReferenceUID", folder)
    for keyword in ("Rows", "Columns"):
        _check_same(items, keyword, folder)
    first_path, first = items[0]
    orientation = _floats(first, "ImageOrientationPatient", 6, first_path)
    pixel_spacing = _floats(first, "PixelSpacing", 2, first_path)
    positions = []
    for path, ds in items:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, path), orientation, atol=1e-4):
            raise InputFileError(f"{path}: ImageOrientationPatient differs from {first_path}")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, path), pixel_spacing, atol=1e-4):
            raise InputFileError(f"{path}: PixelSpacing differs from {first_path}")
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
    sign_x, sign_y = axial_signs(orientation, str(first_path))
    positions = np.array(positions)
    order = np.argsort(positions[:, 2], kind="stable")
    positions = positions[order]
    items = [items[k] for k in order]
    if np.ptp(positions[:, 0]) > 1e-2 or np.ptp(positions[:, 1]) > 1e-2:
        raise InputFileError(
            f"{folder}: slices are shifted in x/y against each other (ImagePositionPatient "
            "x, y differ): tilted-gantry or non-stacked series are not supported"
        )
    dz = regular_spacing_mm(positions[:, 2], str(folder))
    rows, cols = int(first.Rows), int(first.Columns)
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    hu = np.empty((len(items), rows, cols), np.float32)
    for k, (path, _) in enumerate(items):
        ds = read_dataset(path)
        plane = _pixels(path, ds)
        if plane.shape != (rows, cols):
            raise InputFileError(f"{path}: pixel data shape {plane.shape} != ({rows}, {cols})")
        hu[k] = plane
    x0, y0 = positions[0, 0], positions[0, 1]
    if sign_x < 0:
        hu = hu[:, :, ::-1]
        x0 -= (cols - 1) * dx
    if sign_y < 0:
        hu = hu[:, ::-1, :]
        y0 -= (rows - 1) * dy
    grid = Grid((len(items), rows, cols), (dx, dy, dz), (x0, y0, positions[0, 2]))
    return CtSeries(
        grid=grid,
        hu=np.ascontiguousarray(hu),
        series_uid=str(first.SeriesInstanceUID),
        study=StudyRef.from_dataset(first),
        files=tuple(p for p, _ in items),
        flipped_xy=(sign_x < 0, sign_y < 0),
    )
