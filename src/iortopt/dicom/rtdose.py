"""RTDOSE: a dose grid (Gy) as 32-bit unsigned integers times DoseGridScaling, with DVHs.

Written: one multi-frame object, frames in increasing z, ImageOrientationPatient [1,0,0,0,1,0],
GridFrameOffsetVector relative to the first frame (first value 0), DoseUnits GY, DoseType
PHYSICAL, the quantisation step ``DoseGridScaling`` = max dose / ~4.29e9 (so the stored dose is
within half a step of the computed one), optionally an RT DVH sequence (cumulative, cm^3) whose
items reference the RTSTRUCT's ROI numbers, and optionally free-text description fields: Series
Description and Dose Comment (3004,0006) (LO: at most 64 characters, no backslash) and Image
Comments (0020,4000) of the General Image module (LT: up to 10240 characters, several lines), used
where no RTPLAN carries the plan's parameters (50 kV X-ray). Read: any axial RTDOSE pydicom can
decode (relative or absolute offsets, one or many frames, either byte order, RLE, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from iortopt.dicom.ct import axial_signs, regular_spacing_mm
from iortopt.dicom.files import ds_list, ds_text, new_file_dataset, read_dataset, save_atomic
from iortopt.dicom.study import StudyRef, add_common_modules
from iortopt.dicom.uids import RT_DOSE, RT_PLAN, RT_STRUCTURE_SET, new_uid
from iortopt.errors import InputFileError
from iortopt.grid import Grid

#: Largest stored value aimed at (a little below 2**32 - 1, so DS rounding cannot overflow).
MAX_STORED_TARGET = 4.29e9
GRID_FRAME_OFFSET_VECTOR = 0x3004000C
LO_MAX_CHARS = 64
LT_MAX_CHARS = 10240


def lo_text(text: str) -> str:
    """``text`` as a valid Long String: one line, no backslash (the LO value delimiter), at most
    64 characters."""
    one_line = " ".join(str(text).replace("\\", "/").split())
    return one_line[:LO_MAX_CHARS]


def lt_text(text: str) -> str:
    """``text`` as a valid Long Text: printable characters and line breaks, at most 10240."""
    lines = ("".join(c for c in line if c.isprintable()) for line in str(text).splitlines())
    return "\r\n".join(lines)[:LT_MAX_CHARS]


@dataclass(frozen=True)
class DvhEntry:
    """One cumulative DVH for the RT DVH sequence: bins ``dose_gy`` (equally spaced from 0),
    ``volume_cm3`` at or above each bin, and the RTSTRUCT ROI number it belongs to."""

    roi_number: int
    dose_gy: np.ndarray
    volume_cm3: np.ndarray
    min_gy: float
    max_gy: float
    mean_gy: float


def dose_grid_scaling(max_dose_gy: float) -> float:
    """The quantisation step (Gy) as it will be read back from its Decimal String."""
    if not (np.isfinite(max_dose_gy) and max_dose_gy > 0):
        return float(ds_text(1e-6))
    return float(ds_text(max_dose_gy / MAX_STORED_TARGET))


def _dvh_item(entry: DvhEntry) -> Dataset:
    item = Dataset()
    roi = Dataset()
    roi.ReferencedROINumber = int(entry.roi_number)
    roi.DVHROIContributionType = "INCLUDED"
    item.DVHReferencedROISequence = Sequence([roi])
    item.DVHType = "CUMULATIVE"
    item.DoseUnits = "GY"
    item.DoseType = "PHYSICAL"
    item.DVHDoseScaling = 1.0
    item.DVHVolumeUnits = "CM3"
    bins = np.asarray(entry.dose_gy, float)
    width = float(bins[1] - bins[0]) if bins.size > 1 else 1.0
    data = np.empty(2 * bins.size)
    data[0::2] = width
    data[1::2] = entry.volume_cm3
    item.DVHNumberOfBins = int(bins.size)
    item.DVHData = ds_list(data)
    item.DVHMinimumDose = ds_text(entry.min_gy)
    item.DVHMaximumDose = ds_text(entry.max_gy)
    item.DVHMeanDose = ds_text(entry.mean_gy)
    return item


def build_rtdose(
    dose_gy: np.ndarray,
    grid: Grid,
    study: StudyRef,
    *,
    plan_uid: str,
    summation_type: str = "PLAN",
    brachy_setup_number: int | None = None,
    dvhs: list[DvhEntry] | None = None,
    description: str = "iortopt dose",
    dose_comment: str = "",
    image_comments: str = "",
) -> Dataset:
    """The RTDOSE dataset (see the module docstring); ``dvhs`` need ``study.rtstruct_uid``.

    ``description`` is the Series Description; ``dose_comment`` (Dose Comment) and
    ``image_comments`` (Image Comments) are written when not empty.
    """
    dose = np.asarray(dose_gy, np.float64)
    if dose.shape != grid.shape_zyx:
        raise ValueError(f"dose shape {dose.shape} does not match grid {grid.shape_zyx}")
    ds = new_file_dataset(RT_DOSE, new_uid())
    add_common_modules(ds, study, "RTDOSE", lo_text(description))
    if dose_comment:
        ds.DoseComment = lo_text(dose_comment)
    if image_comments:
        ds.ImageComments = lt_text(image_comments)
    nz, ny, nx = grid.shape_zyx
    dx, dy, dz = grid.spacing_xyz_mm
    ds.ImagePositionPatient = ds_list(grid.origin_xyz_mm)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ds_list([dy, dx])
    ds.SliceThickness = ds_text(dz)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_VECTOR
    ds.GridFrameOffsetVector = ds_list(np.arange(nz) * dz)
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation_type
    scaling = dose_grid_scaling(float(np.max(dose, initial=0.0)))
    ds.DoseGridScaling = ds_text(scaling)
    stored = np.clip(np.rint(np.maximum(dose, 0.0) / scaling), 0, 2**32 - 1).astype("<u4")
    ds.PixelData = stored.tobytes()
    plan = Dataset()
    plan.ReferencedSOPClassUID = RT_PLAN
    plan.ReferencedSOPInstanceUID = plan_uid
    if summation_type == "BRACHY":
        fraction = Dataset()
        fraction.ReferencedFractionGroupNumber = 1
        setup = Dataset()
        setup.ReferencedBrachyApplicationSetupNumber = int(brachy_setup_number or 1)
        fraction.ReferencedBrachyApplicationSetupSequence = Sequence([setup])
        plan.ReferencedFractionGroupSequence = Sequence([fraction])
    ds.ReferencedRTPlanSequence = Sequence([plan])
    if dvhs:
        if not study.rtstruct_uid:
            raise ValueError("DVHs in an RTDOSE must reference an RTSTRUCT (study.rtstruct_uid)")
        structure_set = Dataset()
        structure_set.ReferencedSOPClassUID = RT_STRUCTURE_SET
        structure_set.ReferencedSOPInstanceUID = study.rtstruct_uid
        ds.ReferencedStructureSetSequence = Sequence([structure_set])
        ds.DVHSequence = Sequence([_dvh_item(e) for e in dvhs])
    return ds


def write_rtdose(path: str | Path, dose_gy: np.ndarray, grid: Grid, study: StudyRef, **kw):
    """Build (:func:`build_rtdose`) and write atomically; returns the dataset."""
    ds = build_rtdose(dose_gy, grid, study, **kw)
    save_atomic(ds, path)
    return ds


@dataclass(frozen=True, eq=False)
class RtDose:
    """A dose grid read from an RTDOSE: ``dose_gy`` (nz, ny, nx) on ``grid`` (x, y, z
    increasing), the quantisation step and the dataset itself."""

    dose_gy: np.ndarray
    grid: Grid
    scaling_gy: float
    dataset: Dataset


def read_rtdose(path: str | Path) -> RtDose:
    """Read an RTDOSE (see the module docstring for what is accepted).

    Raises:
        InputFileError: not an RTDOSE, no pixel data, non-axial, or irregular frame offsets.
    """
    path = Path(path)
    ds = read_dataset(path)
    if str(ds.SOPClassUID) != RT_DOSE and ds.get("Modality") != "RTDOSE":
        raise InputFileError(f"{path}: not an RTDOSE (Modality {ds.get('Modality')!r})")
    if "PixelData" not in ds:
        raise InputFileError(f"{path}: RTDOSE without a dose grid (no PixelData)")
    try:
        stored = np.asarray(ds.pixel_array, np.float64)
    except Exception as exc:
        raise InputFileError(f"{path}: cannot decode the dose grid: {exc}") from None
    if stored.ndim == 2:
        stored = stored[None]
    n_frames = stored.shape[0]
    scaling = float(ds.get("DoseGridScaling", 1.0) or 1.0)
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    sign_x, sign_y = axial_signs(orientation, str(path))
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
    offsets = np.atleast_1d(np.asarray(ds.get("GridFrameOffsetVector", [0.0]), float))
    if offsets.size < n_frames:
        raise InputFileError(
            f"{path}: GridFrameOffsetVector has {offsets.size} values for {n_frames} frames"
        )
    offsets = offsets[:n_frames]
    if offsets[0] != 0:  # absolute z positions (allowed by the standard)
        offsets = offsets - origin[2]
    if n_frames > 1:
        order = np.argsort(offsets)
        stored, offsets = stored[order], offsets[order]
        dz = regular_spacing_mm(offsets, f"{path}: GridFrameOffsetVector")
    else:
        dz = float(ds.get("SliceThickness", 0) or 0) or 1.0
    dy, dx = (float(v) for v in ds.PixelSpacing)
    ny, nx = stored.shape[1:]
    x0, y0, z0 = origin[0], origin[1], origin[2] + offsets[0]
    if sign_x < 0:
        stored, x0 = stored[:, :, ::-1], x0 - (nx - 1) * dx
    if sign_y < 0:
        stored, y0 = stored[:, ::-1, :], y0 - (ny - 1) * dy
    grid = Grid((n_frames, ny, nx), (dx, dy, dz), (x0, y0, z0))
    return RtDose(np.ascontiguousarray(stored * scaling), grid, scaling, ds)
