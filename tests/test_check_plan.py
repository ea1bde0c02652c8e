"""``iortopt check-plan``: clinical-style HDR and PDR plans of three vendor conventions whose TPS
point doses come from an independent TG-43 implementation (tests/brachy_plans.py), iortopt's own
export with its RTDOSE, and every refusal (exit 2) and failure (exit 1)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from brachy_plans import (
    FRAME_UID as FRAME,
)
from brachy_plans import (
    STUDY_UID as STUDY,
)
from brachy_plans import (
    build_plan,
    channel_spec,
    square_prism,
    tg43_dose_gy,
    write_rtstruct,
)
from iortopt.cli import app

runner = CliRunner()
PATH_A = np.array([[10.0, -5.0, 20.0], [10.0, 5.0, 0.0], [10.0, 5.0, -30.0]])
PATH_B = np.array([[-10.0, 0.0, 20.0], [-10.0, 0.0, -30.0]])
POINTS = [("A", (0.0, 0.0, 5.0)), ("B", (0.0, 20.0, -10.0)), ("C", (25.0, -5.0, 0.0))]


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _per_channel_doses(channels, axes, sk_U, key):
    """doses[c][p] (Gy, one pulse of one fraction) from the independent TG-43."""
    xyz = np.array([p for _, p in POINTS])
    return [
        list(tg43_dose_gy(xyz, c["positions"], a, c["times"], sk_U, key))
        for c, a in zip(channels, axes, strict=True)
    ]


def _check(args):
    return runner.invoke(app, ["check-plan", *map(str, args)])


@pytest.fixture(scope="module")
def vendor_plans(tmp_path_factory):
    """Oncentra (embedded applicator structure set + RTSTRUCT ROI), BrachyVision (Control Point
    Orientation, Target Prescription Dose) and SagiPlan PDR (neighbouring dwells, single-dwell
    fallback)."""
    root = tmp_path_factory.mktemp("check_plan")
    rs = root / "RS.dcm"
    write_rtstruct(
        rs,
        [(10, "app A", "path", PATH_A), (11, "app B", "path", PATH_B)],
        study_uid=STUDY,
        frame_uid=FRAME,
    )
    plans = {}
    # Oncentra: dwells on the applicator paths; axes along the segment, towards the path start
    on_a = np.array([[10.0, -3.0, 16.0], [10.0, 1.0, 8.0], [10.0, 5.0, -5.0]])
    on_b = np.array([[-10.0, 0.0, 10.0], [-10.0, 0.0, 5.0], [-10.0, 0.0, 0.0]])
    chans = [
        channel_spec(on_a, [12.0, 8.0, 15.0], roi_number=3),  # in the embedded set only
        channel_spec(on_b, [10.0, 20.0, 5.0], roi_number=11),
    ]
    seg1, seg2 = _unit(PATH_A[0] - PATH_A[1]), _unit(PATH_A[1] - PATH_A[2])
    axes = [[seg1, seg1, seg2], [[0, 0, 1]] * 3]
    doses = _per_channel_doses(chans, axes, 40000.0, "mHDR-v2_HEBD2012")
    plans["oncentra"] = build_plan(
        chans,
        manufacturer="Nucletron",
        model="mHDR-v2r",
        points=POINTS,
        point_doses=doses,
        fractions=2,
        embedded_paths={3: PATH_A},
        reference=dt.datetime(2026, 3, 1, 8),
        plan_time=dt.datetime(2026, 3, 6, 8),
    )
    extra = Dataset()  # a point with coordinates but no TPS dose: reported, not judged
    extra.DoseReferenceNumber = 9
    extra.DoseReferenceStructureType = "POINT"
    extra.DoseReferenceDescription = "no TPS dose"
    extra.DoseReferencePointCoordinates = [0.0, -20.0, 0.0]
    extra.DoseReferenceType = "ORGAN_AT_RISK"
    plans["oncentra"].DoseReferenceSequence.append(extra)
    # BrachyVision: Control Point Orientation; point dose in Target Prescription Dose
    orient = _unit([0.0, 0.6, 0.8])
    chans = [
        channel_spec([[0, -10, -5], [0, -7, -1]], [20.0, 25.0], orientation=[orient] * 2),
        channel_spec([[15, 10, 0]], [30.0], orientation=[[1.0, 0.0, 0.0]]),
    ]
    axes = [[orient] * 2, [[1.0, 0.0, 0.0]]]
    doses = _per_channel_doses(chans, axes, 41000.0, "GammaMedPlus_HEBD2012")
    plans["brachyvision"] = build_plan(
        chans,
        manufacturer="Varian Medical Systems",
        model="GammaMed Plus",
        sk_U=41000.0,
        points=POINTS,
        point_doses=doses,
        encoding="target",
    )
    # SagiPlan PDR: 4 pulses; axes from the neighbouring dwells; a lone dwell: patient z
    line = np.array([[0.0, 0.0, 10.0], [0.0, 5.0, 10.0], [0.0, 10.0, 10.0]])
    chans = [
        channel_spec(line, [30.0, 40.0, 30.0], pulses=4),
        channel_spec([[-20.0, 0.0, -10.0]], [50.0], pulses=4),
    ]
    axes = [[[0, -1, 0]] * 3, [[0, 0, 1]]]
    doses = _per_channel_doses(chans, axes, 3000.0, "BEBIG-GI192M11_CLRP")
    plans["sagiplan"] = build_plan(
        chans,
        manufacturer="Eckert & Ziegler BEBIG",
        model="Ir2.A85-2",
        treatment_type="PDR",
        sk_U=3000.0,
        setup_dose_gy=0.5,
        points=POINTS,
        point_doses=doses,
    )
    tampered = [[d * 1.03 for d in row] for row in doses]  # the TPS 3 % high
    plans["tampered"] = build_plan(
        chans,
        manufacturer="BEBIG",
        model="GI192M11",
        treatment_type="PDR",
        sk_U=3000.0,
        setup_dose_gy=0.5,
        points=POINTS,
        point_doses=tampered,
    )
    files = {"rs": rs}
    for name, ds in plans.items():
        files[name] = root / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    results = {}
    for name in ("oncentra", "brachyvision", "sagiplan"):
        out = root / f"out_{name}"
        result = _check([files[name], "--rtstruct", rs, "--out", out])
        results[name] = (result, json.loads((out / "check.json").read_text()), out)
    return files, results, root


@pytest.mark.parametrize("vendor", ["oncentra", "brachyvision", "sagiplan"])
def test_vendor_point_doses_within_half_a_percent(vendor_plans, vendor):
    _, results, _ = vendor_plans
    result, report, out = results[vendor]
    assert result.exit_code == 0, result.output
    assert report["vendor"] == vendor and report["passed"] is True
    judged = [p for p in report["points"] if p["tps_gy"] is not None]
    assert len(judged) == 3
    for row in judged:
        assert abs(row["diff_percent"]) < 0.5, row
        assert row["within_tolerance"] is True
    expected_from = "target_prescription_dose" if vendor == "brachyvision" else "coefficient"
    assert {p["tps_from"] for p in judged} == {expected_from}
    assert (out / "check.png").stat().st_size > 0
    assert report["second_check"]["passed"] is True and "Points" in report["second_check"]["lines"]


def test_report_fields(vendor_plans):
    _, results, _ = vendor_plans
    report = results["oncentra"][1]
    assert report["source"]["dataset"] == "mHDR-v2_HEBD2012"
    assert report["n_dwells"] == 6 and report["n_fractions"] == 2
    assert report["total_time_s"] == pytest.approx(70.0)
    assert report["plan_channel_total_time_s"] == pytest.approx(70.0)
    assert report["trak_iortopt_uGy_m2"] == pytest.approx(report["trak_plan_uGy_m2"], rel=1e-6)
    assert abs(report["trak_diff_percent"]) < 1e-4 and report["total_time_diff_percent"] == 0.0
    decay = report["decay"]
    assert decay["sk_written_U"] == 40000.0
    assert decay["decay_factor"] == pytest.approx(2 ** (-5.0 / 73.83))
    assert decay["dwell_time_scaling"] == pytest.approx(1 / decay["decay_factor"])
    assert report["axis_rules"] == {"applicator": 6}
    (unjudged,) = [p for p in report["points"] if p["tps_gy"] is None]
    assert unjudged["name"] == "no TPS dose" and unjudged["within_tolerance"] is None
    assert unjudged["tps_from"] == "none" and unjudged["iortopt_gy"] > 0
    pdr = results["sagiplan"][1]
    assert pdr["n_pulses"] == 4 and pdr["total_time_s"] == pytest.approx(4 * 150.0)
    assert pdr["axis_rules"] == {"neighbours": 3, "fallback": 1}
    assert any("single dwell" in w for w in pdr["warnings"])


def test_treatment_override_and_failure_exit_1(vendor_plans):
    files, _, root = vendor_plans
    out = root / "out_tampered"
    result = _check([files["tampered"], "--out", out, "--treatment", "2026-03-11T08:00"])
    assert result.exit_code == 1, result.output
    report = json.loads((out / "check.json").read_text())
    assert not any(p["within_tolerance"] for p in report["points"])
    assert all(
        p["diff_percent"] == pytest.approx(-100 * 0.03 / 1.03, abs=0.5) for p in report["points"]
    )
    assert report["decay"]["treatment_from"] == "--treatment"
    assert report["decay"]["elapsed_days"] == pytest.approx(10.0)


@pytest.fixture(scope="module")
def own_export(tmp_path_factory):
    """iortopt's own RTPLAN (dicom/rtplan.py) and RTDOSE: S_K written at calibration 10 days
    before the plan, the dose computed with the S_K at treatment."""
    import jax

    from iortopt.dicom.files import save_atomic
    from iortopt.dicom.rtdose import write_rtdose
    from iortopt.dicom.rtplan import BrachyDwells, BrachySource, build_brachy_plan
    from iortopt.dicom.study import StudyRef
    from iortopt.grid import Grid
    from iortopt.physics.sources import load_source
    from iortopt.physics.tg43 import decayed_sk, dose_gy, make_kernel

    root = tmp_path_factory.mktemp("own_export")
    source = load_source("mHDR-v2")
    calibration = dt.datetime(2026, 1, 1)
    sk = decayed_sk(40700.0, source.half_life_days, calibration, dt.datetime(2026, 1, 11))
    positions = np.array([[x, 0.0, z] for x in (-5.0, 5.0) for z in (-5.0, 0.0, 5.0)])
    dwells = BrachyDwells(
        positions,
        np.tile([0.0, 0.0, 1.0], (6, 1)),
        np.array([10.0, 12.0, 8.0, 9.0, 11.0, 7.0]),
        np.array([0, 0, 0, 1, 1, 1]),
        np.array([2, 1, 0, 2, 1, 0]),
    )
    study = StudyRef(STUDY, FRAME)
    plan = build_brachy_plan(
        study,
        "1.2.826.0.1.3680043.8.498.93",
        dwells,
        BrachySource(
            "mHDR-v2", "TG-43", "Ir-192", source.half_life_days, 3.5, 40700.0, calibration
        ),
        air_kerma_strength_U=sk,
        step_mm=5.0,
        label="own",
        prescription_gy=5.0,
        prescription_structure="PTV",
    )
    save_atomic(plan, root / "RP.dcm")
    grid = Grid.from_bounds((-21.0, -21.0, -18.0), (21.0, 21.0, 18.0), 3.0)
    kernel = make_kernel(source)
    dose = jax.jit(lambda pts: dose_gy(pts, positions, dwells.axes, dwells.times_s, kernel, sk))
    dose = np.asarray(dose(grid.points_mm())).reshape(grid.shape_zyx)
    write_rtdose(
        root / "RD.dcm",
        dose,
        grid,
        study,
        plan_uid="1.2.826.0.1.3680043.8.498.93",
        summation_type="BRACHY",
    )
    write_rtstruct(
        root / "RS.dcm",
        [(1, "PTV", "volume", square_prism((0, 0), 10.0, np.arange(-9.0, 9.1, 3.0)))],
        study_uid=STUDY,
        frame_uid=FRAME,
    )
    out = root / "out"
    result = _check(
        [root / "RP.dcm", "--rtdose", root / "RD.dcm", "--rtstruct", root / "RS.dcm", "--out", out]
    )
    return result, json.loads((out / "check.json").read_text()), sk


def test_own_export_reproduces_its_dose(own_export):
    result, report, sk = own_export
    assert result.exit_code == 0, result.output
    assert report["vendor"] == "iortopt" and report["sk_used_U"] == pytest.approx(sk, rel=1e-6)
    assert report["points"] == []
    assert report["gamma"]["pass_rate_percent"] == 100.0 and report["gamma"]["n_points"] > 100
    assert abs(report["dose_difference"]["mean_diff_percent"]) < 0.05
    assert report["dose_difference"]["p95_abs_diff_percent"] < 0.1
    (row,) = report["dvh"]
    assert row["name"] == "PTV"
    for key in ("D90_gy", "D98_gy", "mean_gy", "V100_percent"):
        assert row[f"iortopt_{key}"] == pytest.approx(row[f"tps_{key}"], rel=2e-3, abs=0.05)


def test_gamma_fails_on_a_scaled_dose(own_export, tmp_path):
    """The TPS dose against itself 30 % low: gamma (3 %/2 mm) must not pass at 95 %. (Near the
    dwells a 10 % scaling still passes: 1/r^2 falls 10 % within 2 mm out to r = 40 mm.) And an
    RTDOSE of another frame of reference is refused."""
    import pydicom

    from iortopt.dicom.rtdose import read_rtdose
    from iortopt.outputs.second_check import CheckSettings, dose_difference_stats, gamma_pass

    _, report, _ = own_export
    rd_path = report["plan"].replace("RP.dcm", "RD.dcm")
    dose = read_rtdose(rd_path)
    same = gamma_pass(dose.dose_gy, dose.dose_gy, dose.grid, CheckSettings(), 5.0)
    low = gamma_pass(dose.dose_gy, 0.7 * dose.dose_gy, dose.grid, CheckSettings(), 5.0)
    assert same["pass_rate_percent"] == 100.0 and same["passed"]
    assert low["pass_rate_percent"] < 95.0 and not low["passed"]
    stats = dose_difference_stats(dose.dose_gy, 0.9 * dose.dose_gy, 0.5)
    assert stats["mean_diff_percent"] == pytest.approx(-10.0)
    rd = pydicom.dcmread(rd_path)
    rd.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.99"
    rd.save_as(tmp_path / "RD_other.dcm")
    result = _check(
        [report["plan"], "--rtdose", tmp_path / "RD_other.dcm", "--out", tmp_path / "o"]
    )
    assert result.exit_code == 2 and "frame of reference" in " ".join(result.output.split())


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("external", [], "ApplicationSetupSequence"),
        ("unknown_model", [], "--source"),
        ("oncentra", ["--source", "GammaMedPlus"], "--source GammaMedPlus"),
        ("oncentra", ["--treatment", "next tuesday"], "--treatment"),
        ("no_points", [], "DoseReferencePointCoordinates"),
        ("relative", [], "ControlPoint3DPosition"),
        ("oncentra", ["--tolerance-percent", "0"], "--tolerance-percent"),
        ("oncentra", ["--rtdose", get_testdata_file("rtdose.dcm")], "DoseUnits"),
        ("oncentra", ["--rtstruct", get_testdata_file("rtstruct.dcm")], "frame of reference"),
        ("missing", [], "DICOM file not found"),
        ("no_setup_dose", [], "BrachyApplicationSetupDose (300A,00A4)"),
    ],
)
def test_refusals_exit_2(vendor_plans, tmp_path, case, extra, message):
    files, _, _ = vendor_plans
    chan = [channel_spec([[0, 0, 0], [0, 0, 5]], [1.0, 1.0])]
    if case == "external":
        plan = get_testdata_file("rtplan.dcm")
    elif case == "missing":
        plan = tmp_path / "absent.dcm"
    elif case in files:
        plan = files[case]
    else:
        kw = {
            "unknown_model": {"model": "X7", "points": POINTS[:1], "point_doses": [[1.0]]},
            "no_points": {"model": "mHDR-v2"},
            "relative": {"model": "mHDR-v2"},
            "no_setup_dose": {"model": "mHDR-v2", "points": POINTS[:1], "point_doses": [[1.0]]},
        }[case]
        if case == "relative":
            chan = [channel_spec([[0, 0, 0]], [1.0], relative_mm=[5.0], no_3d=True)]
        plan = tmp_path / "RP.dcm"
        ds = build_plan(chan, manufacturer="x", **kw)
        if case == "no_setup_dose":
            del ds.FractionGroupSequence[0].ReferencedBrachyApplicationSetupSequence[0][
                "BrachyApplicationSetupDose"
            ]
        ds.save_as(plan, enforce_file_format=True)
    result = _check([plan, "--out", tmp_path / "out", *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_source_from_a_toml_file(vendor_plans, tmp_path):
    """``--source FILE.toml``: a user file of the plan's model is accepted."""
    from importlib import resources

    files, _, _ = vendor_plans
    toml = tmp_path / "my_mhdr.toml"
    data = resources.files("iortopt") / "data" / "sources" / "mHDR-v2_HEBD2012.toml"
    toml.write_bytes(data.read_bytes())
    result = _check(
        [files["oncentra"], "--rtstruct", files["rs"], "--source", toml, "--out", tmp_path / "out"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["source"]["dataset"] == "mHDR-v2_HEBD2012"


def test_output_folder_rules(vendor_plans, tmp_path):
    """A rerun into its own folder replaces it; another command's output folder is refused even
    with --overwrite; a foreign folder needs --overwrite and keeps its files."""
    files, results, root = vendor_plans
    _, _, own = results["brachyvision"]
    assert _check([files["brachyvision"], "--out", own]).exit_code == 0
    plan_out = tmp_path / "plan"
    plan_out.mkdir()
    (plan_out / "summary.json").write_text("{}")
    (plan_out / ".iortopt-output.json").write_text('{"plan": "flap", "iortopt_output": 1}')
    result = _check([files["brachyvision"], "--out", plan_out, "--overwrite"])
    assert result.exit_code == 2 and "'flap'" in result.output
    assert (plan_out / "summary.json").read_text() == "{}"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert _check([files["brachyvision"], "--out", foreign]).exit_code == 2
    assert _check([files["brachyvision"], "--out", foreign, "--overwrite"]).exit_code == 0
    assert (foreign / "notes.txt").read_text() == "keep" and (foreign / "check.json").is_file()
