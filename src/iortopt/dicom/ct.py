"""A CT series on disk -> a Grid with HU values, validated.

Supported: single-frame CT images (one file per slice, any transfer syntax pydicom can decode) in
an axial orientation: rows along the patient x axis and columns along y, either sign (HFS, FFS,
HFP, FFP, ...). The volume is returned with x, y and z increasing along the array axes, so the
same anatomy gives the same arrays whatever the patient position. Rejected with a message:
no CT series, several series (unless one is chosen), mixed frames of reference, non-axial
(oblique, sagittal, coronal) or tilted slices, differing rows/columns/pixel spacing, duplicate
slices and inconsistent slice spacing. Every attribute used is checked (present, finite, in
range: Rows/Columns >= 1, PixelSpacing two positive numbers, unit orientation vectors, 8/16/32 bits
allocated) with a message naming the file and the attribute.

Before the volume is allocated its size (slices x Rows x Columns x 4 bytes, float32 HU) is checked
against the host's memory budget (:func:`iortopt.compute.memory.memory_budget`) and an absolute cap,
:data:`MAX_CT_VOLUME_BYTES` (16 GiB: 2**32 voxels, e.g. 4096 slices of 1024 x 1024, far beyond a
diagnostic CT), so a corrupt or hostile header cannot exhaust memory before a pixel is read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from iortopt.dicom.files import (
    dicom_files,
    optional_float,
    read_dataset,
    required_floats,
    required_int,
    required_text,
    try_read_header,
)
from iortopt.dicom.study import StudyRef
from iortopt.dicom.uids import CT_IMAGE
from iortopt.errors import InputFileError
from iortopt.grid import Grid

#: Direction cosines may deviate this much from a patient axis and still count as axial.
AXIS_COSINE_TOLERANCE = 1e-3
#: Slice positions may deviate from a regular spacing by the larger of these (mm, fraction).
SLICE_SPACING_TOLERANCE_MM = 0.01
SLICE_SPACING_TOLERANCE_FRACTION = 0.005
#: Unit direction cosines: |length - 1| and |row . column| at most this.
UNIT_VECTOR_TOLERANCE = 1e-3
#: Pixel sizes iortopt decodes (BitsAllocated).
BITS_ALLOCATED = (8, 16, 32)
#: Largest CT volume read, whatever memory is free (bytes of the float32 HU array).
MAX_CT_VOLUME_BYTES = 16 * 2**30
HU_BYTES_PER_VOXEL = 4


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
            series[required_text(ds, "SeriesInstanceUID", path)].append((path, ds))
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


def orientation_cosines(ds: Dataset, path: Path) -> np.ndarray:
    """ImageOrientationPatient: two orthogonal unit vectors (row, column directions)."""
    orientation = required_floats(ds, "ImageOrientationPatient", path, 6)
    row, col = orientation[:3], orientation[3:]
    tol = UNIT_VECTOR_TOLERANCE
    if (
        abs(np.linalg.norm(row) - 1) > tol
        or abs(np.linalg.norm(col) - 1) > tol
        or abs(float(row @ col)) > tol
    ):
        raise InputFileError(
            f"{path}: ImageOrientationPatient (0020,0037) {orientation.tolist()} is not two "
            "orthogonal unit vectors (row and column direction cosines)"
        )
    return orientation


def _image_header(path: Path, ds: Dataset) -> dict:
    """The checked header values of one slice that the reader uses."""
    if "SamplesPerPixel" in ds:
        required_int(ds, "SamplesPerPixel", path, allowed=(1,))
    optional_float(ds, "SliceThickness", path, 0.0, minimum=0.0)
    return {
        "rows": required_int(ds, "Rows", path, minimum=1, maximum=65535),
        "columns": required_int(ds, "Columns", path, minimum=1, maximum=65535),
        "bits": required_int(ds, "BitsAllocated", path, allowed=BITS_ALLOCATED),
        "orientation": orientation_cosines(ds, path),
        "pixel_spacing": required_floats(ds, "PixelSpacing", path, 2, positive=True),
        "position": required_floats(ds, "ImagePositionPatient", path, 3),
    }


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


def check_volume_size(path: Path, n_slices: int, rows: int, columns: int) -> None:
    """Refuse a volume larger than the host's memory budget or :data:`MAX_CT_VOLUME_BYTES`.

    Raises:
        InputFileError: naming ``path`` (the first slice), the sizes and the limit.
    """
    import jax

    from iortopt.compute.memory import MIB, host_available_bytes, memory_budget

    nbytes = n_slices * rows * columns * HU_BYTES_PER_VOXEL
    limit, why = MAX_CT_VOLUME_BYTES, "the reader's cap"
    try:  # the volume is a host array: the host's budget, whatever device plans run on
        budget = memory_budget(device=jax.devices("cpu")[0], free_bytes=host_available_bytes())
    except RuntimeError:  # the host's free memory cannot be queried: the cap alone
        budget = None
    if budget is not None and budget.usable_bytes is not None and budget.usable_bytes < limit:
        limit, why = budget.usable_bytes, f"the memory budget, {budget.describe()}"
    if nbytes > limit:
        raise InputFileError(
            f"{path}: the CT series would need {nbytes / MIB:.0f} MiB ({n_slices} slices x "
            f"Rows {rows} x Columns {columns} x {HU_BYTES_PER_VOXEL} bytes), more than "
            f"{limit / MIB:.0f} MiB ({why}); are Rows/Columns (0028,0010/0011) right?"
        )


def _check_pixel_data_length(path: Path, ds: Dataset) -> None:
    """Uncompressed pixel data must hold Rows x Columns x BitsAllocated / 8 bytes."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or (syntax is not None and syntax.is_compressed):
        return
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    got = len(ds.PixelData)
    if got < expected:
        raise InputFileError(
            f"{path}: pixel data truncated: {got} bytes, expected {expected} (Rows {ds.Rows} x "
            f"Columns {ds.Columns} x {ds.BitsAllocated} bits)"
        )


def _pixels(path: Path, ds: Dataset) -> np.ndarray:
    _check_pixel_data_length(path, ds)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError/NotImplementedError/ValueError
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputFileError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}): {exc}"
        ) from None
    slope = optional_float(ds, "RescaleSlope", path, 1.0) or 1.0
    intercept = optional_float(ds, "RescaleIntercept", path, 0.0)
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
    first_path, first = items[0]
    head = _image_header(first_path, first)
    orientation, pixel_spacing = head["orientation"], head["pixel_spacing"]
    positions = []
    for path, ds in items:
        this = _image_header(path, ds)
        for key, keyword in (("rows", "Rows"), ("columns", "Columns"), ("bits", "BitsAllocated")):
            if this[key] != head[key]:
                raise InputFileError(
                    f"{path}: {keyword} {this[key]} differs from {head[key]} in {first_path} "
                    "(mixed image sizes within the CT series)"
                )
        if not np.allclose(this["orientation"], orientation, atol=1e-4):
            raise InputFileError(f"{path}: ImageOrientationPatient differs from {first_path}")
        if not np.allclose(this["pixel_spacing"], pixel_spacing, atol=1e-4):
            raise InputFileError(f"{path}: PixelSpacing differs from {first_path}")
        positions.append(this["position"])
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
    rows, cols = head["rows"], head["columns"]
    dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
    check_volume_size(first_path, len(items), rows, cols)
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
        series_uid=required_text(first, "SeriesInstanceUID", first_path),
        study=StudyRef.from_dataset(first, where=first_path),
        files=tuple(p for p, _ in items),
        flipped_xy=(sign_x < 0, sign_y < 0),
    )
