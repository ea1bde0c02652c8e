"""zarr stores: round trip with grid metadata, and no half-written store on failure."""

import numpy as np
import pytest
import zarr

from iortopt.grid import Grid
from iortopt.io.store import atomic_path, read_dose_store, write_dose_store


def test_dose_store_round_trip(tmp_path):
    grid = Grid((3, 4, 5), (1.0, 2.0, 3.0), (-1.0, 0.5, 10.0))
    dose = np.random.default_rng(1).random(grid.shape_zyx).astype(np.float32)
    path = write_dose_store(tmp_path / "d.zarr", dose, grid, {"source": "x"})
    values, grid2, attrs = read_dose_store(path)
    np.testing.assert_array_equal(values, dose)
    assert grid2 == grid
    assert attrs["source"] == "x"
    # plain zarr can read it too
    assert zarr.open_group(str(path), mode="r")["dose_gy"].shape == (3, 4, 5)


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_existing(tmp_path):
    grid = Grid((1, 1, 2), (1, 1, 1), (0, 0, 0))
    path = tmp_path / "d.zarr"
    write_dose_store(path, np.zeros((1, 1, 2)), grid)
    write_dose_store(path, np.ones((1, 1, 2)), grid)
    assert read_dose_store(path)[0].sum() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["d.zarr"]
