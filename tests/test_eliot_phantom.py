"""ELIOT-type breast phantom for electron IORT (iortopt.cases.eliot)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iortopt.cases.eliot import (
    STRUCTURE_ORDER,
    EliotCaseParams,
    build_eliot_case,
    build_eliot_case_with_samples,
    eliot_geometry,
)

P = EliotCaseParams()


def _analytic_cm3(p: EliotCaseParams, n_ribs: int) -> dict[str, float]:
    side = 2.0 * p.half_width_mm
    return {
        "PTV_gland": math.pi * p.target_radius_mm**2 * p.gland_thickness_mm * 1e-3,
        "skin": p.skin_thickness_mm * (side**2 - math.pi * p.skin_opening_radius_mm**2) * 1e-3,
        "chest_wall": side**2 * p.muscle_thickness_mm * 1e-3,
        "rib": n_ribs * math.pi * p.rib_radius_mm**2 * side * 1e-3,
        "lung": side**2 * p.lung_thickness_mm * 1e-3,
        "gland": (
            side**2 * p.gland_thickness_mm
            - p.skin_thickness_mm * (side**2 - math.pi * p.skin_opening_radius_mm**2)
        )
        * 1e-3,
    }


@pytest.mark.parametrize("tilt_deg", [0.0, 20.0])
def test_volumes_match_analytic(tilt_deg):
    params = EliotCaseParams(surface_tilt_deg=tilt_deg)
    case, geometry, samples = build_eliot_case_with_samples(params)
    expected = _analytic_cm3(params, len(geometry.rib_centres_y_mm))
    assert [s.name for s in case.structures] == list(STRUCTURE_ORDER)
    assert case.targets[0].name == "PTV_gland"
    for s in case.structures:
        assert s.volume_cm3(case.grid) == pytest.approx(expected[s.name], rel=0.03), s.name
        # The samples carry the same volume, at points inside the structure.
        points, weights = samples[s.name]
        assert weights.sum() == pytest.approx(s.volume_cm3(case.grid), rel=1e-6)
        if s.name in ("chest_wall", "lung", "PTV_gland"):  # convex: centroids stay inside
            assert geometry.labels(points)[s.name].mean() > 0.99


def test_layers_and_disc_space():
    case, g = build_eliot_case(P)
    assert g.gland_bottom_w_mm == -20.0 and g.muscle_front_w_mm == -26.0
    np.testing.assert_allclose(g.surface_normal, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(g.disc_plane_point_mm, [0.0, 0.0, -20.0])
    pts = case.grid.points_mm()
    z = pts[:, 2]
    occupancy = np.stack([s.occupancy.ravel() for s in case.structures if s.name != "gland"])
    # Voxel centres sit at odd millimetres: layer boundaries at round depths are voxel faces,
    # so nothing but the disc space lies between z = -26 and -20 and no tissue above z = 0.
    assert np.all(np.abs(z - np.round(z)) < 1e-9) and np.all(np.round(z) % 2 == 1)
    assert occupancy[:, (z > -26) & (z < -20)].sum() == 0.0
    assert occupancy[:, z > 0].sum() == 0.0
    assert not np.any(g.is_tissue(pts[(z > -26) & (z < -20)]))
    # The target is part of the gland; skin only beyond the incision radius.
    ptv, gland = case.structure("PTV_gland").occupancy, case.structure("gland").occupancy
    assert np.all(ptv <= gland + 1e-6)
    skin = case.structure("skin").occupancy.ravel() > 0
    assert np.all(np.hypot(pts[skin, 0], pts[skin, 1]) > P.skin_opening_radius_mm - 2.0)


def test_tilted_surface_rotates_every_layer():
    g = eliot_geometry(EliotCaseParams(surface_tilt_deg=20.0))
    a = math.radians(20.0)
    np.testing.assert_allclose(g.surface_normal, [0.0, -math.sin(a), math.cos(a)], atol=1e-12)
    # Along the normal below the origin: 10 mm deep is target, 23 mm the disc space (no
    # structure, no tissue), 30 mm the muscle.
    for depth, name in ((10.0, "PTV_gland"), (30.0, "chest_wall")):
        labels = g.labels(-depth * g.surface_normal)
        assert labels[name]
    assert not any(g.labels(-23.0 * g.surface_normal).values())
    assert not g.is_tissue(-23.0 * g.surface_normal)
    assert g.is_tissue(-10.0 * g.surface_normal)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("gland_thickness_mm", 0.0, "> 0"),
        ("supersampling", 0, "integer"),
        ("target_radius_mm", 50.0, "skin_opening_radius_mm"),
        ("skin_thickness_mm", 25.0, "gland_thickness_mm"),
        ("rib_spacing_mm", 8.0, "rib_radius_mm"),
        ("surface_tilt_deg", 60.0, "tilt"),
        ("skin_opening_radius_mm", 70.0, "half_width_mm"),
    ],
)
def test_invalid_parameters_name_the_field(field, value, expected):
    with pytest.raises(ValueError) as err:
        EliotCaseParams(**{field: value})
    assert field in str(err.value) and expected in str(err.value)


def test_rib_distance_running_minimum_equals_the_broadcast_minimum():
    from iortopt.cases.eliot import _nearest_square

    rng = np.random.default_rng(3)
    values = rng.uniform(-80.0, 80.0, (5, 7, 9))
    centres = (-50.0, -25.0, 0.0, 25.0, 50.0)
    expected = np.min((values[..., None] - np.asarray(centres)) ** 2, axis=-1)
    assert np.array_equal(_nearest_square(values, centres), expected)
    assert np.all(np.isinf(_nearest_square(values, ())))


def test_sample_of_a_voxel_inside_one_structure_is_its_centre():
    params = EliotCaseParams(spacing_mm=4.0)
    case, _, samples = build_eliot_case_with_samples(params)
    centres = case.grid.points_mm()
    for s in case.structures:
        occ = s.occupancy.reshape(-1)
        pts, _ = samples[s.name]
        full = occ[occ > 0] == 1.0  # every sub-sample in the structure
        if s.name in ("PTV_gland", "chest_wall", "lung"):
            assert full.any()
        np.testing.assert_allclose(pts[full], centres[occ == 1.0], atol=1e-9)
