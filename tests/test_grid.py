"""Grid geometry helpers against hand-computed bounds."""

from iortopt.grid import Grid


def test_contains_mm_voxel_centres_and_outer_faces():
    # x centres 10, 12, 14 (faces 9..15); y centres -5, -2 (faces -6.5..-0.5); z single plane 0
    grid = Grid((1, 2, 3), (2.0, 3.0, 4.0), (10.0, -5.0, 0.0))
    assert grid.contains_mm((10.0, -5.0, 0.0)) and grid.contains_mm((14.0, -2.0, 0.0))
    assert not grid.contains_mm((14.5, -2.0, 0.0))
    assert grid.contains_mm((14.5, -2.0, 0.0), margin_voxels=0.5)
    assert grid.contains_mm((9.0, -6.5, -2.0), margin_voxels=0.5)
    assert not grid.contains_mm((8.9, -5.0, 0.0), margin_voxels=0.5)
    assert not grid.contains_mm((12.0, -2.0, 2.1), margin_voxels=0.5)
