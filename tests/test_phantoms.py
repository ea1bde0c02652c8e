"""The presacral HDR flap phantom: analytic volumes, catheter and dwell geometry, validation."""

import math
import time

import numpy as np
import pytest

from iortopt.cases.catheters import select_active
from iortopt.cases.flap import FlapCaseParams, bed_depth_mm, build_flap_case, ureter_centreline_mm

P = FlapCaseParams()
R = P.surface_radius_mm


def tube_volume_cm3(params):
    """pi r^2 times the length of the ureter centreline."""
    centreline = ureter_centreline_mm(params)
    length_mm = np.linalg.norm(np.diff(centreline, axis=0), axis=1).sum()
    return math.pi * params.ureter_radius_mm**2 * length_mm * 1e-3


@pytest.fixture(scope="module")
def built():
    start = time.perf_counter()
    case, applicator = build_flap_case(P)
    return case, applicator, time.perf_counter() - start


@pytest.fixture(scope="module")
def dwells(built):
    return built[1].dwells(step_mm=5.0)


def test_default_case_is_small_and_fast(built):
    case, _, seconds = built
    assert seconds < 3.0
    assert case.grid.n_voxels < 400_000
    assert case.grid.spacing_xyz_mm == (2.0, 2.0, 2.0)
    assert [(s.name, s.role) for s in case.structures[:4]] == [
        ("CTV", "target"),
        ("sacrum", "oar"),
        ("ureter", "oar"),
        ("bowel", "oar"),
    ]
    assert case.info["params"] == {f: getattr(P, f) for f in case.info["params"]}
    assert "description" in case.info
    # Voxel centres on multiples of the spacing.
    np.testing.assert_allclose(np.mod(case.grid.origin_xyz_mm, 2.0), 0.0, atol=1e-9)


def test_occupancies_are_fractions_and_disjoint(built):
    case = built[0]
    total = np.zeros(case.grid.shape_zyx, np.float64)
    for s in case.structures:
        assert s.occupancy.dtype == np.float32
        assert s.occupancy.min() >= 0.0 and s.occupancy.max() <= 1.0
        assert s.occupancy.max() == 1.0
        total += s.occupancy
    assert total.max() <= 1.0 + 1e-6
    # The grid margin leaves the border empty.
    border = np.ones(case.grid.shape_zyx, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert total[border].max() == 0.0


def test_ctv_volume_matches_cylindrical_shell_sector(built):
    case = built[0]
    half_angle = P.target_length_mm / (2 * R)
    exact_mm3 = P.target_width_mm * half_angle * ((R + P.ctv_depth_mm) ** 2 - R**2)
    assert case.structure("CTV").volume_cm3(case.grid) == pytest.approx(exact_mm3 * 1e-3, rel=0.03)


def test_ureter_volume_matches_tube_despite_coarse_grid(built):
    case = built[0]
    volume_cm3 = case.structure("ureter").volume_cm3(case.grid)
    assert volume_cm3 == pytest.approx(tube_volume_cm3(P), rel=0.05)


def test_ureter_depth_runs_from_start_to_end(built):
    case = built[0]
    centreline_depth = bed_depth_mm(ureter_centreline_mm(P), R)
    assert centreline_depth[0] == pytest.approx(P.ureter_depth_start_mm, abs=1e-6)
    assert centreline_depth[-1] == pytest.approx(P.ureter_depth_end_mm, abs=1e-6)
    grid = case.grid
    occupancy = case.structure("ureter").occupancy.ravel()
    inside = occupancy > 0
    depth = bed_depth_mm(grid.points_mm()[inside], R)
    shallowest = P.ureter_depth_start_mm - P.ureter_radius_mm
    assert shallowest - 1.0 <= depth.min() <= shallowest + 1.0
    # Part of the tube lies 10-15 mm deep, within reach of the dose.
    assert occupancy[inside][(depth >= 10) & (depth <= 15)].sum() > 10
    x = grid.points_mm()[inside, 0]
    assert np.abs(x - P.ureter_lateral_mm).max() <= P.ureter_radius_mm + 1.0


def test_structures_lie_at_their_depths(built):
    case = built[0]
    points = case.grid.points_mm()
    depth = bed_depth_mm(points, R)
    half_voxel = 1.0 * math.sqrt(3)

    def depths(name):
        return depth[case.structure(name).occupancy.ravel() > 0]

    assert depths("CTV").min() > -half_voxel
    assert depths("CTV").max() < P.ctv_depth_mm + half_voxel
    assert depths("sacrum").min() > P.sacrum_depth_mm - half_voxel
    assert depths("sacrum").max() < P.sacrum_depth_mm + P.sacrum_thickness_mm + half_voxel
    bowel_near = -(P.flap_thickness_mm + P.bowel_gap_mm)
    assert depths("bowel").max() < bowel_near + half_voxel
    assert depths("bowel").min() > bowel_near - P.bowel_thickness_mm - half_voxel


def test_catheters_are_parallel_arcs_spaced_apart(built):
    applicator = built[1]
    assert len(applicator.catheters) == P.n_catheters
    x = np.array([c[:, 0].mean() for c in applicator.catheters])
    np.testing.assert_allclose(np.diff(x), P.catheter_spacing_mm)
    np.testing.assert_allclose(x.mean(), 0.0, atol=1e-9)
    np.testing.assert_allclose(applicator.catheter_lengths_mm, P.catheter_length_mm, rtol=1e-4)
    for c in applicator.catheters:
        np.testing.assert_allclose(c[:, 0], c[0, 0])


def test_dwells_at_source_to_surface_distance(dwells):
    assert len(dwells) == P.n_catheters * (int(P.catheter_length_mm // 5.0) + 1)
    depth = bed_depth_mm(dwells.positions_mm, R)
    np.testing.assert_allclose(depth, -P.source_to_surface_mm, atol=0.1)


def test_dwell_step_along_arc_length(dwells):
    radius = R - P.source_to_surface_mm
    y, z = dwells.positions_mm[:, 1], dwells.positions_mm[:, 2]
    phi = np.arctan2(y, R - z)
    for k in range(P.n_catheters):
        arc = radius * phi[dwells.catheter == k]
        np.testing.assert_allclose(np.diff(arc), 5.0, atol=0.01)
        np.testing.assert_allclose(arc[0], -P.catheter_length_mm / 2, atol=0.01)


def test_dwell_axes_are_unit_tangents_that_turn(dwells):
    axes = dwells.axes
    np.testing.assert_allclose(np.linalg.norm(axes, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(axes[:, 0], 0.0, atol=1e-12)  # catheters lie in y-z planes
    radial = dwells.positions_mm - np.array([0.0, 0.0, R])
    radial[:, 0] = 0.0
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    np.testing.assert_allclose(np.sum(axes * radial, axis=1), 0.0, atol=0.01)
    # Towards the tip (at -y): the axis points to -y everywhere on this arc.
    assert np.all(axes[:, 1] < 0)
    one = axes[dwells.catheter == 0]
    angle_deg = np.degrees(np.arccos(np.clip(one[0] @ one[-1], -1, 1)))
    expected_deg = np.degrees(P.catheter_length_mm / (R - P.source_to_surface_mm))
    assert angle_deg == pytest.approx(expected_deg, abs=1.0)


def test_active_dwells_are_those_over_the_target(built, dwells):
    case = built[0]
    active = select_active(dwells, case.structure("CTV").occupancy, case.grid, 10.0)
    x = dwells.positions_mm[:, 0]
    surface_arc = R * np.arctan2(dwells.positions_mm[:, 1], R - dwells.positions_mm[:, 2])
    over = (np.abs(x) < P.target_width_mm / 2) & (
        np.abs(surface_arc) < P.target_length_mm / 2 - 2.0
    )
    far = np.abs(surface_arc) > P.target_length_mm / 2 + 10.0
    assert over.sum() > 0 and far.sum() > 0
    assert active[over].all()
    assert not active[far].any()
    pairs = dwells.subset(active).neighbour_pairs()
    assert len(pairs) == active.sum() - P.n_catheters


@pytest.mark.parametrize(
    "field, value",
    [
        ("spacing_mm", 0.0),
        ("spacing_mm", float("nan")),
        ("supersampling", 0),
        ("n_catheters", 2.5),
        ("catheter_length_mm", -1.0),
        ("source_to_surface_mm", 10.0),
        ("surface_radius_mm", 25.0),
        ("catheter_length_mm", 500.0),
        ("ureter_depth_start_mm", 2.0),
        ("bowel_gap_mm", -1.0),
        ("grid_margin_mm", "15"),
    ],
)
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"FlapCaseParams\.{field} = "):
        FlapCaseParams(**{field: value})


def test_variant_without_overlap_and_finer_sampling():
    params = FlapCaseParams(ureter_lateral_mm=40.0, supersampling=4, catheter_length_mm=60.0)
    case, applicator = build_flap_case(params)
    volume_cm3 = case.structure("ureter").volume_cm3(case.grid)
    assert volume_cm3 == pytest.approx(tube_volume_cm3(params), rel=0.03)
    assert case.grid.axis_mm("x").max() >= 40.0 + params.ureter_radius_mm + params.grid_margin_mm
    assert len(applicator.dwells(step_mm=10.0)) == params.n_catheters * 7
