"""``iortopt evaluate``: an analytic sphere in a linear dose gradient, an RTDOSE written by
``iortopt run`` evaluated back (its summary and its DVH Sequence), exit codes and outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.dicom.phantom_study import StudyIds, write_rtstruct
from iortopt.dicom.rtdose import read_rtdose, write_rtdose
from iortopt.dicom.rtstruct import read_structure_set
from iortopt.dicom.study import StudyRef
from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study
from iortopt.dicom.uids import new_uid
from iortopt.grid import Grid
from iortopt.outputs.external_dose import contour_slice_thickness_mm, evaluate_dose, tps_metrics

runner = CliRunner()

RADIUS_MM = 15.0
CENTRE_MM = np.array([4.0, -2.0, 6.0])
SPACING_MM = 2.0
D0_GY, GRADIENT_GY_PER_MM = 10.0, 0.2  # dose = D0 + G * x


def _sphere_contours(centre, radius_mm, dz_mm, n_points=180) -> list[np.ndarray]:
    """Circles on planes dz apart whose slabs tile the sphere's z extent exactly."""
    n_planes = int(round(2 * radius_mm / dz_mm))
    offsets = (np.arange(n_planes) + 0.5) * dz_mm - radius_mm
    angles = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    contours = []
    for dz in offsets:
        r = np.sqrt(radius_mm**2 - dz**2)
        xyz = np.stack(
            [
                centre[0] + r * np.cos(angles),
                centre[1] + r * np.sin(angles),
                np.full(n_points, centre[2] + dz),
            ],
            axis=1,
        )
        contours.append(xyz)
    return contours


def _write_sphere_study(
    folder, centre=CENTRE_MM, ids=None, radius_mm=RADIUS_MM, plane_mm=SPACING_MM, grid=None
):
    """(RTSTRUCT path, RTDOSE path, ids): one sphere ROI and a linear gradient dose in x."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids or StudyIds()
    contours = _sphere_contours(centre, radius_mm, plane_mm)
    z = np.array([c[0, 2] for c in contours])
    rs = folder / "RS.dcm"
    write_rtstruct(rs, {"Sphere": contours}, {"Sphere": "PTV"}, z, [new_uid() for _ in z], ids)
    # voxel centres on even mm in x, y; in z on the contour planes (odd mm)
    grid = grid or Grid((31, 31, 31), (SPACING_MM,) * 3, (-26.0, -32.0, -25.0))
    x = grid.axis_mm("x")[None, None, :]
    dose = np.broadcast_to(D0_GY + GRADIENT_GY_PER_MM * x, grid.shape_zyx)
    rd = folder / "RD.dcm"
    study = StudyRef(ids.study_uid, ids.frame_uid)
    write_rtdose(rd, dose, grid, study, plan_uid=new_uid())
    return rs, rd, ids


def test_sphere_in_linear_gradient_analytic(tmp_path):
    rs, rd, _ = _write_sphere_study(tmp_path)
    structure_set = read_structure_set(rs)
    dose = read_rtdose(rd)
    thickness = contour_slice_thickness_mm(structure_set, 99.0)
    assert thickness == pytest.approx(SPACING_MM)
    (r,), outside = evaluate_dose(dose, structure_set, thickness, supersample=4)
    assert outside == []
    m = r.metrics
    assert m["volume_cm3"] == pytest.approx(4 / 3 * np.pi * RADIUS_MM**3 / 1000, rel=0.01)
    centre_gy = D0_GY + GRADIENT_GY_PER_MM * CENTRE_MM[0]
    assert m["mean_gy"] == pytest.approx(centre_gy, rel=0.01)
    assert m["D50_gy"] == pytest.approx(centre_gy, rel=0.01)
    voxel_gy = GRADIENT_GY_PER_MM * SPACING_MM
    assert abs(m["max_gy"] - (centre_gy + GRADIENT_GY_PER_MM * RADIUS_MM)) <= voxel_gy
    assert abs(m["min_gy"] - (centre_gy - GRADIENT_GY_PER_MM * RADIUS_MM)) <= voxel_gy
    assert r.tps is None and not r.partly_outside


def test_small_sphere_on_a_coarse_grid(tmp_path):
    """A 5 mm radius sphere (0.52 cm3) off-centre on a 3 mm dose grid, contours every 1 mm."""
    centre, radius_mm = np.array([0.7, -0.4, 0.3]), 5.0
    grid = Grid((9, 9, 9), (3.0,) * 3, (-12.0, -12.0, -12.0))
    rs, rd, _ = _write_sphere_study(tmp_path, centre, None, radius_mm, 1.0, grid)
    structure_set = read_structure_set(rs)
    thickness = contour_slice_thickness_mm(structure_set, 99.0)
    (r,), _ = evaluate_dose(read_rtdose(rd), structure_set, thickness, supersample=8)
    assert r.metrics["volume_cm3"] == pytest.approx(4 / 3 * np.pi * radius_mm**3 / 1000, rel=0.01)
    centre_gy = D0_GY + GRADIENT_GY_PER_MM * centre[0]
    assert r.metrics["mean_gy"] == pytest.approx(centre_gy, rel=0.01)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_run")
    study = write_synthetic_study(root / "study")
    text = example_config_toml(study).replace("max_iterations = 100", "max_iterations = 5")
    config = root / "plan.toml"
    config.write_text(text)
    out = root / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return study, out


def _read_rows(path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["name"]: row for row in csv.DictReader(fh)}


def test_run_rtdose_evaluated_back(run_out, tmp_path):
    study, out = run_out
    ev = tmp_path / "ev"
    args = ["evaluate", "--rtdose", str(out / "dicom" / "RTDOSE.dcm")]
    args += ["--rtstruct", str(study.rtstruct), "--ct", str(study.ct_folder)]
    args += ["--prescription-gy", "10", "--out", str(ev)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ev.iterdir()) == [
        ".iortopt-output.json",
        "dvh.png",
        "metrics.csv",
    ]
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    rows = _read_rows(ev / "metrics.csv")
    metrics = ("volume_cm3", "mean_gy", "min_gy", "max_gy", "D98_gy", "D90_gy", "D2cc_gy")
    for plan_name, roi in (("CTV", "GTV"), ("ureter", "Ureter"), ("sacrum", "Sacrum")):
        row = rows[roi]
        for key in metrics + ("D0.1cc_gy",):
            ours = float(row[key])
            assert ours == pytest.approx(summary[plan_name][key], rel=0.01), (roi, key)
            assert float(row[f"tps_{key}"]) == pytest.approx(ours, rel=0.01), (roi, key)
        assert float(row["V100_percent"]) == pytest.approx(
            summary[plan_name]["V100_percent"], rel=0.01, abs=0.1
        )
    assert rows["BODY"]["tps_mean_gy"] == ""  # no TPS DVH for it
    assert rows["GTV"]["partly_outside_grid"] == "False"
    assert rows["BODY"]["partly_outside_grid"] == "True"  # the cropped dose grid cuts the body
    # the same folder again: this evaluation's own output is replaced without --overwrite
    assert runner.invoke(app, args).exit_code == 0
    # never into the plan's output folder, which would be replaced whole
    before = sorted(p.name for p in out.iterdir())
    into_run = [*args[:-1], str(out), "--overwrite"]
    result = runner.invoke(app, into_run)
    assert result.exit_code == 2 and "holds the outputs of" in result.output
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    rs, rd, ids = _write_sphere_study(tmp_path / "a")
    other_rs, _, _ = _write_sphere_study(tmp_path / "b")  # another frame of reference
    far_rs, _, _ = _write_sphere_study(tmp_path / "c", centre=np.array([200.0, 0, 0]), ids=ids)
    cases = {
        "missing": (tmp_path / "nope.dcm", rs, "nope.dcm"),
        "not an RTDOSE": (rs, rs, "not an RTDOSE"),
        "frame": (rd, other_rs, "frame of reference"),
        "outside": (rd, far_rs, "no ROI has volume inside the dose grid"),
    }
    for what, (dose_path, struct_path, message) in cases.items():
        out = tmp_path / "out" / what
        args = ["evaluate", "--rtdose", str(dose_path), "--rtstruct", str(struct_path)]
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 2, (what, result.output)
        assert message in " ".join(result.output.split()), (what, result.output)
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), what
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args = ["evaluate", "--rtdose", str(rd), "--rtstruct", str(rs), "--out", str(foreign)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "metrics.csv").is_file()


def _dvh_item(dvh_type: str, units: str, widths, volumes, scaling: float = 1.0):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.DVHType = dvh_type
    item.DVHVolumeUnits = units
    item.DVHDoseScaling = scaling
    data = np.empty(2 * len(widths))
    data[0::2], data[1::2] = widths, volumes
    item.DVHData = list(data)
    return item


def test_tps_dvh_cumulative_differential_percent_agree():
    # 10 cm3: 4 cm3 in [1, 2) Gy, 6 cm3 in [2, 3) Gy (bins of 1 Gy; 2 x DVHDoseScaling 0.5)
    differential = [0.0, 4.0, 6.0]
    cumulative = [10.0, 10.0, 6.0]
    cum = tps_metrics(_dvh_item("CUMULATIVE", "CM3", [1, 1, 1], cumulative), 10.0)
    diff = tps_metrics(_dvh_item("DIFFERENTIAL", "CM3", [2, 2, 2], differential, 0.5), 10.0)
    pct = tps_metrics(_dvh_item("CUMULATIVE", "PERCENT", [1, 1, 1], [100, 100, 60]), 10.0)
    for m in (cum, diff, pct):
        assert m["volume_cm3"] == pytest.approx(10.0)
        assert m["mean_gy"] == pytest.approx((4 * 1.5 + 6 * 2.5) / 10)
        assert (m["min_gy"], m["max_gy"]) == (1.0, 3.0)
        assert (m["D98_gy"], m["D50_gy"], m["D2cc_gy"]) == (1.0, 2.0, 2.0)
