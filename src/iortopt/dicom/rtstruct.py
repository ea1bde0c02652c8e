"""RTSTRUCT ROIs -> contours in patient mm -> fractional occupancy on a grid.

Rasterisation (:func:`rasterise_roi`): every dose-grid voxel is sampled by ``supersample`` planes
in z and ``supersample`` rows in y; along each row the length inside the ROI is exact in x. A
sample takes the contours of the nearest contour plane if that plane lies within
half a slice thickness of it (so a contour stands for the slab of one CT slice), and is inside by
the even-odd rule over all contours of that plane: nested contours are holes, islands add. The
occupancy is the fraction of samples inside. Only axial (constant z) closed planar contours are
used; point and open contours are counted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iortopt.dicom.files import read_dataset, required_int, required_text
from iortopt.dicom.study import StudyRef
from iortopt.dicom.uids import RT_STRUCTURE_SET
from iortopt.errors import InputFileError
from iortopt.grid import Grid

#: Contour points may deviate this much (mm) in z from their plane and still be axial.
PLANAR_TOLERANCE_MM = 0.01
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")


@dataclass(frozen=True, eq=False)
class Roi:
    """One ROI: ``contours`` are closed axial polygons, each (K, 3) x, y, z mm."""

    number: int
    name: str
    frame_of_reference_uid: str
    interpreted_type: str
    contours: tuple[np.ndarray, ...]
    n_ignored_contours: int

    @property
    def plane_z_mm(self) -> np.ndarray:
        return np.unique(np.round([c[0, 2] for c in self.contours], 3))


@dataclass(frozen=True, eq=False)
class StructureSet:
    path: Path
    sop_instance_uid: str
    study: StudyRef
    rois: tuple[Roi, ...]

    def roi(self, name: str, where: str = "ROI") -> Roi:
        """The ROI called ``name`` (exact, else the one case-insensitive match).

        Raises:
            InputFileError: naming ``where`` (the config field) and the ROIs there are.
        """
        for roi in self.rois:
            if roi.name == name:
                return roi
        folded = [r for r in self.rois if r.name.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise InputFileError(
            f"{where}: no ROI named {name!r} in {self.path}; ROIs: {[r.name for r in self.rois]}"
        )


def _contour_points(item, path: Path, roi_name: str, k: int) -> np.ndarray:
    data = item.get("ContourData")
    try:
        values = np.asarray([float(v) for v in data], float) if data is not None else np.array([])
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.size == 0 or values.size % 3 or not np.all(np.isfinite(values)):
        raise InputFileError(
            f"{path}: ROI {roi_name!r} contour {k}: ContourData must be x, y, z triplets "
            f"(got {values.size} values)"
        )
    return values.reshape(-1, 3)


def _items_by_roi_number(ds, sequence: str, path: Path) -> list[tuple[int, object]]:
    """(Referenced ROI Number, item) of every item of ``sequence``."""
    return [
        (required_int(item, "ReferencedROINumber", f"{path}: {sequence} item {i}"), item)
        for i, item in enumerate(ds.get(sequence, []))
    ]


def read_structure_set(path: str | Path) -> StructureSet:
    """Read every ROI of an RTSTRUCT (files without file meta included).

    Raises:
        InputFileError: not an RTSTRUCT, truncated, a required attribute (ROI Number, SOP
            Instance UID, ...) missing or malformed, malformed contour data, or a non-axial
            contour.
    """
    path = Path(path)
    ds = read_dataset(path)
    if str(ds.SOPClassUID) != RT_STRUCTURE_SET and ds.get("Modality") != "RTSTRUCT":
        raise InputFileError(
            f"{path}: not an RTSTRUCT (Modality {ds.get('Modality')!r}, SOP Class {ds.SOPClassUID})"
        )
    frames = [
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    ]
    types = {
        number: str(o.get("RTROIInterpretedType", "") or "")
        for number, o in _items_by_roi_number(ds, "RTROIObservationsSequence", path)
    }
    contour_items = {
        number: c.get("ContourSequence", [])
        for number, c in _items_by_roi_number(ds, "ROIContourSequence", path)
    }
    if "StructureSetROISequence" not in ds:
        raise InputFileError(
            f"{path}: required attribute StructureSetROISequence (3006,0020) is missing "
            "(an RTSTRUCT lists its ROIs there)"
        )
    rois = []
    for i, item in enumerate(ds.StructureSetROISequence):
        number = required_int(item, "ROINumber", f"{path}: StructureSetROISequence item {i}")
        name = str(item.get("ROIName", "") or f"ROI {number}")
        closed, ignored = [], 0
        for k, contour in enumerate(contour_items.get(number, [])):
            if str(contour.get("ContourGeometricType", "")) not in CLOSED_TYPES:
                ignored += 1
                continue
            points = _contour_points(contour, path, name, k)
            if np.ptp(points[:, 2]) > PLANAR_TOLERANCE_MM:
                raise InputFileError(
                    f"{path}: ROI {name!r} contour {k} is not in an axial plane (z spans "
                    f"{np.ptp(points[:, 2]):.3f} mm); only axial contours are supported"
                )
            if len(points) >= 3:
                closed.append(points)
            else:
                ignored += 1
        frame = str(item.get("ReferencedFrameOfReferenceUID", "") or (frames[0] if frames else ""))
        rois.append(Roi(number, name, frame, types.get(number, ""), tuple(closed), ignored))
    study = StudyRef.from_dataset(ds, where=path)
    if not study.frame_of_reference_uid and frames:
        study = StudyRef(study.study_uid, frames[0], study.patient, study.patient_position)
    return StructureSet(path, required_text(ds, "SOPInstanceUID", path), study, tuple(rois))


def _sample_axis(axis_mm: np.ndarray, spacing_mm: float, n: int) -> np.ndarray:
    offsets = ((np.arange(n) + 0.5) / n - 0.5) * spacing_mm
    return (axis_mm[:, None] + offsets[None, :]).ravel()


def _plane_fraction(polygons: list[np.ndarray], grid: Grid, n: int) -> np.ndarray:
    """(ny, nx) fraction of each voxel's area inside the polygons (even-odd rule).

    ``n`` sample rows per voxel in y; along each row the inside length is exact in x.
    """
    _, ny, nx = grid.shape_zyx
    dx = grid.spacing_xyz_mm[0]
    out = np.zeros((ny, nx), np.float32)
    ys = _sample_axis(grid.axis_mm("y"), grid.spacing_xyz_mm[1], n)
    x_edges = grid.axis_mm("x")[0] - dx / 2 + dx * np.arange(nx + 1)
    points = np.concatenate(polygons)[:, :2]
    r0 = np.searchsorted(ys, points[:, 1].min()) // n
    r1 = -(-np.searchsorted(ys, points[:, 1].max(), side="right") // n)
    if r1 <= r0:
        return out
    y = ys[r0 * n : r1 * n]
    start = np.concatenate([p[:, :2] for p in polygons])
    end = np.concatenate([np.roll(p[:, :2], -1, axis=0) for p in polygons])
    # an edge crosses the sample row y if exactly one end is at or below it (half-open, so a
    # vertex on the row counts once and every row meets a closed polygon an even number of times)
    crosses = (start[None, :, 1] <= y[:, None]) != (end[None, :, 1] <= y[:, None])
    rows, edges = np.nonzero(crosses)
    if rows.size == 0:
        return out
    x0, y0 = start[edges, 0], start[edges, 1]
    x1, y1 = end[edges, 0], end[edges, 1]
    x_cross = x0 + (y[rows] - y0) * (x1 - x0) / (y1 - y0)
    order = np.lexsort((x_cross, rows))
    rows, x_cross = rows[order], x_cross[order]
    # even-odd: along a row, crossings alternately enter (+1) and leave (-1) the ROI
    row_start = np.searchsorted(rows, rows, side="left")
    sign = np.where((np.arange(rows.size) - row_start) % 2 == 0, 1.0, -1.0)
    # inside length left of an edge e: sum over crossings k left of e of sign_k (e - x_k)
    bins = np.searchsorted(x_edges, x_cross, side="right")
    count = np.zeros((y.size, nx + 2))
    moment = np.zeros((y.size, nx + 2))
    np.add.at(count, (rows, bins), sign)
    np.add.at(moment, (rows, bins), sign * x_cross)
    inside_left = (
        x_edges * np.cumsum(count, axis=1)[:, : nx + 1] - np.cumsum(moment, axis=1)[:, : nx + 1]
    )
    covered = np.clip(np.diff(inside_left, axis=1) / dx, 0.0, 1.0)
    out[r0:r1] = covered.reshape(r1 - r0, n, nx).mean(axis=1)
    return out


def _planes(contours) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Contours grouped into planes of equal z (within the planar tolerance), sorted by z."""
    order = sorted(range(len(contours)), key=lambda k: contours[k][0, 2])
    z_planes, groups = [], []
    for k in order:
        z = float(np.mean(contours[k][:, 2]))
        if z_planes and z - z_planes[-1] <= PLANAR_TOLERANCE_MM:
            groups[-1].append(contours[k])
        else:
            z_planes.append(z)
            groups.append([contours[k]])
    return np.asarray(z_planes), groups


def rasterise_roi(
    contours, grid: Grid, slice_thickness_mm: float, supersample: int = 4
) -> np.ndarray:
    """Fractional occupancy (nz, ny, nx) float32 of closed axial contours on ``grid``.

    Args:
        contours: sequence of (K, 3) polygons in mm (one ROI).
        slice_thickness_mm: thickness each contour plane stands for (the CT slice spacing); a
            sample is matched to the nearest plane within half of it.
        supersample: samples per voxel along each axis (``supersample**3`` per voxel).
    """
    out = np.zeros(grid.shape_zyx, np.float32)
    if len(contours) == 0:
        return out
    z_planes, groups = _planes(list(contours))
    n = int(supersample)
    zs = _sample_axis(grid.axis_mm("z"), grid.spacing_xyz_mm[2], n).reshape(-1, n)
    nearest = np.clip(np.searchsorted(z_planes, zs), 1, len(z_planes)) - 1
    nearest = np.where(
        np.abs(zs - z_planes[np.minimum(nearest + 1, len(z_planes) - 1)])
        < np.abs(zs - z_planes[nearest]),
        np.minimum(nearest + 1, len(z_planes) - 1),
        nearest,
    )
    matched = np.abs(zs - z_planes[nearest]) <= slice_thickness_mm / 2 + 1e-6
    cache: dict[int, np.ndarray] = {}
    for k in range(grid.shape_zyx[0]):
        planes, counts = np.unique(nearest[k][matched[k]], return_counts=True)
        for plane, count in zip(planes, counts, strict=True):
            if plane not in cache:
                cache[plane] = _plane_fraction(groups[plane], grid, n)
            out[k] += cache[plane] * np.float32(count / n)
    return out
