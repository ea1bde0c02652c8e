"""``[output] dicom = true`` writes dicom/RTDOSE.dcm for every modality on every case kind it runs
on (HDR on the built-in flap and on DICOM, X-ray on the built-in breast, electron on the built-in
ELIOT case): the grid and dose of plan.zarr, the mandatory RT Dose attributes, DVHs only with an
RTSTRUCT, and for X-ray (no RTPLAN) the plan's parameters in the description fields."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pydicom
import pytest
import zarr

from iortopt import pipeline
from iortopt.cases.case import Case, Structure
from iortopt.config import load_config, parse_config
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.dicom.rtdose import lo_text, lt_text, read_rtdose
from iortopt.dicom.study import StudyRef, new_study
from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study
from iortopt.evaluation.dvh import cumulative_dvh
from iortopt.grid import Grid
from iortopt.modalities.stage_settings import dicom_plan_info
from iortopt.outputs.dicom_export import xray_writer
from test_dicom_export import RTDOSE_MANDATORY  # the RT Dose IOD attribute list, kept once

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _with_dicom(doc: dict) -> dict:
    doc.setdefault("output", {})["dicom"] = True
    return doc


def hdr_flap_config(tmp_path: Path):
    doc = load_config().model_dump(mode="python")
    doc["case"]["flap"].update(spacing_mm=4.0, supersampling=2, n_catheters=4)
    doc["optimizer"]["max_iterations"] = 5
    return parse_config(_with_dicom(doc))


def hdr_dicom_config(tmp_path: Path):
    study = write_synthetic_study(tmp_path / "study")
    doc = tomllib.loads(example_config_toml(study))
    doc["case"]["dicom"]["spacing_mm"] = 4.0
    doc["optimizer"]["max_iterations"] = 5
    return parse_config(_with_dicom(doc))


def xray_config(tmp_path: Path):
    doc = load_config(CONFIGS / "breast_xray.toml").model_dump(mode="python")
    doc["xray"].update(catalogue_diameters_cm=[3.5, 4.0], optimise_position=False)
    return parse_config(_with_dicom(doc))


def electron_config(tmp_path: Path):
    doc = load_config(CONFIGS / "breast_electron.toml").model_dump(mode="python")
    doc["case"]["eliot"]["spacing_mm"] = 4.0
    doc["electron"].update(
        energies_mev=[9.0], cone_diameters_cm=[6.0, 7.0], bevels_deg=[0.0], optimise_pose=False
    )
    return parse_config(_with_dicom(doc))


CASES = {
    "hdr_builtin_flap": hdr_flap_config,
    "hdr_dicom": hdr_dicom_config,
    "xray_builtin_breast": xray_config,
    "electron_builtin_eliot": electron_config,
}


@pytest.fixture(scope="module", params=list(CASES))
def planned(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = CASES[request.param](tmp)
    out = tmp / "out"
    result = pipeline.execute(pipeline.prepare(cfg, jnp.float32), out)
    return request.param, cfg, result, out


def test_rtdose_grid_dose_and_mandatory_attributes(planned):
    name, cfg, result, out = planned
    dose = read_rtdose(out / "dicom" / "RTDOSE.dcm")
    ds = dose.dataset
    assert [k for k in RTDOSE_MANDATORY if k not in ds] == []
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL"
    assert ds.BitsAllocated == 32 and ds.PixelRepresentation == 0
    assert ds.DoseSummationType == ("BRACHY" if cfg.plan.modality == "hdr_flap" else "PLAN")
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    computed = np.asarray(root["dose_gy"][...], np.float64)
    # the RTDOSE is in DICOM patient coordinates: the plan's dose mapped by the case's frame
    # (the ELIOT phantom lies HFS with its "up" anterior; the other cases are already in LPS)
    case = getattr(result, "case", None) or result.prepared.case
    frame = PatientFrame.from_info(case.info)
    computed, grid = frame.dose_to_patient(computed, Grid.from_attrs(root["dose_gy"].attrs["grid"]))
    assert dose.grid.to_attrs() == grid.to_attrs()  # shape, spacing, origin
    assert dose.grid.shape_zyx == computed.shape
    step = float(ds.DoseGridScaling)
    assert step == dose.scaling_gy and 0 < step < computed.max() / 4e9
    assert np.max(np.abs(dose.dose_gy - computed)) <= 0.5 * step * (1 + 1e-6)
    # DVHs exactly when the case came with an RTSTRUCT
    from_dicom = cfg.case.kind == "dicom"
    assert ("DVHSequence" in ds) == from_dicom
    assert ("ReferencedStructureSetSequence" in ds) == from_dicom
    written = sorted(p.name for p in (out / "dicom").iterdir())
    expected = (
        ["RTDOSE.dcm"] if cfg.plan.modality == "xray_sphere" else ["RTDOSE.dcm", "RTPLAN.dcm"]
    )
    assert written == expected, name
    if from_dicom:
        ct = pydicom.dcmread(sorted(Path(cfg.case.dicom.ct_folder).iterdir())[0])
        assert ds.StudyInstanceUID == ct.StudyInstanceUID
        assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    else:
        assert ds.PatientName == "iortopt^phantom"


@pytest.mark.parametrize("planned", ["xray_builtin_breast"], indirect=True)
def test_xray_rtdose_description_matches_summary(planned):
    name, cfg, result, out = planned
    ds = read_rtdose(out / "dicom" / "RTDOSE.dcm").dataset
    s = json.loads((out / "summary.json").read_text())
    chosen = s["chosen_applicator"]
    diameter, time_min = chosen["diameter_cm"], chosen["time_min"]
    centre = ", ".join(f"{v:.2f}" for v in chosen["centre_mm"])
    comments = str(ds.ImageComments).splitlines()
    fields = dict(line.split(": ", 1) for line in comments[1:])
    assert fields["applicator"].startswith(f"{diameter:g} cm sphere")
    assert s["beam"] in fields["applicator"]
    assert fields["centre_mm"] == centre
    assert float(fields["time_min"]) == pytest.approx(time_min, abs=5e-4)
    assert fields["formalism"] == s["dosimetry_formalism"] != ""
    assert fields["prescription"].startswith(f"{s['prescription_gy']:g} Gy at the applicator")
    assert s["prescription_mode"] == "surface" and s["prescription_depth_mm"] is None
    assert (
        f"{diameter:g} cm" in ds.SeriesDescription and f"{time_min:.1f} min" in ds.SeriesDescription
    )
    assert ds.DoseComment == f"{diameter:g} cm sphere, {time_min:.2f} min, at ({centre}) mm"
    assert any("no RTPLAN" in note for note in s["notes"])
    # the Referenced RT Plan Sequence (type 1C for summation PLAN) names a plan not written
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID


def test_description_text_is_valid_lo_and_lt():
    long = "TARGIT \\ Zeiss\tV4.0 " + "x" * 100
    lo = lo_text(long)
    assert (
        len(lo) == 64 and "\\" not in lo and "\t" not in lo and lo.startswith("TARGIT / Zeiss V4")
    )
    assert lt_text("a\nb\x07c\n" + "y" * 20000).startswith("a\r\nbc\r\n")
    assert len(lt_text("y" * 20000)) == 10240


def test_xray_writer_on_a_dicom_case_adds_dvhs(tmp_path):
    """X-ray runs on the built-in breast only today; on a case with an RTSTRUCT (study in
    ``case.info["dicom"]``) its RTDOSE references the RTSTRUCT and has the DVHs, as HDR's."""
    grid = Grid((3, 4, 5), (2.0, 2.0, 2.0), (-4.0, -3.0, -2.0))
    occupancy = np.zeros(grid.shape_zyx, np.float32)
    occupancy[1] = 1.0
    study = new_study("ct")
    study = StudyRef(**(study.to_dict() | {"rtstruct_uid": "1.2.3.4", "roi_numbers": {"CTV": 7}}))
    case = Case("ct", grid, (Structure("CTV", "target", occupancy),), {"dicom": study.to_dict()})
    dose = np.full(grid.shape_zyx, 5.0, np.float32)
    dvhs = {"CTV": cumulative_dvh(dose, occupancy, grid.voxel_volume_cm3)}
    cfg = parse_config(
        {"plan": {"modality": "xray_sphere"}, "case": {"kind": "builtin_breast"},
         "prescription": {"structure": "CTV"}}
    )  # fmt: skip
    chosen = {"diameter_cm": 3.5, "time_min": 21.25, "centre_mm": [1.0, -2.0, 0.5]}
    xray_writer(
        dicom_plan_info(cfg),
        case,
        dose,
        dvhs,
        chosen,
        "beam",
        "TARGIT (Zeiss V4.0)",
        prescription_mode=cfg.xray.prescription_mode,
        prescription_depth_mm=cfg.xray.prescription_depth_mm,
    )(tmp_path)
    ds = read_rtdose(tmp_path / "dicom" / "RTDOSE.dcm").dataset
    assert ds.StudyInstanceUID == study.study_uid
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    (item,) = ds.DVHSequence
    assert item.DVHReferencedROISequence[0].ReferencedROINumber == 7
    assert float(item.DVHMaximumDose) == pytest.approx(5.0)
    assert ds.DoseComment == "3.5 cm sphere, 21.25 min, at (1.00, -2.00, 0.50) mm"
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["RTDOSE.dcm"]
