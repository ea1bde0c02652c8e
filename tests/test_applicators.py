"""Flap applicator geometry: dwell placement, axes, neighbours, active selection."""

import numpy as np
import pytest

from iortopt.cases.catheters import Dwells, FlapApplicator, select_active
from iortopt.grid import Grid


def straight_catheter(x_mm=0.0, length_mm=40.0):
    """A straight catheter along +y with its tip at y = 0 (connector at y = length)."""
    return np.array([[x_mm, 0.0, 0.0], [x_mm, length_mm / 2, 0.0], [x_mm, length_mm, 0.0]])


def test_dwells_on_straight_catheter_every_step_from_tip():
    app = FlapApplicator((straight_catheter(0.0), straight_catheter(10.0)))
    dwells = app.dwells(step_mm=5.0, first_offset_mm=2.0)
    assert len(dwells) == 2 * 8  # 2, 7, ..., 37 mm
    first = dwells.catheter == 0
    np.testing.assert_allclose(dwells.positions_mm[first, 1], 2.0 + 5.0 * np.arange(8))
    np.testing.assert_array_equal(dwells.index[first], np.arange(8))
    np.testing.assert_allclose(dwells.positions_mm[~first, 0], 10.0)
    # The axis points from the connector towards the tip (-y here).
    np.testing.assert_allclose(dwells.axes, np.tile([0.0, -1.0, 0.0], (16, 1)))


def test_last_dwell_at_catheter_end_is_kept():
    dwells = FlapApplicator((straight_catheter(length_mm=40.0),)).dwells(step_mm=5.0)
    assert len(dwells) == 9
    np.testing.assert_allclose(dwells.positions_mm[-1], [0.0, 40.0, 0.0])


def test_dwells_follow_a_bent_polyline():
    bent = np.array([[0.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 10.0, 10.0]])
    dwells = FlapApplicator((bent,)).dwells(step_mm=4.0)
    np.testing.assert_allclose(dwells.positions_mm[3], [0.0, 10.0, 2.0])
    np.testing.assert_allclose(dwells.axes[0], [0.0, -1.0, 0.0])
    np.testing.assert_allclose(dwells.axes[-1], [0.0, 0.0, -1.0])


def test_duplicate_points_are_dropped():
    poly = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    dwells = FlapApplicator((poly,)).dwells(step_mm=5.0)
    assert len(dwells) == 3
    assert np.all(np.isfinite(dwells.axes))


@pytest.mark.parametrize(
    "catheters, match",
    [
        ((), "at least one catheter"),
        ((np.zeros((1, 3)),), "at least 2 distinct points"),
        ((np.zeros((3, 3)),), "at least 2 distinct points"),
        ((np.zeros((3, 2)),), r"\(K, 3\)"),
        ((np.array([[0.0, 0.0, np.nan], [1.0, 0.0, 0.0]]),), "finite"),
    ],
)
def test_bad_polylines_raise(catheters, match):
    with pytest.raises(ValueError, match=match):
        FlapApplicator(catheters)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step_mm=0.0), "step_mm"),
        (dict(step_mm=-5.0), "step_mm"),
        (dict(step_mm=np.nan), "step_mm"),
        (dict(first_offset_mm=-1.0), "first_offset_mm"),
        (dict(first_offset_mm=50.0), "exceeds every catheter length"),
    ],
)
def test_bad_dwell_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlapApplicator((straight_catheter(),)).dwells(**kwargs)


def test_neighbour_pairs_within_catheters_and_after_subset():
    dwells = FlapApplicator((straight_catheter(0.0), straight_catheter(10.0))).dwells(step_mm=10.0)
    pairs = dwells.neighbour_pairs()
    assert pairs.shape == (2 * 4, 2)
    assert np.all(dwells.catheter[pairs[:, 0]] == dwells.catheter[pairs[:, 1]])
    assert np.all(dwells.index[pairs[:, 1]] == dwells.index[pairs[:, 0]] + 1)

    keep = np.ones(len(dwells), bool)
    keep[[2, 5]] = False  # catheter 0 position 2, catheter 1 position 0
    sub = dwells.subset(keep)
    assert len(sub) == len(dwells) - 2
    sub_pairs = sub.neighbour_pairs()
    assert sub_pairs.shape == (3 + 3, 2)
    assert np.all(sub.index[sub_pairs[:, 1]] > sub.index[sub_pairs[:, 0]])
    assert dwells.subset(np.zeros(len(dwells), bool)).neighbour_pairs().shape == (0, 2)


def test_dwells_validation():
    with pytest.raises(ValueError, match="positions_mm"):
        Dwells(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="unit"):
        Dwells(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="catheter"):
        Dwells(np.zeros((2, 3)), np.eye(3)[:2], np.zeros(3, int), np.zeros(2, int))
    dwells = FlapApplicator((straight_catheter(),)).dwells()
    with pytest.raises(ValueError, match="mask"):
        dwells.subset(np.ones(3, bool))


def test_select_active_by_distance_to_target():
    grid = Grid.from_bounds((-10, -10, -10), (50, 10, 10), 2.0)
    occupancy = np.zeros(grid.shape_zyx, np.float32)
    x = grid.axis_mm("x")
    occupancy[:, :, x <= 10] = 1.0  # target: x <= 10 mm (voxel centres)
    occupancy[:, :, (x > 10) & (x <= 20)] = 0.4  # partial voxels below 0.5 do not count
    line = np.array([[0.0, 0.0, 20.0], [40.0, 0.0, 20.0]])  # 10 mm above the top voxel centres
    dwells = FlapApplicator((line,)).dwells(step_mm=5.0)
    active = select_active(dwells, occupancy, grid, max_distance_mm=12.0)
    expected = np.hypot(np.maximum(dwells.positions_mm[:, 0] - 10.0, 0.0), 10.0) <= 12.0
    np.testing.assert_array_equal(active, expected)
    with pytest.raises(ValueError, match="no dwell position is within"):
        select_active(dwells, occupancy, grid, max_distance_mm=5.0)
    with pytest.raises(ValueError, match="does not match grid shape"):
        select_active(dwells, occupancy[1:], grid, max_distance_mm=12.0)
    with pytest.raises(ValueError, match="occupancy >= 0.5"):
        select_active(dwells, occupancy * 0.4, grid, max_distance_mm=12.0)
