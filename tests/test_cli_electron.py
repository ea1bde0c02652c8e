"""`iortopt run configs/breast_electron.toml`: electron plans through the same pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cli import app

runner = CliRunner()
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "breast_electron.toml"


@pytest.fixture(scope="module")
def electron_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("electron") / "breast"
    result = runner.invoke(app, ["run", str(CONFIG), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_outputs_comparison_choice_and_disc(electron_run):
    out, output = electron_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".iortopt-output.json",  # the output marker, written last
        "dose_slices.png",
        "dvh.png",
        "hot_spot_slices.png",
        "plan.zarr",
        "report.html",
        "summary.json",
    ]
    s = json.loads((out / "summary.json").read_text())
    assert s["modality"] == "electron" and s["prescription_gy"] == 21.0
    rows = s["catalogue_comparison"]
    assert len(rows) == 4 * 8 * 4  # every energy, cone and bevel of the generic data
    assert {r["energy_MeV"] for r in rows} == {4.0, 6.0, 9.0, 12.0}
    for key in ("mu", "target_coverage_percent", "max_dose_gy", "beyond_disc_max_gy"):
        assert all(np.isfinite(r[key]) for r in rows), key
    chosen = s["chosen_applicator"]
    assert chosen["energy_MeV"] in (4.0, 6.0, 9.0, 12.0) and 3.0 <= chosen["diameter_cm"] <= 10.0
    assert chosen["reason"] and chosen["mu"] > 0
    best = max(
        (r for r in rows if r["disc_covers_field"] and r["axis_tilt_ok"]), key=lambda r: r["score"]
    )
    assert (best["energy_MeV"], best["diameter_cm"], best["bevel_deg"]) == (
        chosen["energy_MeV"],
        chosen["diameter_cm"],
        chosen["bevel_deg"],
    )
    disc = s["disc"]
    assert disc["material"] == "Al2_Pb4" and disc["radius_mm"] == 45.0
    assert disc["depth_below_surface_mm"] == pytest.approx(20.0, abs=0.1)
    assert s["flags"]["disc_covers_field"] and s["flags"]["axis_tilt_ok"]
    assert s["flags"]["target_covered"] and s["goals_all_met"]
    assert any("ILLUSTRATIVE" in note for note in s["notes"])
    assert s["joint_optimisation"]["run"]
    assert "Catalogue comparison" in output and "Clinical goals" in output and "disc" in output


def test_summary_states_the_beam_in_the_patient_frame(electron_run):
    """The phantom lies HFS with its up anterior: the flat plan's vertical cone (phantom -z) is a
    beam from anterior, travelling posterior (+y LPS): gantry 0, couch 0, not 180."""
    out, output = electron_run
    s = json.loads((out / "summary.json").read_text())
    geometry, chosen = s["beam_geometry"], s["chosen_applicator"]
    assert geometry["patient_position"] == "HFS"
    x, y, z = chosen["cone_axis"]
    np.testing.assert_allclose(geometry["beam_axis_patient"], [x, -z, y], atol=1e-12)
    assert chosen["axis_tilt_deg"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(geometry["beam_axis_patient"], [0.0, 1.0, 0.0], atol=1e-9)
    assert geometry["gantry_angle_deg"] == pytest.approx(0.0, abs=1e-9)
    assert geometry["couch_angle_deg"] == pytest.approx(0.0, abs=1e-9)
    assert "gantry 0.0" in output


def test_store_holds_cone_disc_and_a_shielded_dose(electron_run):
    out, _ = electron_run
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    s = json.loads((out / "summary.json").read_text())
    assert float(root["cone/diameter_mm"][...]) == pytest.approx(
        10 * s["chosen_applicator"]["diameter_cm"]
    )
    assert float(root["cone/mu"][...]) == pytest.approx(s["chosen_applicator"]["mu"])
    np.testing.assert_allclose(root["disc/centre_mm"][...], s["disc"]["centre_mm"])
    assert root.attrs["provenance"]["disc"] == "Al2_Pb4"
    dose = root["dose_gy"][...]
    # 21 Gy at the 90 % isodose: the maximum is the 100 % level plus at most 9 % backscatter.
    assert 23.3 <= float(dose.max()) <= 23.34 * 1.09
    assert s["metrics"]["chest_wall"]["max_gy"] < 0.1 * s["prescription_gy"]


BASE = '[plan]\nmodality = "electron"\n[case]\nkind = "builtin_eliot"\n'
RX = '[prescription]\nstructure = "PTV_gland"\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[plan]\nmodality = "electron"\n', "case.kind"),
        (BASE + "[case.eliot]\ngland_thickness = 20\n" + RX, "case.eliot"),
        (BASE + "[case.eliot]\ngland_thickness_mm = -1\n" + RX, "gland_thickness_mm"),
        (BASE + "[case.eliot]\ndisc_gap_mm = 4\n" + RX, "disc_gap_mm"),
        (BASE + RX + "[electron]\nenergies_mev = [7.0]\n", "electron.energies_mev"),
        (BASE + RX + "[electron]\ncone_diameters_cm = [3.5]\n", "electron.cone_diameters_cm"),
        (BASE + RX + "[electron]\nbevels_deg = [20.0]\n", "electron.bevels_deg"),
        (BASE + RX + '[electron]\ndisc = "lead"\n', "electron.disc"),
        (BASE + RX + "[electron]\ntoe_direction = [0, 0, 1]\n", "electron.toe_direction"),
        (BASE + RX + "[electron]\nisodose_percent = 120\n", "electron.isodose_percent"),
        (BASE + RX + '[electron]\nbeam = "no_such_beam"\n', "unknown electron beam"),
        (BASE + '[prescription]\nstructure = "CTV"\n', "prescription.structure"),
    ],
)
def test_bad_electron_configs_exit_2_and_write_nothing(tmp_path, text, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert not out.exists()


def test_bad_beam_file_exit_2_naming_file_and_field(tmp_path):
    beam = tmp_path / "beam.toml"
    beam.write_text('[beam]\nname = "x"\nillustrative = true\n[cones]\ndiameters_cm = [6]\n')
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BASE + RX + f'[electron]\nbeam = "{beam}"\n')
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert str(beam) in res.output and "bevels_deg" in res.output
    assert not (tmp_path / "out").exists()
