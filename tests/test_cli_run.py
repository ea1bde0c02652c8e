"""`iortopt run` on the built-in case end to end, `iortopt init`, and rejected configs."""

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import load_config

runner = CliRunner()


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    # a nested folder that does not exist yet, as with the default ./iortopt-out/<plan>
    out = tmp_path_factory.mktemp("run") / "new" / "flap"
    result = runner.invoke(app, ["run", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_outputs_exist_and_open(builtin_run):
    out, output = builtin_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".iortopt-output.json",  # the output marker, written last
        "dose_slices.png",
        "dvh.png",
        "hot_spot_slices.png",
        "plan.zarr",
        "report.html",
        "summary.json",
    ]
    for png in ("dvh.png", "dose_slices.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    dose = root["dose_gy"]
    assert dose.shape == tuple(dose.attrs["grid"]["shape_zyx"])
    assert set(root["structures"].keys()) >= {"CTV", "ureter", "sacrum", "bowel"}
    assert root["dwells/times_s"].shape == root["dwells/positions_mm"].shape[:1]
    prov = root.attrs["provenance"]
    assert prov["source"] == "mHDR-v2_HEBD2012" and prov["precision"] == "float32"
    assert root.attrs["config"]["plan"]["name"] == "flap_default"
    assert "Clinical goals" in output


def test_summary_goals_agree_with_stored_dose(builtin_run):
    """Recompute CTV D90 from the stored dose and occupancy with a plain weighted quantile."""
    out, _ = builtin_run
    summary = json.loads((out / "summary.json").read_text())
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    dose = np.asarray(root["dose_gy"][...]).ravel()
    w = np.asarray(root["structures/CTV"][...]).ravel()
    order = np.argsort(-dose)
    cum = np.cumsum(w[order])
    d90 = dose[order][np.searchsorted(cum, 0.9 * cum[-1])]
    assert abs(d90 - summary["metrics"]["CTV"]["D90_gy"]) < 1e-3
    goal = next(g for g in summary["goals"] if g["metric"] == "D90_gy")
    assert goal["met"] == (d90 >= 10.0)
    # the built-in plan meets every goal of its config
    assert summary["goals_all_met"], summary["goals"]
    for key in ("setup_s", "optimise_compile_s", "optimise_s", "full_dose_s"):
        assert summary["wall_times_s"][key] >= 0
    times = np.asarray(root["dwells/times_s"][...])
    assert np.all(times >= 0) and np.all(times <= 60.0)


def test_init_writes_a_valid_template(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["init", "mycase"])
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "mycase.toml")
    assert cfg.plan.name == "mycase"
    again = runner.invoke(app, ["init", "mycase"])
    assert again.exit_code == 2 and "exists" in again.output


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[prescription]\ndose_gy = "ten"\n', "prescription.dose_gy"),
        ('[[objectives]]\ntype = "underdose"\nstructure = "liver"\ndose_gy = 10\n', "liver"),
        ("[case.flap]\nspacing_mmm = 2\n", "case.flap"),
        ("[case.flap]\nsource_to_surface_mm = 20\n", "source_to_surface_mm"),
        ('[[goals]]\nstructure = "CTV"\nmetric = "D91"\nop = ">="\nvalue = 1\n', "goals[0].metric"),
        ('[source]\nmodel = "nope"\n', "unknown source"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, text, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_gpu_request_without_gpu_exits_2(tmp_path):
    """Run in a subprocess: selecting a JAX platform is process-wide."""
    import subprocess
    import sys

    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "iortopt.cli", "run", "--device", "gpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--device gpu" in proc.stderr
    assert not out.exists()
