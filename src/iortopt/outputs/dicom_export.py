"""The DICOM files of a plan (``[output] dicom = true``) inside the output folder:

    HDR flap       dicom/RTPLAN.dcm (brachy, HAM_FLAB setup) + dicom/RTDOSE.dcm (BRACHY)
    electron       dicom/RTPLAN.dcm (one beam, INTRAOPERATIVE applicator) + dicom/RTDOSE.dcm (PLAN)
    50 kV X-ray    dicom/RTDOSE.dcm (PLAN) only: iortopt has no RT Plan IOD for a spherical
                   intraoperative X-ray applicator, so applicator, centre, time, dosimetry
                   formalism and prescription are written into the RTDOSE's description fields
                   (Series Description, Dose Comment, Image Comments); its Referenced RT Plan
                   Sequence (required for summation PLAN) names a plan UID that is not written.

The writers returned here are called by ``write_plan_outputs`` on its temporary folder before it
is renamed, so the DICOM files are part of the same atomic write as the other outputs. Patient,
study and frame of reference come from the imported CT (``case.info["dicom"]``); a built-in
phantom gets a fresh study, no RTSTRUCT reference and therefore no DVH sequence. The plan's
names and prescription come as a :class:`DicomPlanInfo` (this stage never sees the plan config).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iortopt.cases.case import Case

# pydicom-based modules are imported inside the writers: plans without DICOM output never load
# them.

SUBFOLDER = "dicom"
RTPLAN_NAME = "RTPLAN.dcm"
RTDOSE_NAME = "RTDOSE.dcm"


@dataclass(frozen=True)
class DicomPlanInfo:
    """The plan's label, description and prescription as the DICOM files state them."""

    plan_name: str
    description: str
    prescription_gy: float
    prescription_structure: str
    n_fractions: int


def study_of(case: Case):
    """The imported study of a DICOM case (StudyRef), else a fresh one for the phantom."""
    from iortopt.dicom.study import StudyRef, new_study

    ref = case.info.get("dicom")
    return StudyRef.from_dict(ref) if ref else new_study(case.name)


def dvh_entries(case: Case, dose_gy: np.ndarray, dvhs: dict, study) -> list:
    """A DVH entry (``DvhEntry``) for every structure that came from an RTSTRUCT ROI."""
    from iortopt.dicom.rtdose import DvhEntry

    entries = []
    for s in case.structures:
        if s.name not in study.roi_numbers or s.name not in dvhs:
            continue
        w = s.occupancy.astype(np.float64)
        inside = w > 0
        d = dose_gy[inside].astype(np.float64)
        entries.append(
            DvhEntry(
                roi_number=study.roi_numbers[s.name],
                dose_gy=dvhs[s.name].dose_gy,
                volume_cm3=dvhs[s.name].volume_cm3,
                min_gy=float(d.min()) if d.size else 0.0,
                max_gy=float(d.max()) if d.size else 0.0,
                mean_gy=float(np.sum(d * w[inside]) / w[inside].sum()) if d.size else 0.0,
            )
        )
    return entries


def _as_datetime(value) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time())


def hdr_writer(
    plan_info: DicomPlanInfo,
    case: Case,
    dose_gy: np.ndarray,
    dvhs: dict,
    dwells,
    times_s: np.ndarray,
    source,
    air_kerma_strength_U: float,
    *,
    step_mm: float,
    calibration=None,
    calibration_air_kerma_strength_U: float | None = None,
) -> Callable[[Path], None]:
    """Writer of the brachy RTPLAN (HAM_FLAB setup) and its RTDOSE (summation BRACHY).

    The source's reference air kerma rate is ``calibration_air_kerma_strength_U`` (the configured
    S_K) at the ``calibration`` date (``source.calibration``) when given, else the S_K used
    (``air_kerma_strength_U``, at treatment) dated now. ``step_mm``: the dwell step.
    """

    def write(folder: Path) -> None:
        from iortopt.dicom.files import save_atomic
        from iortopt.dicom.rtdose import write_rtdose
        from iortopt.dicom.rtplan import BrachyDwells, BrachySource, build_brachy_plan
        from iortopt.dicom.uids import new_uid

        out = Path(folder) / SUBFOLDER
        out.mkdir(parents=True, exist_ok=True)
        study, plan_uid = study_of(case), new_uid()
        if calibration is not None:
            reference_U = calibration_air_kerma_strength_U
            reference_time = _as_datetime(calibration)
        else:
            reference_U, reference_time = air_kerma_strength_U, dt.datetime.now()
        brachy_source = BrachySource(
            model=source.name,
            description=f"TG-43 data {source.key}",
            isotope=source.isotope,
            half_life_days=source.half_life_days,
            active_length_mm=10.0 * source.active_length_cm,
            reference_air_kerma_rate_U=reference_U,
            reference_datetime=reference_time,
        )
        plan_dwells = BrachyDwells(
            dwells.positions_mm, dwells.axes, np.asarray(times_s), dwells.catheter, dwells.index
        )
        plan = build_brachy_plan(
            study,
            plan_uid,
            plan_dwells,
            brachy_source,
            air_kerma_strength_U=air_kerma_strength_U,
            step_mm=step_mm,
            label=plan_info.plan_name,
            prescription_gy=plan_info.prescription_gy,
            prescription_structure=plan_info.prescription_structure,
            n_fractions=plan_info.n_fractions,
            description=plan_info.description,
        )
        save_atomic(plan, out / RTPLAN_NAME)
        write_rtdose(
            out / RTDOSE_NAME,
            dose_gy,
            case.grid,
            study,
            plan_uid=plan_uid,
            summation_type="BRACHY",
            brachy_setup_number=1,
            dvhs=dvh_entries(case, dose_gy, dvhs, study),
            description=f"iortopt dose {plan_info.plan_name}",
        )

    return write


def electron_beam_geometry(case: Case, chosen: dict) -> dict:
    """The chosen cone's beam in the patient frame (``case.info["patient_frame"]``, else the
    imported study's; :class:`iortopt.dicom.patient_frame.PatientFrame`): beam axis, cone end
    (= the RTPLAN's Isocenter Position) and toe in LPS, and the IEC 61217 gantry, collimator
    (X_b along the toe) and couch angles the RTPLAN states.

    Raises:
        ValueError: a malformed frame or an unsupported Patient Position.
    """
    from iortopt.dicom.beam_geometry import angles_from_axis
    from iortopt.dicom.patient_frame import PatientFrame

    frame = PatientFrame.from_info(case.info)
    axis = frame.vectors_to_patient(chosen["cone_axis"])
    toe = frame.vectors_to_patient(chosen["cone_toe"]) if "cone_toe" in chosen else None
    angles = angles_from_axis(axis, toe, frame.patient_position)
    return {
        "patient_position": frame.patient_position,
        "frame": "DICOM patient coordinates LPS (mm); IEC 61217 angles in degrees",
        "case_to_patient": frame.to_dict(),
        "beam_axis_patient": axis.tolist(),
        "cone_end_patient_mm": frame.points_to_patient(chosen["cone_end_mm"]).tolist(),
        "cone_toe_patient": None if toe is None else toe.tolist(),
        "gantry_angle_deg": angles.gantry_deg,
        "collimator_angle_deg": angles.collimator_deg,
        "couch_angle_deg": angles.couch_deg,
        "isocenter": "the centre of the cone's end face, on the beam axis (cone_end_patient_mm)",
    }


def electron_writer(
    plan_info: DicomPlanInfo,
    case: Case,
    dose_gy: np.ndarray,
    dvhs: dict,
    chosen: dict,
    machine: str,
) -> Callable[[Path], None]:
    """Writer of the electron RTPLAN (INTRAOPERATIVE applicator) and its RTDOSE (PLAN), both in
    the patient frame (:func:`electron_beam_geometry`; the dose grid permuted to it)."""

    def write(folder: Path) -> None:
        from iortopt.dicom.files import save_atomic
        from iortopt.dicom.patient_frame import PatientFrame
        from iortopt.dicom.rtdose import write_rtdose
        from iortopt.dicom.rtplan import build_electron_plan
        from iortopt.dicom.uids import new_uid

        out = Path(folder) / SUBFOLDER
        out.mkdir(parents=True, exist_ok=True)
        study, plan_uid = study_of(case), new_uid()
        beam = electron_beam_geometry(case, chosen)
        plan = build_electron_plan(
            study,
            plan_uid,
            label=plan_info.plan_name,
            energy_mev=float(chosen["energy_MeV"]),
            cone_diameter_mm=10.0 * float(chosen["diameter_cm"]),
            bevel_deg=float(chosen["bevel_deg"]),
            mu=float(chosen["mu"]),
            cone_end_mm=beam["cone_end_patient_mm"],
            beam_axis=beam["beam_axis_patient"],
            toe_direction=beam["cone_toe_patient"],
            patient_position=beam["patient_position"],
            machine=machine,
            prescription_gy=plan_info.prescription_gy,
            prescription_structure=plan_info.prescription_structure,
            n_fractions=plan_info.n_fractions,
            description=plan_info.description,
        )
        save_atomic(plan, out / RTPLAN_NAME)
        patient_dose, patient_grid = PatientFrame.from_info(case.info).dose_to_patient(
            dose_gy, case.grid
        )
        write_rtdose(
            out / RTDOSE_NAME,
            patient_dose,
            patient_grid,
            study,
            plan_uid=plan_uid,
            summation_type="PLAN",
            dvhs=dvh_entries(case, dose_gy, dvhs, study),
            description=f"iortopt dose {plan_info.plan_name}",
        )

    return write


#: In summary notes and the README: why an X-ray plan has an RTDOSE but no RTPLAN.
XRAY_NO_RTPLAN_NOTE = (
    "DICOM: dicom/RTDOSE.dcm only, no RTPLAN (iortopt has no RT Plan IOD for a 50 kV "
    "intraoperative X-ray applicator); applicator, centre, time, formalism and prescription are "
    "in the RTDOSE's Series Description, Dose Comment and Image Comments; its Referenced RT Plan "
    "Sequence names a plan UID that is not written"
)


def _prescription_text(
    plan_info: DicomPlanInfo, prescription_mode: str, prescription_depth_mm: float
) -> str:
    where = (
        "the applicator surface"
        if prescription_mode == "surface"
        else f"{prescription_depth_mm:g} mm depth"
    )
    n = plan_info.n_fractions
    fractions = "fraction" if n == 1 else "fractions"
    return (
        f"{plan_info.prescription_gy:g} Gy at {where} "
        f"({plan_info.prescription_structure}, {n} {fractions})"
    )


def xray_dose_text(
    plan_info: DicomPlanInfo,
    chosen: dict,
    beam_name: str,
    formalism: str,
    prescription_mode: str,
    prescription_depth_mm: float,
) -> dict:
    """The RTDOSE description fields of an X-ray plan: ``description`` (Series Description),
    ``dose_comment`` (Dose Comment, 64 characters) and ``image_comments`` (Image Comments, one
    ``key: value`` line per field, with the keys of summary.json). ``prescription_mode``:
    ``surface`` or ``depth`` (at ``prescription_depth_mm``)."""
    diameter_cm, time_min = float(chosen["diameter_cm"]), float(chosen["time_min"])
    centre = ", ".join(f"{float(v):.2f}" for v in chosen["centre_mm"])
    lines = [
        f"iortopt 50 kV X-ray sphere plan {plan_info.plan_name} "
        "(no RTPLAN: applicator parameters here)",
        f"applicator: {diameter_cm:g} cm sphere (radius {5.0 * diameter_cm:g} mm), "
        f"beam {beam_name}",
        f"centre_mm: {centre}",
        f"time_min: {time_min:.3f}",
        f"formalism: {formalism}",
        f"prescription: {_prescription_text(plan_info, prescription_mode, prescription_depth_mm)}",
    ]
    return {
        "description": (
            f"iortopt X-ray {diameter_cm:g} cm {time_min:.1f} min {plan_info.plan_name}"
        ),
        "dose_comment": f"{diameter_cm:g} cm sphere, {time_min:.2f} min, at ({centre}) mm",
        "image_comments": "\n".join(lines),
    }


def xray_writer(
    plan_info: DicomPlanInfo,
    case: Case,
    dose_gy: np.ndarray,
    dvhs: dict,
    chosen: dict,
    beam_name: str,
    formalism: str,
    *,
    prescription_mode: str,
    prescription_depth_mm: float,
) -> Callable[[Path], None]:
    """Writer of the X-ray RTDOSE (summation PLAN, no RTPLAN; see the module docstring)."""

    def write(folder: Path) -> None:
        from iortopt.dicom.rtdose import write_rtdose
        from iortopt.dicom.uids import new_uid

        out = Path(folder) / SUBFOLDER
        out.mkdir(parents=True, exist_ok=True)
        study = study_of(case)
        write_rtdose(
            out / RTDOSE_NAME,
            dose_gy,
            case.grid,
            study,
            # Kept although no RTPLAN is written: the Referenced RT Plan Sequence is type 1C on
            # the Dose Summation Type (required for PLAN), not on a plan being present; without
            # it dciodvfy reports "Missing attribute Type 1C ... ReferencedRTPlanSequence".
            plan_uid=new_uid(),
            summation_type="PLAN",
            dvhs=dvh_entries(case, dose_gy, dvhs, study),
            **xray_dose_text(
                plan_info, chosen, beam_name, formalism, prescription_mode, prescription_depth_mm
            ),
        )

    return write
