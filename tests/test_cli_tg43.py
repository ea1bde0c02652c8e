"""CLI commands of the TG-43 engine: sources, check, qa along-away, dose, and their input errors."""

import csv

import numpy as np
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.io.store import read_dose_store

runner = CliRunner()


def test_sources_lists_consensus_data():
    result = runner.invoke(app, ["sources"])
    assert result.exit_code == 0, result.output
    for key in (
        "mHDR-v2_HEBD2012",
        "GammaMedPlus_HEBD2012",
        "VS2000_HEBD2012",
        "Flexisource_HEBD2012",
        "M-19_HEBD2012",
    ):
        assert key in result.output


def test_check_passes_for_all_packaged_sources():
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert result.output.count("pass") == 5


def test_qa_along_away_default_grid_reproduces_lambda(tmp_path):
    out = tmp_path / "qa.csv"
    result = runner.invoke(app, ["qa", "along-away", "--source", "VS2000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["z_along_cm", "y_away_cm", "dose_rate_cGy_h-1_U-1"]
    at_ref = [r for r in rows if float(r["z_along_cm"]) == 0 and float(r["y_away_cm"]) == 1]
    # (z, y) = (0, 1 cm) is the reference point: dose rate per U = Lambda = 1.1 (VS2000, HEBD 2012)
    assert abs(float(at_ref[0]["dose_rate_cGy_h-1_U-1"]) - 1.1) < 1e-6


def test_qa_along_away_custom_points_and_errors(tmp_path):
    pts = tmp_path / "pts.csv"
    pts.write_text("z_along_cm,y_away_cm\n0,1\n0,2\n")
    out = tmp_path / "o.csv"
    ok = runner.invoke(
        app, ["qa", "along-away", "--source", "mHDR-v2", "--points", str(pts), "--out", str(out)]
    )
    assert ok.exit_code == 0, ok.output
    assert len(out.read_text().splitlines()) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("z,y\n0,1\n")
    res = runner.invoke(
        app, ["qa", "along-away", "--source", "mHDR-v2", "--points", str(bad), "--out", str(out)]
    )
    assert res.exit_code == 2 and "z_along_cm" in res.output
    res = runner.invoke(app, ["qa", "along-away", "--source", "NoSuchSource", "--out", str(out)])
    assert res.exit_code == 2 and "unknown source" in res.output
    res = runner.invoke(
        app,
        [
            "qa",
            "along-away",
            "--source",
            "mHDR-v2_HEBD2012",
            "--formalism",
            "1d",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 2 and "1-D" in res.output


def test_dose_command_writes_store_with_grid(tmp_path):
    dwells = tmp_path / "dwells.csv"
    dwells.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,0,0,1,36\n")
    out = tmp_path / "dose.zarr"
    res = runner.invoke(
        app,
        [
            "dose",
            str(dwells),
            "--out",
            str(out),
            "--sk",
            "40000",
            "--spacing-mm",
            "10",
            "--margin-mm",
            "20",
        ],
    )
    assert res.exit_code == 0, res.output
    dose, grid, attrs = read_dose_store(out)
    assert grid.shape_zyx == (5, 5, 5) and attrs["source"] == "mHDR-v2_HEBD2012"
    # voxel at (x, y, z) = (10, 0, 0) mm: 1 cm on the transverse axis -> S_K * Lambda * t
    i = grid.mm_to_index([10.0, 0.0, 0.0]).round().astype(int)
    expected = 40000 * 1.10942 * (36 / 3600) * 0.01
    assert np.isclose(dose[tuple(i)], expected, rtol=1e-5)


def test_dose_command_rejects_bad_dwells(tmp_path):
    dwells = tmp_path / "dwells.csv"
    dwells.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,0,0,0,36\n")
    res = runner.invoke(app, ["dose", str(dwells), "--out", str(tmp_path / "d.zarr")])
    assert res.exit_code == 2 and "zero source axis" in res.output
    assert not (tmp_path / "d.zarr").exists()
