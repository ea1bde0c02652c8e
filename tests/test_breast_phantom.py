"""Breast phantom for spherical-applicator X-ray IORT (iortopt.cases.breast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iortopt.cases.breast import (
    STRUCTURE_ORDER,
    BreastCaseParams,
    breast_geometry,
    build_breast_case,
    cavity_wall_radius_mm,
    fibonacci_directions,
)

SMOOTH = BreastCaseParams(cavity_irregularity_mm=0.0, skin_distance_mm=15.0)


def _shell_cm3(inner_mm, thickness_mm):
    return 4.0 / 3.0 * math.pi * ((inner_mm + thickness_mm) ** 3 - inner_mm**3) * 1e-3


@pytest.mark.parametrize("radius_mm", [20.0, 17.5, 22.5])
def test_target_shell_volume_matches_analytic(radius_mm):
    # skin 15 mm from the cavity wall: the shell (<= 10 mm beyond a <= 22.5) stays clear of the
    # skin layer (its inner surface is 13 mm beyond the wall at R = 20).
    case, geometry = build_breast_case(SMOOTH, applicator_radius_mm=radius_mm)
    volume = case.structure("PTV_shell").volume_cm3(case.grid)
    expected = _shell_cm3(radius_mm, SMOOTH.target_thickness_mm)
    assert geometry.skin_inner_z_mm >= radius_mm + SMOOTH.target_thickness_mm
    assert volume == pytest.approx(expected, rel=0.03)


def test_shifted_applicator_moves_the_shell():
    centre = (1.5, -2.0, -3.0)
    case, _ = build_breast_case(SMOOTH, 20.0, centre)
    occ = case.structure("PTV_shell").occupancy
    assert case.structure("PTV_shell").volume_cm3(case.grid) == pytest.approx(
        _shell_cm3(20.0, 10.0), rel=0.03
    )
    pts = case.grid.points_mm()
    weights = occ.ravel()
    centroid = (pts * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(centroid, centre, atol=0.1)


def test_applicator_ball_is_not_tissue():
    case, geometry = build_breast_case(BreastCaseParams(), 20.0, (0.5, 0.0, -1.0))
    pts = case.grid.points_mm()
    distance = np.linalg.norm(pts - geometry.applicator_centre_mm, axis=1)
    half_diagonal = 0.5 * math.sqrt(3) * BreastCaseParams().spacing_mm
    inside = distance < geometry.applicator_radius_mm - half_diagonal
    assert inside.sum() > 1000
    for s in case.structures:
        assert np.all(s.occupancy.ravel()[inside] == 0.0), s.name
    # Voxels cut by the surface are only partly tissue: breast + PTV share the same tissue there.
    cut = np.abs(distance - geometry.applicator_radius_mm) < 0.3
    breast = case.structure("breast").occupancy.ravel()[cut]
    assert np.all((breast > 0) & (breast < 1))


def test_structure_names_roles_and_occupancy_bounds():
    case, _ = build_breast_case(BreastCaseParams())
    assert tuple(s.name for s in case.structures) == STRUCTURE_ORDER
    assert [s.name for s in case.targets] == ["PTV_shell"]
    assert {s.name for s in case.oars} == {"skin", "chest_wall", "rib", "lung"}
    tissue = sum(
        case.structure(n).occupancy for n in ("breast", "skin", "chest_wall", "rib", "lung")
    )
    assert tissue.max() <= 1.0 + 1e-6
    ptv, breast = case.structure("PTV_shell").occupancy, case.structure("breast").occupancy
    assert np.all(ptv <= breast + 1e-6)


def test_layer_volumes_match_the_geometry():
    p = BreastCaseParams()
    case, g = build_breast_case(p)
    width_mm = 2 * p.breast_half_width_mm
    skin = width_mm**2 * p.skin_thickness_mm * 1e-3
    muscle = width_mm**2 * p.muscle_thickness_mm * 1e-3
    ribs = sum(1 for y in g.rib_centres_y_mm if abs(y) + p.rib_radius_mm <= p.breast_half_width_mm)
    rib = ribs * math.pi * p.rib_radius_mm**2 * width_mm * 1e-3
    assert case.structure("skin").volume_cm3(case.grid) == pytest.approx(skin, rel=1e-6)
    assert case.structure("chest_wall").volume_cm3(case.grid) == pytest.approx(muscle, rel=1e-6)
    assert case.structure("rib").volume_cm3(case.grid) == pytest.approx(rib, rel=0.03)


@pytest.mark.parametrize(
    "radius_mm, centre", [(20.0, (0, 0, 0)), (15.0, (0, 0, 0)), (22.5, (1.0, 2.0, -2.5))]
)
def test_skin_distance(radius_mm, centre):
    p = BreastCaseParams()
    g = breast_geometry(p, radius_mm, centre)
    expected = p.cavity_radius_mm + p.skin_distance_mm - centre[2] - radius_mm
    assert g.skin_distance_mm() == pytest.approx(expected)
    # Check against the skin structure itself: the top of its column straight above the centre
    # (the top voxel is only partly skin).
    case, _ = build_breast_case(p, radius_mm, centre)
    iy = int(np.argmin(np.abs(case.grid.axis_mm("y") - centre[1])))
    ix = int(np.argmin(np.abs(case.grid.axis_mm("x") - centre[0])))
    column = case.structure("skin").occupancy[:, iy, ix]
    k = np.flatnonzero(column > 0).max()
    h = p.spacing_mm
    top = case.grid.axis_mm("z")[k] + 0.5 * h - (1.0 - column[k]) * h
    # (to within the sub-sample spacing of the supersampled occupancy)
    assert top - centre[2] - radius_mm == pytest.approx(expected, abs=h / p.supersampling)


def test_default_skin_distance_is_the_parameter():
    g = breast_geometry(BreastCaseParams(skin_distance_mm=9.0))
    assert g.skin_distance_mm() == pytest.approx(9.0)


def test_cavity_wobble_amplitude_and_fit_range():
    p = BreastCaseParams(cavity_irregularity_mm=2.0, cavity_seed=3)
    r = cavity_wall_radius_mm(fibonacci_directions(4000), p)
    assert np.abs(r - p.cavity_radius_mm).max() == pytest.approx(2.0, rel=1e-9)
    g = breast_geometry(p)
    assert g.wall_gap_mm(20.0) == pytest.approx(2.0, rel=1e-9)
    assert g.cavity_equivalent_radius_mm == pytest.approx(20.0, abs=0.2)
    smooth = breast_geometry(SMOOTH)
    fits = {a: smooth.fits(a) for a in (14.0, 15.0, 20.0, 25.0, 26.0)}
    assert fits == {14.0: False, 15.0: True, 20.0: True, 25.0: True, 26.0: False}
    # The wobble narrows the range by its amplitude at each end.
    assert g.fits(17.5) and g.fits(22.5) and not g.fits(15.0) and not g.fits(25.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("spacing_mm", 0.0),
        ("cavity_radius_mm", -1.0),
        ("supersampling", 0),
        ("skin_thickness_mm", 20.0),
        ("cavity_irregularity_mm", 15.0),
        ("rib_spacing_mm", 8.0),
    ],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BreastCaseParams(**{field: value})
