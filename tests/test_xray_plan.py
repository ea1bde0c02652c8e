"""Size / position / time optimisation for spherical X-ray IORT
(iortopt.modalities.xray_sphere.choice)."""

from __future__ import annotations

import numpy as np
import pytest

from iortopt.cases.breast import BreastCaseParams
from iortopt.phantoms.breast import optimise_xray
from iortopt.physics.xray import load_xray_beam

#: A small, fast case: 3 mm grid, narrower region, thin lung.
SMALL = dict(
    spacing_mm=3.0,
    supersampling=2,
    breast_half_width_mm=36.0,
    lung_thickness_mm=9.0,
    grid_margin_mm=3.0,
)
ROW_KEYS = {
    "diameter_cm",
    "fits_cavity",
    "time_min",
    "surface_dose_gy",
    "dose_at_10mm_gy",
    "target_coverage_percent",
    "skin_distance_mm",
    "skin_flag",
    "skin_max_gy",
    "chest_wall_D2cc_gy",
    "rib_D2cc_gy",
    "lung_mean_gy",
    "score",
}


@pytest.fixture(scope="module")
def beam():
    return load_xray_beam("generic_50kV_spheres")


@pytest.fixture(scope="module")
def default_result(beam):
    return optimise_xray(BreastCaseParams(**SMALL), beam, relaxation_iterations=40)


def test_chosen_size_fits_and_keeps_the_skin_away(default_result, beam):
    r = default_result
    assert len(r.comparison) == len(beam.diameters_cm)
    assert [row["diameter_cm"] for row in r.comparison] == list(beam.diameters_cm)
    for row in r.comparison:
        assert ROW_KEYS <= set(row)
    chosen = r.chosen
    assert chosen["fits_cavity"] and chosen["skin_distance_ok"]
    assert chosen["skin_distance_mm"] >= 5.0
    assert chosen["diameter_cm"] in beam.diameters_cm
    assert isinstance(chosen["reason"], str) and f"{chosen['diameter_cm']:g} cm" in chosen["reason"]
    # Surface prescription: 20 Gy at the surface, time = 20 Gy / surface rate.
    assert chosen["surface_dose_gy"] == pytest.approx(20.0, rel=1e-5)
    row = next(x for x in r.comparison if x["diameter_cm"] == chosen["diameter_cm"])
    assert chosen["time_min"] == pytest.approx(row["time_min"])


def test_result_carries_case_dose_notes_and_timings(default_result):
    r = default_result
    assert r.dose_gy.shape == r.case.grid.shape_zyx and r.dose_gy.dtype == np.float32
    assert np.all(np.isfinite(r.dose_gy)) and r.dose_gy.max() <= 20.0 * 1.001
    assert any("ILLUSTRATIVE" in n for n in r.notes)
    assert any(r.formalism in n for n in r.notes) and r.formalism == "TARGIT (Zeiss V4.0)"
    assert r.beam_name == "generic_50kV_spheres"
    assert set(r.timings) >= {"setup_s", "compile_s", "optimise_s", "full_dose_s"}
    assert set(r.continuous) >= {"radius_mm", "centre_mm", "time_min", "objective"}
    assert 7.5 <= r.continuous["radius_mm"] <= 25.0
    # The final case is built for the chosen applicator.
    info = r.case.info["applicator"]
    assert info["radius_mm"] == pytest.approx(5.0 * r.chosen["diameter_cm"])
    np.testing.assert_allclose(info["centre_mm"], r.chosen["centre_mm"])


def test_comparison_physics_is_consistent(default_result):
    rows = default_result.comparison
    # 20 Gy at the surface of every size: a larger sphere gives more dose at depth and to OARs.
    d10 = [row["dose_at_10mm_gy"] for row in rows]
    assert np.all(np.diff(d10) > 0)
    assert np.all(np.diff([row["chest_wall_D2cc_gy"] for row in rows]) > 0)
    assert np.all(np.diff([row["skin_distance_mm"] for row in rows]) < 0)
    # PTV 10 mm deep: full coverage at 5 Gy once the dose at 10 mm is above 5 Gy.
    for row in rows:
        if row["dose_at_10mm_gy"] > 5.05:
            assert row["target_coverage_percent"] == pytest.approx(100.0)
        if row["dose_at_10mm_gy"] < 4.5:
            assert row["target_coverage_percent"] < 95.0


def test_skin_flag_raised_when_the_skin_is_4mm_from_the_cavity(beam):
    params = BreastCaseParams(**SMALL, skin_distance_mm=4.0)
    r = optimise_xray(params, beam, optimise_position=False, relaxation_iterations=20)
    for row in r.comparison:
        expected = 4.0 + params.cavity_radius_mm - 5.0 * row["diameter_cm"]
        assert row["skin_distance_mm"] == pytest.approx(expected)
        assert row["skin_flag"] == (expected < 5.0)
    assert all(row["skin_flag"] for row in r.comparison if row["diameter_cm"] >= 4.0)
    # A smaller applicator that still fits keeps 5 mm: it is chosen.
    assert r.chosen["skin_distance_ok"] and r.chosen["diameter_cm"] < 4.0


def test_depth_prescription(beam):
    r = optimise_xray(
        BreastCaseParams(**SMALL),
        beam,
        prescription_mode="depth",
        prescription_depth_mm=10.0,
        catalogue_diameters_cm=[3.5, 4.0, 4.5],
        optimise_position=False,
        relaxation_iterations=10,
    )
    assert [row["diameter_cm"] for row in r.comparison] == [3.5, 4.0, 4.5]
    for row in r.comparison:
        assert row["dose_at_10mm_gy"] == pytest.approx(20.0, rel=1e-5)
        assert row["surface_dose_gy"] > 20.0
    with pytest.raises(ValueError, match="prescription_mode"):
        optimise_xray(BreastCaseParams(**SMALL), beam, prescription_mode="volume")
    with pytest.raises(ValueError, match="not in beam"):
        optimise_xray(BreastCaseParams(**SMALL), beam, catalogue_diameters_cm=[3.3])


def test_size_choice_equals_brute_force_on_full_grids(beam):
    """Each size planned on its own full grid (its own case, full-grid dose, plain DVH metrics)
    and ranked by the documented rule picks the same size as the batched catalogue search."""
    from iortopt.cases.breast import build_breast_case
    from iortopt.evaluation import dvh
    from iortopt.modalities.xray_sphere.choice import full_grid_dose_gy
    from iortopt.physics.xray import time_for_surface_dose_min

    params = BreastCaseParams(**SMALL)
    batched = optimise_xray(params, beam, optimise_position=False, relaxation_iterations=10)
    best, best_score = None, -np.inf
    for diameter in beam.diameters_cm:
        radius = 5.0 * diameter
        case, geometry = build_breast_case(params, applicator_radius_mm=radius)
        if not geometry.fits() or geometry.skin_distance_mm() < 5.0:
            continue
        time_min = time_for_surface_dose_min(20.0, radius, beam)
        dose = full_grid_dose_gy(case, geometry.cavity_centre_mm, radius, time_min, beam)
        vv = case.grid.voxel_volume_cm3
        occ = {s.name: s.occupancy for s in case.structures}
        coverage = 100.0 * dvh.volume_at_dose(dose, occ["PTV_shell"], 5.0)
        oar = (
            float(dose[occ["skin"] > 0].max())
            + dvh.dose_at_volume_cm3(dose, occ["chest_wall"], vv, 2.0)
            + dvh.dose_at_volume_cm3(dose, occ["rib"], vv, 2.0)
            + float(np.sum(dose * occ["lung"]) / np.sum(occ["lung"]))
        )
        # The documented score: coverage - 0.1 OAR/Rx - 0.1 (wall gap / 5 mm)^2, in percent.
        score = coverage - 10.0 * oar / 20.0 - 10.0 * (geometry.wall_gap_mm() / 5.0) ** 2
        if score > best_score:
            best, best_score = diameter, score
    assert best == batched.chosen["diameter_cm"]
