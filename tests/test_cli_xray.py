"""`iortopt run configs/breast_xray.toml`: 50 kV sphere plans through the same pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cli import app

runner = CliRunner()
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "breast_xray.toml"


@pytest.fixture(scope="module")
def xray_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("xray") / "breast"
    result = runner.invoke(app, ["run", str(CONFIG), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_outputs_and_comparison_table(xray_run):
    out, output = xray_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".iortopt-output.json",  # the output marker, written last
        "dose_slices.png",
        "dvh.png",
        "hot_spot_slices.png",
        "plan.zarr",
        "report.html",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["applicator_comparison"]
    assert [r["diameter_cm"] for r in rows] == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    chosen = summary["chosen_applicator"]
    assert chosen["skin_distance_ok"] and chosen["skin_distance_mm"] >= 5.0
    assert summary["dosimetry_formalism"]
    assert any("ILLUSTRATIVE" in note for note in summary["notes"])
    assert "Applicator comparison" in output and "Clinical goals" in output


def test_store_holds_applicator_and_surface_dose(xray_run):
    out, _ = xray_run
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    summary = json.loads((out / "summary.json").read_text())
    radius = float(root["applicator/radius_mm"][...])
    assert np.isclose(radius, 5.0 * summary["chosen_applicator"]["diameter_cm"])
    # No voxel gets more than the prescribed surface dose (dose falls off from the surface).
    assert float(np.max(root["dose_gy"][...])) <= summary["prescription_gy"] * 1.001
    assert root.attrs["provenance"]["dosimetry_formalism"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[plan]\nmodality = "xray_sphere"\n', "case.kind"),
        (
            '[plan]\nmodality = "xray_sphere"\n[case]\nkind = "builtin_breast"\n'
            "[case.breast]\ncavity_radius = 3\n",
            "case.breast",
        ),
        (
            '[plan]\nmodality = "xray_sphere"\n[case]\nkind = "builtin_breast"\n'
            '[prescription]\nstructure = "PTV_shell"\n[xray]\ncatalogue_diameters_cm = [3.3]\n',
            "xray.catalogue_diameters_cm",
        ),
        (
            '[plan]\nmodality = "xray_sphere"\n[case]\nkind = "builtin_breast"\n'
            '[prescription]\nstructure = "CTV"\n',
            "prescription.structure",
        ),
    ],
)
def test_bad_xray_configs_exit_2_and_write_nothing(tmp_path, text, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert not out.exists()
