"""Write a voxel phantom (grid, HU, fractional-occupancy structures) as a CT series + RTSTRUCT.

    write_phantom_study(folder, grid, hu, structures)   folder/CT/CT_*.dcm and folder/RS.dcm

Also the writers shared with :mod:`iortopt.dicom.synthetic`: the patient / study / frame of
reference modules (:func:`set_patient_study`), one axial CT slice (:func:`ct_slice_dataset`) and
the RTSTRUCT (:func:`write_rtstruct`).

The CT has one axial slice per z-plane of the grid, the pixel centres at the voxel centres, the
HU rounded to integers (stored unsigned with Rescale Intercept -1024). Each structure becomes one
ROI named like it: on every slice, the closed polygons of an isoline of its occupancy (bilinear
between voxel centres, ``contourpy``) whose level is chosen per slice so that the polygons hold
the slice's share of the structure's volume (:func:`plane_contours`; the 0.5-isoline alone
would drop thin layers and slices the structure only partly fills in z); nested polygons are
holes by the even-odd rule, as :func:`iortopt.dicom.rtstruct.rasterise_roi` reads them. A
structure that fills a slice only partly in z but all over in x and y (a flat plateau of
occupancy) cannot shrink to its share and comes back larger there.

The grid axes are taken as patient LPS, unless ``patient_frame`` (see
:class:`iortopt.dicom.patient_frame.PatientFrame`) declares how the phantom lies: then the arrays
are turned into the patient frame first (the case's axes x, y, z become LPS axes).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import contourpy
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from iortopt.dicom.files import ds_list, new_file_dataset, save_atomic
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.dicom.uids import CT_IMAGE, RT_STRUCTURE_SET, new_uid
from iortopt.grid import Grid

#: DICOM RT ROI Interpreted Type of each planning role.
INTERPRETED_TYPES = {
    "target": "CTV",
    "oar": "ORGAN",
    "cavity": "CAVITY",
    "body": "EXTERNAL",
    "other": "",
}
CT_INTERCEPT = -1024
ISO_LEVEL = 0.5
#: Bounds of the per-plane isoline level (:func:`plane_contours`) and its bisection steps.
MIN_LEVEL, MAX_LEVEL = 0.02, 0.98
LEVEL_BISECTIONS = 14


@dataclass(frozen=True)
class Patient:
    """The made-up patient and study a written study carries."""

    name: str = "Synthetic^Phantom"
    patient_id: str = "IORTOPT-SYNTH-001"
    study_description: str = "iortopt synthetic study"


@dataclass(frozen=True)
class StudyIds:
    """UIDs shared by the CT series and the RTSTRUCT of one study, and its date."""

    study_uid: str = field(default_factory=new_uid)
    frame_uid: str = field(default_factory=new_uid)
    series_uid: str = field(default_factory=new_uid)
    date: str = field(default_factory=lambda: dt.date.today().strftime("%Y%m%d"))


@dataclass(frozen=True)
class PhantomStudy:
    """Paths of a written phantom study and the grid its CT is on (patient LPS)."""

    folder: Path
    ct_folder: Path
    rtstruct: Path
    ct_grid: Grid
    roles: dict[str, str]
    study_uid: str
    frame_of_reference_uid: str


def set_patient_study(ds: Dataset, ids: StudyIds, patient: Patient = Patient()) -> None:
    """Patient, general study, frame of reference and equipment attributes."""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids.study_uid
    ds.StudyDate = ids.date
    ds.StudyTime = "090000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = patient.study_description
    ds.FrameOfReferenceUID = ids.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "iortopt synthetic"


def ct_slice_dataset(
    plane_hu: np.ndarray,
    ids: StudyIds,
    patient: Patient,
    *,
    sop_uid: str,
    instance_number: int,
    position_mm,
    orientation,
    pixel_mm: tuple[float, float],
    slice_mm: float,
    patient_position: str = "HFS",
    description: str = "",
) -> Dataset:
    """One axial CT image; ``plane_hu`` (rows, columns), ``pixel_mm`` = (row, column) spacing."""
    ds = new_file_dataset(CT_IMAGE, sop_uid)
    set_patient_study(ds, ids, patient)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = ids.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = description
    ds.PatientPosition = patient_position
    ds.Laterality = None  # type 2C; a phantom has no paired body part: empty
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = None  # type 2 (CT Image): empty, nothing was acquired
    ds.KVP = None  # type 2: empty, not a scanner image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = ds_list(position_mm)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = ds_list(pixel_mm)
    ds.SliceThickness = slice_mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane_hu.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = CT_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    stored = np.clip(np.rint(plane_hu) - CT_INTERCEPT, 0, 65535)
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    return ds


def write_rtstruct(
    path: Path,
    contours: dict[str, list[np.ndarray]],
    interpreted_types: dict[str, str],
    z_slices: np.ndarray,
    slice_uids: list[str],
    ids: StudyIds,
    patient: Patient = Patient(),
    label: str = "synthetic",
) -> None:
    """An RTSTRUCT of closed planar ``contours`` (name -> (K, 3) polygons on the CT slices)."""
    ds = new_file_dataset(RT_STRUCTURE_SET, new_uid())
    set_patient_study(ds, ids, patient)
    # Frame of Reference UID stays: the RT Structure Set IOD has the Frame of Reference module
    # (dciodvfy reports it missing otherwise); the ROIs also name it.
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.StructureSetLabel = label
    ds.StructureSetDate = ids.date
    ds.StructureSetTime = "090000"
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(slice_uids, ids)])
    rois, roi_contours, observations = Sequence(), Sequence(), Sequence()
    slice_of = {round(float(z), 3): uid for z, uid in zip(z_slices, slice_uids, strict=True)}
    colours = ([255, 0, 0], [255, 255, 0], [200, 200, 200], [0, 255, 0], [0, 128, 255])
    for number, (name, polygons) in enumerate(contours.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ids.frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        items = Sequence()
        for polygon in polygons:
            item = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID = CT_IMAGE
            image.ReferencedSOPInstanceUID = slice_of[round(float(polygon[0, 2]), 3)]
            item.ContourImageSequence = Sequence([image])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(polygon)
            item.ContourData = ds_list(polygon.ravel())
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = colours[(number - 1) % len(colours)]
        roi_contour.ContourSequence = items
        roi_contour.ReferencedROINumber = number
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = interpreted_types[name]
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    save_atomic(ds, path)


def _referenced_frame(slice_uids: list[str], ids: StudyIds) -> Dataset:
    images = Sequence()
    for uid in slice_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE
        item.ReferencedSOPInstanceUID = uid
        images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = ids.series_uid
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study.ReferencedSOPInstanceUID = ids.study_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ids.frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _polygons(generator, level: float, z_mm: float) -> list[np.ndarray]:
    out = []
    for line in generator.lines(level):
        points = np.asarray(line, np.float64)
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        if len(points) >= 3:
            out.append(np.column_stack([points, np.full(len(points), z_mm)]))
    return out


def polygons_area_mm2(polygons: list[np.ndarray]) -> float:
    """Area inside ``polygons`` (x, y of each), holes subtracted: contourpy orients the
    isolines of one level consistently, so the signed (shoelace) areas add up."""
    total = 0.0
    for p in polygons:
        x, y = p[:, 0], p[:, 1]
        total += 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return abs(total)


def plane_contours(
    occupancy_yx: np.ndarray, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: float
) -> list[np.ndarray]:
    """Closed (K, 3) polygons of one (ny, nx) occupancy plane (see the module docstring).

    The isoline level is chosen in [``MIN_LEVEL``, ``MAX_LEVEL``] by bisection so that the area
    inside equals the plane's occupied area (sum of the occupancy times the voxel area): at 0.5
    alone, a thin layer or a plane the structure covers only partly in z would lose its volume.
    The plane is padded with a ring of zeros a voxel outside, so that every isoline closes.
    """
    occupancy = np.asarray(occupancy_yx, np.float64)
    if not np.any(occupancy > MIN_LEVEL):
        return []
    dx, dy = x_mm[1] - x_mm[0], y_mm[1] - y_mm[0]
    xs = np.concatenate([[x_mm[0] - dx], x_mm, [x_mm[-1] + dx]])
    ys = np.concatenate([[y_mm[0] - dy], y_mm, [y_mm[-1] + dy]])
    generator = contourpy.contour_generator(
        xs, ys, np.pad(occupancy, 1), line_type=contourpy.LineType.Separate
    )
    wanted = float(occupancy.sum()) * abs(dx * dy)
    low, high = MIN_LEVEL, min(MAX_LEVEL, float(occupancy.max()) - 1e-6)
    best = _polygons(generator, ISO_LEVEL if low < ISO_LEVEL < high else low, z_mm)
    best_error = abs(polygons_area_mm2(best) - wanted)
    for _ in range(LEVEL_BISECTIONS):
        level = 0.5 * (low + high)
        polygons = _polygons(generator, level, z_mm)
        area = polygons_area_mm2(polygons)
        if abs(area - wanted) < best_error:
            best, best_error = polygons, abs(area - wanted)
        if area > wanted:
            low = level
        else:
            high = level
    return best


def structure_contours(occupancy_zyx: np.ndarray, grid: Grid) -> list[np.ndarray]:
    """The polygons of one structure on every z-plane of ``grid`` (patient LPS)."""
    x, y, z = grid.axis_mm("x"), grid.axis_mm("y"), grid.axis_mm("z")
    return [p for k in range(len(z)) for p in plane_contours(occupancy_zyx[k], x, y, float(z[k]))]


def write_phantom_study(
    folder: str | Path,
    grid: Grid,
    hu: np.ndarray,
    structures,
    *,
    patient_frame: PatientFrame | dict | None = None,
    patient: Patient = Patient("Phantom^Iortopt", "IORTOPT-PHANTOM", "iortopt phantom"),
    label: str = "phantom",
) -> PhantomStudy:
    """Write ``folder/CT/CT_*.dcm`` and ``folder/RS.dcm`` of a voxel phantom.

    Args:
        grid, hu: the case grid and its (nz, ny, nx) HU.
        structures: (name, role, occupancy (nz, ny, nx)) of every structure; role one of
            :data:`INTERPRETED_TYPES`.
        patient_frame: how the phantom lies (``case.info["patient_frame"]`` or a
            :class:`PatientFrame`); None = the grid axes are patient LPS, head first supine.
    """
    folder = Path(folder)
    frame = _frame(patient_frame)
    hu_lps, ct_grid = frame.dose_to_patient(np.asarray(hu), grid)
    structures = [
        (name, role, frame.dose_to_patient(np.asarray(occ), grid)[0])
        for name, role, occ in structures
    ]
    ct_folder = folder / "CT"
    ct_folder.mkdir(parents=True, exist_ok=True)
    ids = StudyIds()
    x, y, z = ct_grid.axis_mm("x"), ct_grid.axis_mm("y"), ct_grid.axis_mm("z")
    dx, dy, dz = ct_grid.spacing_xyz_mm
    slice_uids = []
    for k, z_mm in enumerate(z):
        uid = new_uid()
        slice_uids.append(uid)
        ds = ct_slice_dataset(
            hu_lps[k],
            ids,
            patient,
            sop_uid=uid,
            instance_number=k + 1,
            position_mm=[x[0], y[0], z_mm],
            orientation=[1, 0, 0, 0, 1, 0],
            pixel_mm=(dy, dx),
            slice_mm=dz,
            patient_position=frame.patient_position,
            description=f"{label} CT {frame.patient_position}",
        )
        save_atomic(ds, ct_folder / f"CT_{k:03d}.dcm")
    contours = {name: structure_contours(occ, ct_grid) for name, _, occ in structures}
    types = {name: INTERPRETED_TYPES[role] for name, role, _ in structures}
    rtstruct = folder / "RS.dcm"
    write_rtstruct(rtstruct, contours, types, z, slice_uids, ids, patient, label)
    return PhantomStudy(
        folder=folder,
        ct_folder=ct_folder,
        rtstruct=rtstruct,
        ct_grid=ct_grid,
        roles={name: role for name, role, _ in structures},
        study_uid=ids.study_uid,
        frame_of_reference_uid=ids.frame_uid,
    )


def _frame(patient_frame: PatientFrame | dict | None) -> PatientFrame:
    if patient_frame is None:
        return PatientFrame()
    if isinstance(patient_frame, PatientFrame):
        return patient_frame
    return PatientFrame.from_info({"patient_frame": patient_frame})
