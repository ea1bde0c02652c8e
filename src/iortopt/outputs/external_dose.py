"""DVH metrics of an external RTDOSE (any system) on the ROIs of an RTSTRUCT (``iortopt evaluate``).

The ROIs are rasterised on the dose's own grid (fractional occupancy,
:func:`iortopt.dicom.rtstruct.rasterise_roi`), each contour plane standing for a slab as thick as
the CT slice spacing (given, or the smallest spacing between contour planes), and iortopt's
metrics (:func:`iortopt.evaluation.dvh.structure_metrics`) computed on them. When the RTDOSE
carries a DVH Sequence, the same metrics are read from the TPS's own DVHs
(:func:`tps_metrics`) and written beside ours with the differences (ours - TPS).

TPS DVH convention (DICOM RT Dose module): DVHData holds (bin width, volume) pairs, dose times
DVHDoseScaling; the first bin starts at 0 Gy; a CUMULATIVE volume is the volume receiving at least
the bin's lower edge, a DIFFERENTIAL one the volume inside the bin. PERCENT volumes are turned into
cm^3 with our volume of the ROI (the RTDOSE does not give the TPS's).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iortopt.dicom.rtdose import RtDose
from iortopt.dicom.rtstruct import StructureSet, rasterise_roi
from iortopt.errors import InputFileError
from iortopt.evaluation.dvh import DVH, cumulative_dvh, structure_metrics

#: Metrics of every ROI, in the order of the CSV columns.
METRICS = (
    "volume_cm3",
    "mean_gy",
    "min_gy",
    "max_gy",
    "D98_gy",
    "D90_gy",
    "D50_gy",
    "D2cc_gy",
    "D0.1cc_gy",
)
METRICS_CSV = "metrics.csv"
DVH_PNG = "dvh.png"


@dataclass(frozen=True, eq=False)
class RoiDose:
    """iortopt's metrics of one ROI, its DVH, and the TPS's metrics (None: no TPS DVH)."""

    name: str
    number: int
    metrics: dict[str, float]
    dvh: DVH
    tps: dict[str, float] | None
    partly_outside: bool = False


def contour_slice_thickness_mm(structure_set: StructureSet, default_mm: float) -> float:
    """The smallest spacing (mm) between the contour planes of any ROI; ``default_mm`` when every
    ROI has a single plane."""
    steps = []
    for roi in structure_set.rois:
        z = roi.plane_z_mm
        if z.size > 1:
            steps.append(float(np.min(np.diff(z))))
    return min(steps) if steps else float(default_mm)


def partly_outside_grid(contours, grid, slice_thickness_mm: float) -> bool:
    """Whether the ROI's contours (each plane a slab of ``slice_thickness_mm``) reach beyond the
    dose grid's voxel edges, so that its volume there is cut off."""
    if len(contours) == 0:
        return False
    points = np.concatenate(list(contours))
    half_slab = np.array([0.0, 0.0, slice_thickness_mm / 2])
    low = points.min(axis=0) - half_slab
    high = points.max(axis=0) + half_slab
    half_voxel = np.asarray(grid.spacing_xyz_mm) / 2
    edges_low = np.array([grid.axis_mm(a)[0] for a in "xyz"]) - half_voxel
    edges_high = np.array([grid.axis_mm(a)[-1] for a in "xyz"]) + half_voxel
    tol_mm = 1e-6
    return bool(np.any(low < edges_low - tol_mm) or np.any(high > edges_high + tol_mm))


def check_frame_of_reference(rtdose_path: Path, dose: RtDose, structure_set: StructureSet) -> None:
    """Refuse an RTSTRUCT whose ROIs lie in another frame of reference than the RTDOSE.

    Raises:
        InputFileError: naming both files and UIDs (skipped when either UID is absent).
    """
    dose_frame = str(dose.dataset.get("FrameOfReferenceUID", "") or "")
    frames = {r.frame_of_reference_uid for r in structure_set.rois if r.frame_of_reference_uid}
    frames |= {structure_set.study.frame_of_reference_uid} - {""}
    if dose_frame and frames and dose_frame not in frames:
        raise InputFileError(
            f"{structure_set.path}: its ROIs are in frame of reference {sorted(frames)}, the "
            f"RTDOSE {rtdose_path} in {dose_frame}; they do not belong to the same study"
        )


def check_ct_frame(ct_folder: Path, dose: RtDose, rtdose_path: Path) -> float:
    """The CT slice spacing (mm), after checking its frame of reference is the RTDOSE's.

    Raises:
        InputFileError: naming the folder and both UIDs.
    """
    from iortopt.dicom.ct import read_ct_series

    ct = read_ct_series(ct_folder)
    dose_frame = str(dose.dataset.get("FrameOfReferenceUID", "") or "")
    ct_frame = ct.study.frame_of_reference_uid
    if dose_frame and ct_frame and ct_frame != dose_frame:
        raise InputFileError(
            f"{ct_folder}: the CT is in frame of reference {ct_frame}, the "
            f"RTDOSE {rtdose_path} in {dose_frame}"
        )
    return float(ct.slice_spacing_mm)


def _tps_dvh_items(dose: RtDose) -> dict[int, object]:
    """ROI number -> DVH Sequence item, for items of one INCLUDED ROI in GY."""
    items = {}
    for item in dose.dataset.get("DVHSequence", []):
        refs = item.get("DVHReferencedROISequence", [])
        if len(refs) != 1 or "ReferencedROINumber" not in refs[0]:
            continue
        if str(refs[0].get("DVHROIContributionType", "INCLUDED")) != "INCLUDED":
            continue
        if str(item.get("DoseUnits", "GY")).upper() != "GY":
            continue
        items[int(refs[0].ReferencedROINumber)] = item
    return items


def _optional_float(item, keyword: str) -> float:
    value = item.get(keyword, None)
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def tps_cumulative_dvh(item, our_volume_cm3: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower edges Gy, upper edges Gy, cumulative volume cm^3 at >= each lower edge) of a DVH
    Sequence item (see the module docstring)."""
    data = np.asarray(item.DVHData, float).reshape(-1, 2)
    widths = data[:, 0] * float(item.get("DVHDoseScaling", 1.0) or 1.0)
    upper = np.cumsum(widths)
    lower = upper - widths
    volume = data[:, 1]
    if str(item.get("DVHType", "CUMULATIVE")).upper() == "DIFFERENTIAL":
        volume = np.cumsum(volume[::-1])[::-1]
    if str(item.get("DVHVolumeUnits", "CM3")).upper() == "PERCENT":
        volume = volume / 100.0 * our_volume_cm3
    return lower, upper, volume


def tps_metrics(item, our_volume_cm3: float) -> dict[str, float]:
    """:data:`METRICS` from a TPS DVH: ``Dx`` is the highest lower bin edge whose cumulative volume
    is at least ``x``; mean/min/max from DVHMeanDose/DVHMinimumDose/DVHMaximumDose when present,
    else from the bins."""
    lower, upper, volume = tps_cumulative_dvh(item, our_volume_cm3)
    total = float(volume[0]) if volume.size else math.nan

    def dose_at(v_cm3: float) -> float:
        reached = np.nonzero(volume >= v_cm3 * (1 - 1e-9))[0]
        return float(lower[reached[-1]]) if reached.size and v_cm3 <= total else math.nan

    in_bin = volume - np.append(volume[1:], 0.0)
    occupied = np.nonzero(in_bin > 0)[0]
    mean = _optional_float(item, "DVHMeanDose")
    if math.isnan(mean) and total > 0:
        mean = float(np.dot(in_bin, (lower + upper) / 2) / total)
    minimum = _optional_float(item, "DVHMinimumDose")
    if math.isnan(minimum) and occupied.size:
        minimum = float(lower[occupied[0]])
    maximum = _optional_float(item, "DVHMaximumDose")
    if math.isnan(maximum) and occupied.size:
        maximum = float(upper[occupied[-1]])
    return {
        "volume_cm3": total,
        "mean_gy": mean,
        "min_gy": minimum,
        "max_gy": maximum,
        "D98_gy": dose_at(0.98 * total),
        "D90_gy": dose_at(0.90 * total),
        "D50_gy": dose_at(0.50 * total),
        "D2cc_gy": dose_at(2.0),
        "D0.1cc_gy": dose_at(0.1),
    }


def check_dose_units(path: Path, dose: RtDose) -> None:
    """Refuse an RTDOSE whose grid is not in Gy (RELATIVE doses have no absolute metrics).

    Raises:
        InputFileError: naming the file and its Dose Units.
    """
    units = str(dose.dataset.get("DoseUnits", "") or "").upper()
    if units != "GY":
        raise InputFileError(f"{path}: DoseUnits is {units or 'absent'!r}, not GY; cannot evaluate")


def evaluate_dose(
    dose: RtDose,
    structure_set: StructureSet,
    slice_thickness_mm: float,
    *,
    prescription_gy: float | None = None,
    supersample: int = 8,
    where: str | Path = "RTSTRUCT",
) -> tuple[list[RoiDose], list[str]]:
    """iortopt's metrics (and the TPS's) of every ROI with volume inside the dose grid.

    Returns:
        (the ROIs evaluated, in RTSTRUCT order; the names of ROIs with no volume in the grid).

    Raises:
        InputFileError: naming ``where`` when no ROI has volume inside the dose grid.
    """
    voxel_cm3 = float(np.prod(dose.grid.spacing_xyz_mm)) / 1000.0
    tps_items = _tps_dvh_items(dose)
    evaluated, outside = [], []
    for roi in structure_set.rois:
        weights = rasterise_roi(roi.contours, dose.grid, slice_thickness_mm, supersample)
        if not np.any(weights > 0):
            outside.append(roi.name)
            continue
        metrics = structure_metrics(dose.dose_gy, weights, voxel_cm3, prescription_gy or 1.0)
        row = {k: float(metrics[k]) for k in METRICS}
        if prescription_gy:
            row["V100_percent"] = float(metrics["V100_percent"])
        item = tps_items.get(roi.number)
        try:
            tps = None if item is None else tps_metrics(item, row["volume_cm3"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputFileError(
                f"RTDOSE DVH Sequence: the DVH of ROI {roi.number} ({roi.name}) is malformed: {exc}"
            ) from None
        dvh = cumulative_dvh(dose.dose_gy, weights, voxel_cm3)
        cut = partly_outside_grid(roi.contours, dose.grid, slice_thickness_mm)
        evaluated.append(RoiDose(roi.name, roi.number, row, dvh, tps, cut))
    if not evaluated:
        raise InputFileError(
            f"{where}: no ROI has volume inside the dose grid (x, y, z from "
            f"{tuple(round(v, 1) for v in dose.grid.origin_xyz_mm)} mm, "
            f"{dose.grid.shape_zyx[::-1]} voxels); ROIs: {outside}"
        )
    return evaluated, outside


def metrics_rows(evaluated: list[RoiDose]) -> list[dict[str, object]]:
    """One CSV row per ROI: ``name``, ``roi_number``, our metrics, ``partly_outside_grid`` (the
    ROI's volume beyond the dose grid is not counted), and when any ROI has a TPS DVH
    ``tps_<metric>`` and ``diff_<metric>`` (ours - TPS) for each of :data:`METRICS`."""
    with_tps = any(r.tps is not None for r in evaluated)
    rows = []
    for r in evaluated:
        row: dict[str, object] = {"name": r.name, "roi_number": r.number, **r.metrics}
        row["partly_outside_grid"] = r.partly_outside
        if with_tps:
            for key in METRICS:
                tps = math.nan if r.tps is None else r.tps[key]
                row[f"tps_{key}"] = tps
                row[f"diff_{key}"] = r.metrics[key] - tps
        rows.append(row)
    return rows


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: str | Path, rows: list[dict[str, object]]) -> Path:
    """Write the rows (all with the same keys) as CSV; undefined values are empty cells."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([_cell(v) for v in row.values()])
    return path


def write_evaluation(
    folder: str | Path,
    evaluated: list[RoiDose],
    prescription_gy: float | None,
    title: str,
) -> None:
    """``metrics.csv`` and ``dvh.png`` into ``folder`` (a temporary folder, published whole)."""
    from iortopt.outputs.figures import plot_dvh

    folder = Path(folder)
    write_metrics_csv(folder / METRICS_CSV, metrics_rows(evaluated))
    plot_dvh({r.name: r.dvh for r in evaluated}, folder / DVH_PNG, prescription_gy, title)
