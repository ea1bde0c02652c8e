"""RTPLAN: HDR brachytherapy (flap) plans and electron IORT plans.

Brachy (:func:`build_brachy_plan`): technique CONTACT, type HDR, one source (model, isotope,
half-life, reference air kerma rate = S_K in U, since 1 U = 1 uGy m^2 h^-1, with its reference
date and time), one application setup of type HAM_FLAB, one channel per catheter with dwells.
Each dwell is a pair of control points at the same position (relative position = arc length from
the catheter tip, 3-D position, source orientation towards the tip) whose cumulative time weights
differ by its dwell time: weights are in seconds, so Final Cumulative Time Weight = Channel Total
Time. Dwells are listed from the tip backwards. Each channel names its source applicator (the
conditional attributes of the RT Brachy Application Setups module): ID ``catheter N``, type
FLEXIBLE (flap catheters), length = the dwell span from the tip, (last index + 1) x step (iortopt
does not model the connector: the afterloader's own channel length governs delivery), and an
empty Referenced ROI Number (the catheters are not ROIs of the RTSTRUCT).

Conformance: the RTPLANs pass dciodvfy (dicom3tools 2022) without errors
(tests/test_dicom_conformance.py). Its one remaining warning, on brachy plans, is that it does
not know the defined term HAM_FLAB (the standard's Application Setup Type of flap applicators).
On plans of an imported study it may also warn about what that study left empty (e.g. Study ID).

Electron (:func:`build_electron_plan`): one STATIC ELECTRON beam with an INTRAOPERATIVE circular
applicator (cone diameter, bevel in the description), the nominal energy and the MU as beam
meterset, and a patient setup with the Patient Position. The beam axis, the cone end and the
cone's toe are given in patient coordinates (LPS); the control point carries the IEC 61217
gantry, beam limiting device (collimator) and patient support (couch) angles of that axis for
that position (:mod:`iortopt.dicom.beam_geometry`: X_b along the toe, couch in (-90, 90] deg),
every rotation direction NONE, and the Isocenter Position = the centre of the cone's end face,
where the beam axis leaves the applicator. :func:`read_electron_beam` reads them back. The beam
axis and the cone end are also given in the beam description.

Plans are written UNAPPROVED: they are for review in a clinical system, never for delivery as is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from iortopt.dicom.beam_geometry import (
    BeamAngles,
    angles_from_axis,
    axis_from_angles,
    collimator_x_from_angles,
)
from iortopt.dicom.files import ds_list, ds_text, new_file_dataset, read_dataset
from iortopt.dicom.study import StudyRef, add_common_modules
from iortopt.dicom.uids import RT_PLAN, RT_STRUCTURE_SET
from iortopt.errors import InputFileError


@dataclass(frozen=True)
class BrachySource:
    """The source as the RTPLAN describes it."""

    model: str
    description: str
    isotope: str
    half_life_days: float
    active_length_mm: float
    reference_air_kerma_rate_U: float
    reference_datetime: dt.datetime


@dataclass(frozen=True, eq=False)
class BrachyDwells:
    """Dwells of a plan: positions (M, 3) mm, axes (M, 3) towards the tip, times (M,) s,
    0-based catheter and index (from the tip)."""

    positions_mm: np.ndarray
    axes: np.ndarray
    times_s: np.ndarray
    catheter: np.ndarray
    index: np.ndarray


def _drop_image_dates(ds: Dataset) -> None:
    """Content Date/Time belong to the General Image module, which the RT Plan IOD lacks."""
    for keyword in ("ContentDate", "ContentTime"):
        if keyword in ds:
            delattr(ds, keyword)


def _general_plan(ds: Dataset, study: StudyRef, label: str, description: str) -> None:
    now = dt.datetime.now()
    ds.RTPlanLabel = label[:16]
    ds.RTPlanName = label[:64]
    ds.RTPlanDescription = description[:1024]
    ds.RTPlanDate = now.strftime("%Y%m%d")
    ds.RTPlanTime = now.strftime("%H%M%S")
    if study.rtstruct_uid:
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET
        ref.ReferencedSOPInstanceUID = study.rtstruct_uid
        ds.ReferencedStructureSetSequence = Sequence([ref])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    ds.ApprovalStatus = "UNAPPROVED"


def _prescription(ds: Dataset, prescription_gy: float, structure: str) -> None:
    ref = Dataset()
    ref.DoseReferenceNumber = 1
    ref.DoseReferenceStructureType = "SITE"
    ref.DoseReferenceDescription = structure[:64]
    ref.DoseReferenceType = "TARGET"
    ref.TargetPrescriptionDose = ds_text(prescription_gy)
    ds.DoseReferenceSequence = Sequence([ref])


def build_brachy_plan(
    study: StudyRef,
    plan_uid: str,
    dwells: BrachyDwells,
    source: BrachySource,
    *,
    air_kerma_strength_U: float,
    step_mm: float,
    label: str,
    prescription_gy: float,
    prescription_structure: str,
    n_fractions: int = 1,
    description: str = "",
) -> Dataset:
    """The brachy RTPLAN dataset (see the module docstring).

    Args:
        air_kerma_strength_U: S_K at treatment (for Total Reference Air Kerma).
        step_mm: dwell step (relative positions are ``index * step_mm``).
    """
    ds = new_file_dataset(RT_PLAN, plan_uid)
    add_common_modules(ds, study, "RTPLAN", f"iortopt HDR flap plan {label}")
    _drop_image_dates(ds)
    _general_plan(ds, study, label, description)
    _prescription(ds, prescription_gy, prescription_structure)
    fraction = Dataset()
    fraction.FractionGroupNumber = 1
    fraction.NumberOfFractionsPlanned = int(n_fractions)
    fraction.NumberOfBeams = 0
    fraction.NumberOfBrachyApplicationSetups = 1
    setup_ref = Dataset()
    setup_ref.ReferencedBrachyApplicationSetupNumber = 1
    setup_ref.BrachyApplicationSetupDose = ds_text(prescription_gy)
    fraction.ReferencedBrachyApplicationSetupSequence = Sequence([setup_ref])
    ds.FractionGroupSequence = Sequence([fraction])

    ds.BrachyTreatmentTechnique = "CONTACT"
    ds.BrachyTreatmentType = "HDR"
    machine = Dataset()
    machine.TreatmentMachineName = "afterloader"
    machine.Manufacturer = ""
    ds.TreatmentMachineSequence = Sequence([machine])
    src = Dataset()
    src.SourceNumber = 1
    src.SourceType = "LINE"
    src.SourceModelID = source.model[:16]
    src.SourceDescription = source.description[:64]
    src.SourceIsotopeName = source.isotope
    src.SourceIsotopeHalfLife = ds_text(source.half_life_days)
    src.ActiveSourceLength = ds_text(source.active_length_mm)
    src.SourceStrengthUnits = "AIR_KERMA_RATE"
    src.ReferenceAirKermaRate = ds_text(source.reference_air_kerma_rate_U)
    src.SourceStrengthReferenceDate = source.reference_datetime.strftime("%Y%m%d")
    src.SourceStrengthReferenceTime = source.reference_datetime.strftime("%H%M%S")
    ds.SourceSequence = Sequence([src])

    times = np.asarray(dwells.times_s, float)
    setup = Dataset()
    setup.ApplicationSetupType = "HAM_FLAB"
    setup.ApplicationSetupNumber = 1
    setup.ApplicationSetupName = "flap"
    setup.TotalReferenceAirKerma = ds_text(air_kerma_strength_U * times.sum() / 3600.0)
    channels = Sequence()
    for catheter in np.unique(dwells.catheter):
        rows = np.flatnonzero(dwells.catheter == catheter)
        rows = rows[np.argsort(dwells.index[rows])]
        channels.append(_channel(int(catheter), rows, dwells, step_mm))
    setup.ChannelSequence = channels
    ds.ApplicationSetupSequence = Sequence([setup])
    return ds


def _channel(catheter: int, rows: np.ndarray, dwells: BrachyDwells, step_mm: float) -> Dataset:
    times = np.asarray(dwells.times_s, float)[rows]
    cumulative = np.concatenate([[0.0], np.cumsum(times)])
    weights = [ds_text(v) for v in cumulative]
    channel = Dataset()
    channel.ChannelNumber = catheter + 1
    channel.ChannelLength = ""
    channel.ChannelTotalTime = weights[-1]
    channel.SourceMovementType = "STEPWISE"
    channel.ReferencedSourceNumber = 1
    channel.SourceApplicatorNumber = catheter + 1
    channel.SourceApplicatorID = f"catheter {catheter + 1}"[:16]
    channel.SourceApplicatorType = "FLEXIBLE"
    channel.SourceApplicatorLength = ds_text((int(dwells.index[rows].max()) + 1) * step_mm)
    channel.SourceApplicatorStepSize = ds_text(step_mm)
    channel.ReferencedROINumber = None
    channel.TransferTubeNumber = ""
    channel.NumberOfControlPoints = 2 * len(rows)
    channel.FinalCumulativeTimeWeight = weights[-1]
    points = Sequence()
    for k, row in enumerate(rows):
        for j in (0, 1):
            cp = Dataset()
            cp.ControlPointIndex = 2 * k + j
            cp.ControlPointRelativePosition = ds_text(dwells.index[row] * step_mm)
            cp.ControlPoint3DPosition = ds_list(dwells.positions_mm[row])
            cp.ControlPointOrientation = [float(v) for v in dwells.axes[row]]
            cp.CumulativeTimeWeight = weights[k + j]
            points.append(cp)
    channel.BrachyControlPointSequence = points
    return channel


def read_brachy_dwells(path: str | Path) -> BrachyDwells:
    """Dwells of a stepwise brachy RTPLAN (every application setup and channel).

    A dwell is a pair of control points at one position; its time is the weight difference
    times Channel Total Time / Final Cumulative Time Weight. Catheter = Channel Number - 1;
    index = relative position / step (step from the channel, else 1 mm).
    """
    path = Path(path)
    ds = read_dataset(path)
    if "ApplicationSetupSequence" not in ds:
        raise InputFileError(f"{path}: not a brachytherapy RTPLAN (no Application Setup Sequence)")
    positions, axes, times, catheter, index = [], [], [], [], []
    for setup in ds.ApplicationSetupSequence:
        for channel in setup.get("ChannelSequence", []):
            total = float(channel.ChannelTotalTime)
            final = float(channel.get("FinalCumulativeTimeWeight", 0) or 0)
            step = float(channel.get("SourceApplicatorStepSize", 1.0) or 1.0)
            cps = list(channel.BrachyControlPointSequence)
            for first, second in zip(cps[0::2], cps[1::2], strict=False):
                w0, w1 = float(first.CumulativeTimeWeight), float(second.CumulativeTimeWeight)
                positions.append([float(v) for v in first.ControlPoint3DPosition])
                axes.append([float(v) for v in first.get("ControlPointOrientation", [0, 0, 1])])
                times.append((w1 - w0) * total / final if final > 0 else 0.0)
                catheter.append(int(channel.ChannelNumber) - 1)
                index.append(int(round(float(first.ControlPointRelativePosition) / step)))
    return BrachyDwells(
        np.asarray(positions, float).reshape(-1, 3),
        np.asarray(axes, float).reshape(-1, 3),
        np.asarray(times, float),
        np.asarray(catheter, np.int64),
        np.asarray(index, np.int64),
    )


def build_electron_plan(
    study: StudyRef,
    plan_uid: str,
    *,
    label: str,
    energy_mev: float,
    cone_diameter_mm: float,
    bevel_deg: float,
    mu: float,
    cone_end_mm,
    beam_axis,
    machine: str,
    prescription_gy: float,
    prescription_structure: str,
    toe_direction=None,
    patient_position: str = "HFS",
    n_fractions: int = 1,
    description: str = "",
) -> Dataset:
    """The electron IORT RTPLAN dataset (see the module docstring); ``cone_end_mm``,
    ``beam_axis`` (from the source towards the patient) and ``toe_direction`` in LPS."""
    angles = angles_from_axis(beam_axis, toe_direction, patient_position)
    ds = new_file_dataset(RT_PLAN, plan_uid)
    add_common_modules(ds, study, "RTPLAN", f"iortopt electron IORT plan {label}")
    _drop_image_dates(ds)
    _general_plan(ds, study, label, description)
    _prescription(ds, prescription_gy, prescription_structure)
    fraction = Dataset()
    fraction.FractionGroupNumber = 1
    fraction.NumberOfFractionsPlanned = int(n_fractions)
    fraction.NumberOfBeams = 1
    fraction.NumberOfBrachyApplicationSetups = 0
    beam_ref = Dataset()
    beam_ref.ReferencedBeamNumber = 1
    beam_ref.BeamMeterset = ds_text(mu)
    fraction.ReferencedBeamSequence = Sequence([beam_ref])
    ds.FractionGroupSequence = Sequence([fraction])
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = patient_position
    ds.PatientSetupSequence = Sequence([setup])

    axis = np.asarray(beam_axis, float)
    axis = axis / np.linalg.norm(axis)
    end = np.asarray(cone_end_mm, float)
    beam = Dataset()
    beam.BeamNumber = 1
    beam.BeamName = "IOERT"
    beam.BeamDescription = (
        f"cone {cone_diameter_mm:g} mm, bevel {bevel_deg:g} deg; beam axis "
        f"({', '.join(f'{v:.4f}' for v in axis)}); cone end at "
        f"({', '.join(f'{v:.1f}' for v in end)}) mm"
    )[:1024]
    beam.BeamType = "STATIC"
    beam.RadiationType = "ELECTRON"
    beam.TreatmentMachineName = (machine or "IOERT")[:16]
    beam.PrimaryDosimeterUnit = "MU"
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.ReferencedPatientSetupNumber = 1
    half = cone_diameter_mm / 2
    devices = Sequence()
    for kind in ("X", "Y"):
        device = Dataset()
        device.RTBeamLimitingDeviceType = kind
        device.NumberOfLeafJawPairs = 1
        devices.append(device)
    beam.BeamLimitingDeviceSequence = devices
    applicator = Dataset()
    applicator.ApplicatorID = f"IORT{cone_diameter_mm / 10:g}cm{bevel_deg:g}deg"[:16]
    applicator.ApplicatorType = "INTRAOPERATIVE"
    applicator.ApplicatorDescription = f"cone {cone_diameter_mm:g} mm, bevel {bevel_deg:g} deg"
    geometry = Dataset()
    geometry.ApplicatorApertureShape = "SYM_CIRCULAR"
    geometry.ApplicatorOpening = float(cone_diameter_mm)
    applicator.ApplicatorGeometrySequence = Sequence([geometry])
    beam.ApplicatorSequence = Sequence([applicator])
    beam.NumberOfWedges = 0
    beam.NumberOfCompensators = 0
    beam.NumberOfBoli = 0
    beam.NumberOfBlocks = 0
    beam.FinalCumulativeMetersetWeight = ds_text(1.0)
    beam.NumberOfControlPoints = 2
    first, last = Dataset(), Dataset()
    first.ControlPointIndex = 0
    first.NominalBeamEnergy = ds_text(energy_mev)
    first.GantryAngle = ds_text(angles.gantry_deg)
    first.GantryRotationDirection = "NONE"
    first.BeamLimitingDeviceAngle = ds_text(angles.collimator_deg)
    first.BeamLimitingDeviceRotationDirection = "NONE"
    first.PatientSupportAngle = ds_text(angles.couch_deg)
    first.PatientSupportRotationDirection = "NONE"
    first.TableTopEccentricAngle = ds_text(0.0)
    first.TableTopEccentricRotationDirection = "NONE"
    first.TableTopVerticalPosition = ""
    first.TableTopLongitudinalPosition = ""
    first.TableTopLateralPosition = ""
    first.IsocenterPosition = ds_list(end)
    positions = Sequence()
    for kind in ("X", "Y"):
        jaw = Dataset()
        jaw.RTBeamLimitingDeviceType = kind
        jaw.LeafJawPositions = ds_list([-half, half])
        positions.append(jaw)
    first.BeamLimitingDevicePositionSequence = positions
    first.CumulativeMetersetWeight = ds_text(0.0)
    last.ControlPointIndex = 1
    last.CumulativeMetersetWeight = ds_text(1.0)
    beam.ControlPointSequence = Sequence([first, last])
    ds.BeamSequence = Sequence([beam])
    return ds


@dataclass(frozen=True, eq=False)
class ElectronBeamGeometry:
    """The first beam's geometry as an RTPLAN states it: the angles, the Patient Position, the
    Isocenter Position (mm, LPS) and the beam axis and X_b they imply (LPS)."""

    angles: BeamAngles
    patient_position: str
    isocenter_mm: np.ndarray
    beam_axis: np.ndarray
    collimator_x: np.ndarray


def read_electron_beam(path: str | Path) -> ElectronBeamGeometry:
    """Angles, Patient Position and isocentre of the first beam of an external-beam RTPLAN.

    Raises:
        InputFileError: not an external-beam RTPLAN, a missing angle, or a Patient Position the
            angles cannot be interpreted for.
    """
    path = Path(path)
    ds = read_dataset(path)
    if "BeamSequence" not in ds or not ds.BeamSequence:
        raise InputFileError(f"{path}: not an external-beam RTPLAN (no Beam Sequence)")
    beam = ds.BeamSequence[0]
    points = beam.get("ControlPointSequence") or []
    if not points:
        raise InputFileError(f"{path}: beam 1 has no Control Point Sequence")
    first = points[0]
    values = {}
    for keyword in ("GantryAngle", "BeamLimitingDeviceAngle", "PatientSupportAngle"):
        if keyword not in first or first.get(keyword) in (None, ""):
            raise InputFileError(f"{path}: control point 0 of beam 1 has no {keyword}")
        values[keyword] = float(first.get(keyword))
    setups = {int(s.PatientSetupNumber): s for s in ds.get("PatientSetupSequence", [])}
    setup = setups.get(int(beam.get("ReferencedPatientSetupNumber", 1) or 1))
    position = str(setup.get("PatientPosition", "") if setup is not None else "") or "HFS"
    angles = BeamAngles(
        values["GantryAngle"], values["BeamLimitingDeviceAngle"], values["PatientSupportAngle"]
    )
    try:
        axis = axis_from_angles(angles.gantry_deg, angles.couch_deg, position)
        x_b = collimator_x_from_angles(
            angles.gantry_deg, angles.collimator_deg, angles.couch_deg, position
        )
    except ValueError as exc:
        raise InputFileError(f"{path}: PatientSetupSequence PatientPosition: {exc}") from None
    iso = np.asarray([float(v) for v in first.get("IsocenterPosition", [0.0, 0.0, 0.0])])
    return ElectronBeamGeometry(angles, position, iso, axis, x_b)
