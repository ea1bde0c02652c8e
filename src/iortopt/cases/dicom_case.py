"""The ``[case.dicom]`` config section -> a planning Case (grid, structures, HU).

    import_case(section)          CT series + RTSTRUCT -> Case on the dose grid
    flap_case_from_config(config) the Case and the flap applicator of an HDR plan
    flap_case_from_rtplan(config) the same with the catheters and dwells of a clinical RTPLAN

The dose grid is the CT grid (``spacing_mm = "ct"``) or a regular grid of the given spacing over
the CT, cropped (``crop``) to the mapped ROIs and the catheters plus ``margin_mm``. Structures are
the mapped ROIs rasterised as fractional occupancies; ``case.hu`` is the HU on the dose grid
(trilinear from the CT) and ``case.hu_calibration`` the table of ``hu_calibration`` (checked
before the CT is read). A ROI mapped with role ``body`` is the body mask (else HU above
``iortopt.cases.case.BODY_THRESHOLD_HU``). ``case.info`` holds the study reference for export
(``dicom``, see :class:`iortopt.dicom.study.StudyRef`), the input paths and the volumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from iortopt.cases.case import Case, Structure
from iortopt.cases.hu_calibration import load_calibration
from iortopt.config import DicomCaseSection, PlanConfig
from iortopt.dicom.ct import CtSeries, read_ct_series, scan_folder
from iortopt.dicom.rtstruct import StructureSet, rasterise_roi, read_structure_set
from iortopt.dicom.study import StudyRef
from iortopt.dicom.uids import RT_STRUCTURE_SET
from iortopt.errors import ConfigError, InputFileError
from iortopt.grid import Grid


def find_rtstruct(folder: Path, headers, frame_uid: str) -> Path:
    """The one RTSTRUCT in the scanned folder that refers to ``frame_uid``."""
    found = []
    for path, ds in headers:
        if str(ds.SOPClassUID) != RT_STRUCTURE_SET and ds.get("Modality") != "RTSTRUCT":
            continue
        frames = {
            str(f.get("FrameOfReferenceUID", ""))
            for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        }
        if frame_uid in frames or not frames:
            found.append(path)
    if len(found) != 1:
        what = "no RTSTRUCT" if not found else f"{len(found)} RTSTRUCTs ({[str(p) for p in found]})"
        raise InputFileError(
            f"{folder}: {what} of the CT's frame of reference found there; "
            "name the file with case.dicom.rtstruct (iortopt dicom import --rtstruct)"
        )
    return found[0]


def dose_grid(ct_grid: Grid, spacing_mm, crop: bool, margin_mm: float, points_mm) -> Grid:
    """The planning grid inside the CT extent (see the module docstring)."""
    ct_lo = np.asarray(ct_grid.origin_xyz_mm)
    ct_step = np.asarray(ct_grid.spacing_xyz_mm)
    ct_hi = ct_lo + (np.asarray(ct_grid.shape_zyx[::-1]) - 1) * ct_step
    lo, hi = ct_lo, ct_hi
    if crop and len(points_mm):
        lo = np.maximum(ct_lo, points_mm.min(axis=0) - margin_mm)
        hi = np.minimum(ct_hi, points_mm.max(axis=0) + margin_mm)
        if np.any(hi < lo):
            raise InputFileError(
                "the mapped ROIs (and catheters) lie outside the CT volume "
                f"({np.round(ct_lo, 1).tolist()} to {np.round(ct_hi, 1).tolist()} mm)"
            )
    if spacing_mm == "ct":
        first = np.floor((lo - ct_lo) / ct_step + 1e-6).astype(int)
        last = np.ceil((hi - ct_lo) / ct_step - 1e-6).astype(int)
        return Grid(tuple((last - first + 1)[::-1]), tuple(ct_step), tuple(ct_lo + first * ct_step))
    step = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    counts = np.maximum(np.ceil((hi - lo) / step - 1e-6).astype(int) + 1, 1)
    centre = (lo + hi) / 2
    origin = centre - (counts - 1) * step / 2
    return Grid(tuple(counts[::-1]), tuple(step), tuple(origin))


def resample_hu(ct: CtSeries, grid: Grid) -> np.ndarray:
    """HU on ``grid`` (trilinear; nearest CT value beyond the CT's outer voxel centres)."""
    index = ct.grid.mm_to_index(grid.points_mm())
    values = ndimage.map_coordinates(ct.hu, index.T, order=1, mode="nearest")
    return values.reshape(grid.shape_zyx).astype(np.float32)


def _check_structure_names(section: DicomCaseSection) -> None:
    for name in section.structures:
        if "/" in name or not name.strip():
            raise ConfigError(
                f"case.dicom.structures: structure name {name!r} must be non-empty without '/'"
            )


def import_case(section: DicomCaseSection, name: str = "dicom", extra_points_mm=None) -> Case:
    """Read, validate and rasterise the study named by a ``[case.dicom]`` section.

    Args:
        extra_points_mm: (N, 3) points the cropped grid must also cover (the catheters).

    Raises:
        InputFileError / ConfigError: naming the file or the config field at fault.
    """
    t0 = time.perf_counter()
    _check_structure_names(section)
    calibration = load_calibration(section.hu_calibration)
    folder = Path(section.ct_folder)
    headers = scan_folder(folder)
    ct = read_ct_series(folder, section.series_uid, headers)
    rs_path = (
        Path(section.rtstruct)
        if section.rtstruct
        else find_rtstruct(folder, headers, ct.study.frame_of_reference_uid)
    )
    structure_set = read_structure_set(rs_path)
    rois = _mapped_rois(section, structure_set, ct)
    points = [c for roi in rois.values() for c in roi.contours]
    if extra_points_mm is not None and len(extra_points_mm):
        points.append(np.asarray(extra_points_mm, float).reshape(-1, 3))
    grid = dose_grid(
        ct.grid, section.spacing_mm, section.crop, section.margin_mm, np.concatenate(points)
    )
    structures = []
    for structure_name, mapping in section.structures.items():
        occupancy = rasterise_roi(
            rois[structure_name].contours, grid, ct.slice_spacing_mm, section.supersample
        )
        if not occupancy.any():
            raise InputFileError(
                f"{rs_path}: ROI {rois[structure_name].name!r} (case.dicom.structures."
                f"{structure_name}) has no voxel on the dose grid"
            )
        structures.append(Structure(structure_name, mapping.role, occupancy))
    study = StudyRef(
        study_uid=ct.study.study_uid,
        frame_of_reference_uid=ct.study.frame_of_reference_uid,
        patient=ct.study.patient,
        patient_position=ct.study.patient_position,
        rtstruct_uid=structure_set.sop_instance_uid,
        roi_numbers={k: roi.number for k, roi in rois.items()},
    )
    info = {
        "source": "dicom",
        "ct_folder": str(folder),
        "rtstruct": str(rs_path),
        "series_uid": ct.series_uid,
        "ct_grid": ct.grid.to_attrs(),
        "rois": {k: roi.name for k, roi in rois.items()},
        "volumes_cm3": {s.name: s.volume_cm3(grid) for s in structures},
        "dicom": study.to_dict(),
        "hu_calibration": calibration.origin,
    }
    hu = resample_hu(ct, grid)
    info["import_s"] = time.perf_counter() - t0
    return Case(name, grid, tuple(structures), info, hu=hu, hu_calibration=calibration)


def _mapped_rois(section: DicomCaseSection, structure_set: StructureSet, ct: CtSeries) -> dict:
    rois = {}
    for structure_name, mapping in section.structures.items():
        where = f"case.dicom.structures.{structure_name}.roi"
        roi = structure_set.roi(mapping.roi, where)
        frame = ct.study.frame_of_reference_uid
        if roi.frame_of_reference_uid and frame and roi.frame_of_reference_uid != frame:
            raise InputFileError(
                f"{structure_set.path}: ROI {roi.name!r} is in frame of reference "
                f"{roi.frame_of_reference_uid}, the CT series in {frame}: mixed frames of "
                "reference (was the RTSTRUCT drawn on another scan?)"
            )
        if not roi.contours:
            raise InputFileError(
                f"{structure_set.path}: ROI {roi.name!r} ({where}) has no closed planar "
                f"contours ({roi.n_ignored_contours} point/open contours ignored)"
            )
        rois[structure_name] = roi
    return rois


def flap_case_from_config(cfg: PlanConfig):
    """(Case, FlapApplicator) of an HDR flap plan on a DICOM case (``applicator.catheters_mm``)."""
    from iortopt.cases.catheters import FlapApplicator

    catheters = [np.asarray(c, float) for c in cfg.applicator.catheters_mm or []]
    try:
        applicator = FlapApplicator(tuple(catheters))
    except ValueError as exc:
        raise ConfigError(f"applicator.catheters_mm: {exc}") from None
    case = import_case(cfg.case.dicom, cfg.plan.name, np.concatenate(catheters))
    return case, applicator


@dataclass(frozen=True, eq=False)
class ClinicalPlan:
    """The dwell times of a clinical RTPLAN (``applicator.from_rtplan``), one per dwell of its
    :class:`~iortopt.cases.catheters.PlannedApplicator`: seconds of one fraction (all pulses),
    with the S_K (U) its TPS computed them for."""

    path: str
    times_s: np.ndarray
    sk_U: float
    source_model: str
    warnings: tuple[str, ...]


def flap_case_from_rtplan(cfg: PlanConfig):
    """(Case, PlannedApplicator, ClinicalPlan) of an HDR flap plan whose catheters and dwell
    positions come from ``applicator.from_rtplan`` (read by
    :func:`iortopt.dicom.rtplan_reader.read_brachy_plan`, with ``case.dicom.rtstruct`` for the
    applicator ROIs). Each channel becomes a catheter through its dwells (first dwell = tip); the
    plan's own dwell axes are kept.

    Raises:
        ConfigError: the plan's source model is not ``source.model``'s.
        InputFileError: the RTPLAN cannot be read (naming the file and attribute).
    """
    from iortopt.cases.catheters import Dwells, PlannedApplicator
    from iortopt.dicom.rtplan_reader import model_of, read_brachy_plan
    from iortopt.physics.sources import load_source

    where = "applicator.from_rtplan"
    try:
        plan = read_brachy_plan(cfg.applicator.from_rtplan, cfg.case.dicom.rtstruct)
    except InputFileError as exc:
        raise InputFileError(f"{where}: {exc}") from None
    model, data = model_of(plan.source), load_source(cfg.source.model)
    if model is not None and model.casefold() != data.name.casefold():
        raise ConfigError(
            f"source.model: {cfg.source.model!r} is model {data.name!r}, but the RTPLAN "
            f"{plan.path} was planned for {plan.source.model!r} ({model})"
        )
    catheters, catheter, index = [], [], []
    for number, channel in enumerate(c for c in plan.channels if len(c.times_s)):
        points = channel.positions_mm
        if len(np.unique(np.round(points, 6), axis=0)) < 2:  # one position: a 1 mm stub behind it
            points = np.stack([points[0], points[0] - channel.axes[0]])
        catheters.append(_without_repeats(points))
        catheter.append(np.full(len(channel.times_s), number))
        index.append(np.arange(len(channel.times_s)))
    planned = Dwells(plan.positions_mm, plan.axes, np.concatenate(catheter), np.concatenate(index))
    try:
        applicator = PlannedApplicator(tuple(catheters), planned)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    case = import_case(cfg.case.dicom, cfg.plan.name, plan.positions_mm)
    times = plan.times_s * plan.pulses
    clinical = ClinicalPlan(plan.path, times, plan.sk_tps_U, plan.source.model, plan.warnings)
    return case, applicator, clinical


def _without_repeats(points: np.ndarray) -> np.ndarray:
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    return points[keep]
