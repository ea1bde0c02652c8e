"""DICOM export: a synthetic CT + RTSTRUCT through ``iortopt run`` to RTDOSE and RTPLAN, re-read
with pydicom (mandatory attributes, UIDs, dose within the quantisation step, dwell times, DVHs);
the electron and built-in-phantom writers; the ``iortopt dicom`` commands."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cases.case import Case, Structure
from iortopt.cases.eliot import PATIENT_FRAME
from iortopt.cases.flap import build_flap_case
from iortopt.cli import app
from iortopt.config import parse_config
from iortopt.dicom.beam_geometry import angle_between_deg
from iortopt.dicom.rtdose import dose_grid_scaling, read_rtdose, write_rtdose
from iortopt.dicom.rtplan import read_brachy_dwells, read_electron_beam
from iortopt.dicom.study import new_study
from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study
from iortopt.evaluation.dvh import cumulative_dvh
from iortopt.grid import Grid
from iortopt.modalities.stage_settings import dicom_plan_info
from iortopt.outputs.dicom_export import electron_writer, hdr_writer
from iortopt.physics.sources import load_source

runner = CliRunner()

COMMON = [
    "SOPClassUID", "SOPInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "Modality", "SeriesInstanceUID", "SeriesNumber", "OperatorsName",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer",
]  # fmt: skip
RTDOSE_MANDATORY = COMMON + [
    "InstanceNumber", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
    "SliceThickness", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData",
    "NumberOfFrames", "FrameIncrementPointer", "DoseUnits", "DoseType", "DoseSummationType",
    "GridFrameOffsetVector", "DoseGridScaling", "ReferencedRTPlanSequence",
]  # fmt: skip
RTPLAN_MANDATORY = COMMON + [
    "RTPlanLabel", "RTPlanDate", "RTPlanTime", "RTPlanGeometry", "FractionGroupSequence",
    "ApprovalStatus",
]  # fmt: skip
BRACHY_MANDATORY = [
    "BrachyTreatmentTechnique", "BrachyTreatmentType", "TreatmentMachineSequence",
    "SourceSequence", "ApplicationSetupSequence",
]  # fmt: skip
SOURCE_MANDATORY = [
    "SourceNumber", "SourceType", "SourceIsotopeName", "SourceIsotopeHalfLife",
    "ReferenceAirKermaRate", "SourceStrengthReferenceDate", "SourceStrengthReferenceTime",
]  # fmt: skip
CHANNEL_MANDATORY = [
    "ChannelNumber", "ChannelLength", "ChannelTotalTime", "SourceMovementType",
    "ReferencedSourceNumber", "NumberOfControlPoints", "FinalCumulativeTimeWeight",
    "BrachyControlPointSequence", "TransferTubeNumber",
]  # fmt: skip
BEAM_MANDATORY = [
    "BeamNumber", "BeamType", "RadiationType", "TreatmentMachineName",
    "BeamLimitingDeviceSequence", "NumberOfWedges", "NumberOfCompensators", "NumberOfBoli",
    "NumberOfBlocks", "NumberOfControlPoints", "ControlPointSequence",
    "FinalCumulativeMetersetWeight",
]  # fmt: skip


def _missing(ds, keywords) -> list[str]:
    return [k for k in keywords if k not in ds]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_run")
    study = write_synthetic_study(root / "study")
    text = example_config_toml(study).replace("max_iterations = 100", "max_iterations = 40")
    config = root / "plan.toml"
    config.write_text(text)
    out = root / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return study, out


def test_outputs_include_dicom(run_out):
    _, out = run_out
    assert sorted(p.name for p in out.iterdir()) == [
        ".iortopt-output.json", "dicom", "dose_slices.png", "dvh.png", "hot_spot_slices.png",
        "plan.zarr", "report.html", "summary.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["RTDOSE.dcm", "RTPLAN.dcm"]
    assert not list(out.parent.glob(".out.tmp-*"))


def test_report_names_the_patient_and_study_of_the_ct(run_out):
    study, out = run_out
    ct = pydicom.dcmread(sorted(study.ct_folder.iterdir())[0])
    html = (out / "report.html").read_text(encoding="utf-8")
    ident = html[html.index('id="identification"') : html.index('id="technique"')]
    for keyword in ("PatientID", "StudyInstanceUID"):
        assert ct[keyword].value and f"<td>{ct[keyword].value}</td>" in ident, keyword


def test_rtdose_attributes_uids_and_dose(run_out):
    study, out = run_out
    ds = pydicom.dcmread(out / "dicom" / "RTDOSE.dcm")
    assert _missing(ds, RTDOSE_MANDATORY) == []
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.BitsAllocated == 32 and ds.PixelRepresentation == 0
    assert ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL"
    assert ds.DoseSummationType == "BRACHY"
    assert float(ds.GridFrameOffsetVector[0]) == 0.0
    ct = pydicom.dcmread(sorted(study.ct_folder.iterdir())[0])
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert ds[keyword].value == ct[keyword].value, keyword
    assert ds.SeriesInstanceUID != ct.SeriesInstanceUID
    plan = pydicom.dcmread(out / "dicom" / "RTPLAN.dcm")
    ref = ds.ReferencedRTPlanSequence[0]
    assert ref.ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert ref.ReferencedFractionGroupSequence[0].ReferencedFractionGroupNumber == 1
    setup = ref.ReferencedFractionGroupSequence[0].ReferencedBrachyApplicationSetupSequence[0]
    assert setup.ReferencedBrachyApplicationSetupNumber == 1
    # dose re-read equals the computed dose within half a quantisation step
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    computed = np.asarray(root["dose_gy"][...], np.float64)
    dose = read_rtdose(out / "dicom" / "RTDOSE.dcm")
    assert dose.grid.shape_zyx == computed.shape
    assert dose.grid.to_attrs() == root["dose_gy"].attrs["grid"]
    step = float(ds.DoseGridScaling)
    assert np.max(np.abs(dose.dose_gy - computed)) <= 0.5 * step * (1 + 1e-6)
    assert step < computed.max() / 4e9


def test_rtdose_dvhs_reference_rtstruct_rois(run_out):
    study, out = run_out
    ds = pydicom.dcmread(out / "dicom" / "RTDOSE.dcm")
    rtstruct = pydicom.dcmread(study.rtstruct)
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rtstruct.SOPInstanceUID
    numbers = {r.ROIName: int(r.ROINumber) for r in rtstruct.StructureSetROISequence}
    summary = json.loads((out / "summary.json").read_text())
    by_roi = {}
    for item in ds.DVHSequence:
        assert item.DVHType == "CUMULATIVE" and item.DVHVolumeUnits == "CM3"
        data = np.asarray(item.DVHData, float)
        assert data.size == 2 * item.DVHNumberOfBins
        by_roi[int(item.DVHReferencedROISequence[0].ReferencedROINumber)] = (item, data)
    assert set(by_roi) == {numbers["GTV"], numbers["Ureter"], numbers["Sacrum"]}
    for name, roi in (("CTV", "GTV"), ("ureter", "Ureter"), ("sacrum", "Sacrum")):
        item, data = by_roi[numbers[roi]]
        total = data[1]  # volume at >= 0 Gy
        assert total == pytest.approx(summary["metrics"][name]["volume_cm3"], rel=1e-6)
        assert float(item.DVHMaximumDose) == pytest.approx(
            summary["metrics"][name]["max_gy"], rel=1e-5
        )


def test_rtplan_brachy_attributes_and_dwell_times(run_out):
    study, out = run_out
    plan = pydicom.dcmread(out / "dicom" / "RTPLAN.dcm")
    assert _missing(plan, RTPLAN_MANDATORY + BRACHY_MANDATORY) == []
    assert plan.ApprovalStatus == "UNAPPROVED" and plan.RTPlanGeometry == "PATIENT"
    assert plan.BrachyTreatmentType == "HDR"
    source = plan.SourceSequence[0]
    assert _missing(source, SOURCE_MANDATORY) == []
    assert source.SourceIsotopeName == "Ir-192" and source.SourceModelID == "mHDR-v2"
    assert float(source.ReferenceAirKermaRate) == pytest.approx(40700.0)
    assert float(source.SourceIsotopeHalfLife) == pytest.approx(73.83, abs=0.01)
    setup = plan.ApplicationSetupSequence[0]
    assert setup.ApplicationSetupType == "HAM_FLAB"
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    times = np.asarray(root["dwells/times_s"][...], np.float64)
    total_h = times.sum() / 3600.0
    assert float(setup.TotalReferenceAirKerma) == pytest.approx(40700.0 * total_h, rel=1e-9)
    for channel in setup.ChannelSequence:
        assert _missing(channel, CHANNEL_MANDATORY) == []
        assert channel.SourceMovementType == "STEPWISE"
        cps = channel.BrachyControlPointSequence
        assert len(cps) == channel.NumberOfControlPoints and len(cps) % 2 == 0
        weights = [float(cp.CumulativeTimeWeight) for cp in cps]
        assert weights[0] == 0 and np.all(np.diff(weights) >= 0)
        assert float(channel.FinalCumulativeTimeWeight) == weights[-1]
        for a, b in zip(cps[0::2], cps[1::2], strict=True):
            assert list(a.ControlPoint3DPosition) == list(b.ControlPoint3DPosition)
    dwells = read_brachy_dwells(out / "dicom" / "RTPLAN.dcm")
    catheter = np.asarray(root["dwells/catheter"][...])
    index = np.asarray(root["dwells/index"][...])
    written = {
        (c, i): t for c, i, t in zip(dwells.catheter, dwells.index, dwells.times_s, strict=True)
    }
    assert len(written) == len(times)
    for c, i, t in zip(catheter, index, times, strict=True):
        assert written[(int(c), int(i))] == pytest.approx(t, rel=1e-9, abs=1e-9)
    positions = np.asarray(root["dwells/positions_mm"][...])
    order = np.lexsort((index, catheter))
    np.testing.assert_allclose(dwells.positions_mm, positions[order], atol=1e-6)


def test_failed_import_writes_nothing(tmp_path):
    study = write_synthetic_study(tmp_path / "study")
    text = example_config_toml(study).replace('roi = "Ureter"', 'roi = "Ureter_R"')
    (tmp_path / "plan.toml").write_text(text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(tmp_path / "plan.toml"), "--out", str(out)])
    assert result.exit_code == 2
    assert "no ROI named 'Ureter_R'" in result.output
    assert not out.exists()


def test_rtdose_writer_quantisation_and_single_plane(tmp_path):
    rng = np.random.default_rng(1)
    grid = Grid((1, 4, 5), (1.5, 2.0, 3.0), (-3.0, 7.0, 11.0))
    dose = rng.uniform(-1e-3, 25.0, grid.shape_zyx)
    write_rtdose(tmp_path / "d.dcm", dose, grid, new_study("t"), plan_uid="1.2.3")
    back = read_rtdose(tmp_path / "d.dcm")
    step = dose_grid_scaling(dose.max())
    assert back.grid.shape_zyx == grid.shape_zyx
    assert back.grid.origin_xyz_mm == grid.origin_xyz_mm
    assert back.grid.spacing_xyz_mm == grid.spacing_xyz_mm
    assert np.max(np.abs(back.dose_gy - np.maximum(dose, 0))) <= 0.5 * step * (1 + 1e-6)
    assert back.dataset.DoseSummationType == "PLAN" and "DVHSequence" not in back.dataset


def test_builtin_flap_writer_fresh_study_no_dvh(tmp_path):
    case, applicator = build_flap_case()
    dwells = applicator.dwells(5.0)
    times = np.linspace(0.0, 9.87654321, len(dwells))
    dose = np.zeros(case.grid.shape_zyx, np.float32)
    dose[0, 0, :3] = (1.0, 2.5, 7.25)
    cfg = parse_config({"output": {"dicom": True}})
    dvhs = {
        s.name: cumulative_dvh(dose, s.occupancy, case.grid.voxel_volume_cm3)
        for s in case.structures
    }  # noqa: E501
    source = load_source(cfg.source.model)
    info = dicom_plan_info(cfg)
    step_mm = cfg.applicator.step_mm
    hdr_writer(info, case, dose, dvhs, dwells, times, source, 40700.0, step_mm=step_mm)(tmp_path)
    plan = pydicom.dcmread(tmp_path / "dicom" / "RTPLAN.dcm")
    rtdose = pydicom.dcmread(tmp_path / "dicom" / "RTDOSE.dcm")
    assert (
        plan.RTPlanGeometry == "TREATMENT_DEVICE" and "ReferencedStructureSetSequence" not in plan
    )
    assert plan.StudyInstanceUID == rtdose.StudyInstanceUID
    assert plan.FrameOfReferenceUID == rtdose.FrameOfReferenceUID
    assert "DVHSequence" not in rtdose
    back = read_brachy_dwells(tmp_path / "dicom" / "RTPLAN.dcm")
    # zero-time channels are written with zero weights; every dwell keeps its time
    order = np.lexsort((dwells.index, dwells.catheter))
    np.testing.assert_allclose(back.times_s, times[order], rtol=1e-9, atol=1e-12)


def test_electron_writer(tmp_path):
    grid = Grid((3, 4, 5), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    occupancy = np.zeros(grid.shape_zyx, np.float32)
    occupancy[1] = 1.0
    case = Case("eliot_like", grid, (Structure("PTV_gland", "target", occupancy),))
    dose = np.full(grid.shape_zyx, 21.0, np.float32)
    chosen = {
        "energy_MeV": 9.0,
        "diameter_cm": 6.0,
        "bevel_deg": 15.0,
        "mu": 2345.6,
        "cone_end_mm": [1.0, -20.0, 3.0],
        "cone_axis": [0.0, 1.0, 0.0],
    }
    cfg = parse_config(
        {"plan": {"modality": "electron", "name": "ioert"}, "case": {"kind": "builtin_eliot"}}
    )
    electron_writer(dicom_plan_info(cfg), case, dose, {}, chosen, "generic linac")(tmp_path)
    plan = pydicom.dcmread(tmp_path / "dicom" / "RTPLAN.dcm")
    assert _missing(plan, RTPLAN_MANDATORY) == []
    beam = plan.BeamSequence[0]
    assert _missing(beam, BEAM_MANDATORY) == []
    assert beam.RadiationType == "ELECTRON"
    applicator = beam.ApplicatorSequence[0]
    assert applicator.ApplicatorType == "INTRAOPERATIVE"
    assert float(applicator.ApplicatorGeometrySequence[0].ApplicatorOpening) == 60.0
    assert float(beam.ControlPointSequence[0].NominalBeamEnergy) == 9.0
    assert float(beam.ControlPointSequence[0].GantryAngle) == 0.0
    fraction = plan.FractionGroupSequence[0]
    assert float(fraction.ReferencedBeamSequence[0].BeamMeterset) == pytest.approx(2345.6)
    dose_ds = pydicom.dcmread(tmp_path / "dicom" / "RTDOSE.dcm")
    assert dose_ds.DoseSummationType == "PLAN"
    assert dose_ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert np.allclose(read_rtdose(tmp_path / "dicom" / "RTDOSE.dcm").dose_gy, 21.0, atol=1e-8)


ELIOT_ROTATION = np.asarray(PATIENT_FRAME["rotation"])


def test_electron_writer_in_the_patient_frame(tmp_path):
    """A phantom declaring HFS with its up (+z) anterior: the beam along the phantom's -z (down
    into the gland) is a beam from anterior, gantry 0, not 180 (from under the couch); a tilt
    towards the phantom's +y (superior) needs the couch; RTDOSE is in LPS too."""
    grid = Grid((3, 4, 5), (2.0, 2.0, 2.0), (-4.0, -3.0, -2.0))
    case = Case(
        "eliot_like",
        grid,
        (Structure("PTV_gland", "target", np.ones(grid.shape_zyx, np.float32)),),
        {"patient_frame": PATIENT_FRAME},
    )
    dose = np.random.default_rng(3).uniform(0.0, 25.0, grid.shape_zyx).astype(np.float32)
    tilt = np.radians(20.0)
    axis = np.array([0.0, np.sin(tilt), -np.cos(tilt)])
    chosen = {
        "energy_MeV": 9.0,
        "diameter_cm": 6.0,
        "bevel_deg": 20.0,
        "mu": 2345.6,
        "cone_end_mm": [1.0, -2.0, 3.0],
        "cone_axis": axis.tolist(),
        "cone_toe": [0.0, np.cos(tilt), np.sin(tilt)],
    }
    cfg = parse_config(
        {"plan": {"modality": "electron", "name": "ioert"}, "case": {"kind": "builtin_eliot"}}
    )
    electron_writer(dicom_plan_info(cfg), case, dose, {}, chosen, "generic linac")(tmp_path)
    plan = pydicom.dcmread(tmp_path / "dicom" / "RTPLAN.dcm")
    assert plan.PatientSetupSequence[0].PatientPosition == "HFS"
    point = plan.BeamSequence[0].ControlPointSequence[0]
    for keyword in ("Gantry", "BeamLimitingDevice", "PatientSupport"):
        assert point[f"{keyword}RotationDirection"].value == "NONE"
    assert plan.BeamSequence[0].ApplicatorSequence[0].ApplicatorType == "INTRAOPERATIVE"
    beam = read_electron_beam(tmp_path / "dicom" / "RTPLAN.dcm")
    # phantom (x, y, z) -> LPS (x, -z, y): down = posterior, +y = superior
    planned = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    assert angle_between_deg(beam.beam_axis, planned) < 0.5
    assert angle_between_deg(beam.collimator_x, [0.0, -np.sin(tilt), np.cos(tilt)]) < 0.5
    assert beam.angles.couch_deg == pytest.approx(90.0)  # beam tilted towards the head
    np.testing.assert_allclose(beam.isocenter_mm, [1.0, -3.0, -2.0], atol=1e-6)
    # a vertical cone: gantry 0 (from anterior) with the couch at 0
    chosen |= {"cone_axis": [0.0, -0.0, -1.0], "cone_toe": [0.0, -1.0, 0.0]}
    electron_writer(dicom_plan_info(cfg), case, dose, {}, chosen, "generic linac")(
        tmp_path / "flat"
    )
    flat = read_electron_beam(tmp_path / "flat" / "dicom" / "RTPLAN.dcm")
    assert (flat.angles.gantry_deg, flat.angles.couch_deg) == (0.0, 0.0)
    assert flat.angles.collimator_deg == pytest.approx(270.0)  # X_b along the toe = inferior
    # RTDOSE: the dose at a phantom voxel is found at its LPS point
    back = read_rtdose(tmp_path / "dicom" / "RTDOSE.dcm")
    step = back.scaling_gy
    for index in ([0, 0, 0], [2, 1, 3], [1, 3, 4]):
        lps = ELIOT_ROTATION @ grid.index_to_mm(index)
        at = np.rint(back.grid.mm_to_index(lps)).astype(int)
        np.testing.assert_allclose(back.grid.index_to_mm(at), lps, atol=1e-6)
        assert back.dose_gy[tuple(at)] == pytest.approx(float(dose[tuple(index)]), abs=step)


ELECTRON_SMALL = """
[plan]
name = "eliot_small"
modality = "electron"
[case]
kind = "builtin_eliot"
[case.eliot]
spacing_mm = 4.0
supersampling = 1
half_width_mm = 50.0
lung_thickness_mm = 8.0
skin_opening_radius_mm = 40.0
target_radius_mm = 22.0
surface_tilt_deg = 10.0
[electron]
energies_mev = [12.0]
cone_diameters_cm = [6.0]
bevels_deg = [15.0]
toe_direction = [1.0, 0.0, 0.0]
optimise_pose = false
[prescription]
dose_gy = 21.0
structure = "PTV_gland"
[output]
dicom = true
"""


def test_built_in_electron_plan_rtplan_axis_is_the_planned_axis(tmp_path):
    config = tmp_path / "eliot.toml"
    config.write_text(ELECTRON_SMALL)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    planned = ELIOT_ROTATION @ np.asarray(s["chosen_applicator"]["cone_axis"])
    beam = read_electron_beam(out / "dicom" / "RTPLAN.dcm")
    assert angle_between_deg(beam.beam_axis, planned) < 0.5
    geometry = s["beam_geometry"]
    assert geometry["patient_position"] == beam.patient_position == "HFS"
    np.testing.assert_allclose(geometry["beam_axis_patient"], planned, atol=1e-9)
    assert geometry["gantry_angle_deg"] == pytest.approx(beam.angles.gantry_deg, abs=1e-6)
    assert geometry["collimator_angle_deg"] == pytest.approx(beam.angles.collimator_deg, abs=1e-6)
    assert geometry["couch_angle_deg"] == pytest.approx(beam.angles.couch_deg, abs=1e-6)
    end = ELIOT_ROTATION @ np.asarray(s["chosen_applicator"]["cone_end_mm"])
    np.testing.assert_allclose(beam.isocenter_mm, end, atol=1e-6)
    # the dose 10 mm deep on the axis is the same in the store and in the RTDOSE
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    dose = root["dose_gy"][...]
    grid = Grid.from_attrs(dict(root["dose_gy"].attrs)["grid"])
    deep = np.asarray(s["chosen_applicator"]["cone_end_mm"]) + 10.0 * np.asarray(
        s["chosen_applicator"]["cone_axis"]
    )
    index = np.rint(grid.mm_to_index(deep)).astype(int)
    lps = ELIOT_ROTATION @ grid.index_to_mm(index)
    back = read_rtdose(out / "dicom" / "RTDOSE.dcm")
    at = np.rint(back.grid.mm_to_index(lps)).astype(int)
    assert float(dose[tuple(index)]) > 10.0
    assert back.dose_gy[tuple(at)] == pytest.approx(float(dose[tuple(index)]), abs=back.scaling_gy)


def test_cli_inspect_and_import(tmp_path):
    study = write_synthetic_study(tmp_path / "s")
    result = runner.invoke(app, ["dicom", "inspect", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "GTV" in result.output and "Ring" in result.output and "= CT series" in result.output
    store = tmp_path / "case.zarr"
    args = ["dicom", "import", str(study.ct_folder), "--rtstruct", str(study.rtstruct)]
    args += ["--target", "CTV=GTV", "--oar", "Ureter", "--spacing-mm", "2", "--out", str(store)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    root = zarr.open_group(str(store), mode="r")
    assert set(root["structures"].keys()) == {"CTV", "Ureter"}
    assert root["structures/CTV"].attrs["role"] == "target"
    assert root["hu"].shape == root["structures/CTV"].shape
    bad = runner.invoke(
        app,
        ["dicom", "import", str(tmp_path / "nope"), "--target", "A"]
        + ["--out", str(tmp_path / "x.zarr")],
    )  # noqa: E501
    assert bad.exit_code == 2 and "not found" in bad.output
