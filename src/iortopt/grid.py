"""Regular dose grids in patient coordinates (DICOM-like).

Array axes are (z, y, x), like DICOM frames, rows and columns. Points are (..., 3) arrays of
(x, y, z) in mm. ``origin_xyz_mm`` is the centre of the first voxel (index 0, 0, 0), as DICOM's
ImagePositionPatient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular grid: ``shape_zyx`` voxels, ``spacing_xyz_mm`` and ``origin_xyz_mm`` in mm."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]

    def __post_init__(self):
        shape = tuple(int(n) for n in self.shape_zyx)
        spacing = tuple(float(s) for s in self.spacing_xyz_mm)
        origin = tuple(float(o) for o in self.origin_xyz_mm)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape_zyx must be three positive integers, got {self.shape_zyx}")
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(
                f"spacing_xyz_mm must be three positive numbers, got {self.spacing_xyz_mm}"
            )
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise ValueError(
                f"origin_xyz_mm must be three finite numbers, got {self.origin_xyz_mm}"
            )
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "spacing_xyz_mm", spacing)
        object.__setattr__(self, "origin_xyz_mm", origin)

    @classmethod
    def from_bounds(cls, lower_xyz_mm, upper_xyz_mm, spacing_xyz_mm) -> Grid:
        """Grid with first voxel centre at ``lower`` and the last at (up to rounding) ``upper``."""
        lower = np.asarray(lower_xyz_mm, float)
        spacing = np.broadcast_to(np.asarray(spacing_xyz_mm, float), (3,))
        counts = (
            np.floor((np.asarray(upper_xyz_mm, float) - lower) / spacing + 1e-6).astype(int) + 1
        )
        return cls(tuple(counts[::-1]), tuple(spacing), tuple(lower))

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape_zyx))

    @property
    def voxel_volume_cm3(self) -> float:
        return float(np.prod(self.spacing_xyz_mm)) * 1e-3

    def axis_mm(self, axis: str) -> np.ndarray:
        """Voxel-centre coordinates (mm) along ``"x"``, ``"y"`` or ``"z"``."""
        k = "xyz".index(axis)
        n = self.shape_zyx[2 - k]
        return self.origin_xyz_mm[k] + self.spacing_xyz_mm[k] * np.arange(n)

    def points_mm(self, dtype=np.float64) -> np.ndarray:
        """All voxel centres as (nz * ny * nx, 3) (x, y, z) mm, in C order of (z, y, x)."""
        z, y, x = np.meshgrid(
            self.axis_mm("z"), self.axis_mm("y"), self.axis_mm("x"), indexing="ij"
        )
        return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=-1).astype(dtype)

    def index_to_mm(self, index_zyx) -> np.ndarray:
        """Voxel indices (..., 3) in (z, y, x) order to (x, y, z) mm."""
        idx = np.asarray(index_zyx, float)[..., ::-1]
        return np.asarray(self.origin_xyz_mm) + idx * np.asarray(self.spacing_xyz_mm)

    def mm_to_index(self, points_mm) -> np.ndarray:
        """(x, y, z) mm to fractional voxel indices (..., 3) in (z, y, x) order."""
        rel = (np.asarray(points_mm, float) - np.asarray(self.origin_xyz_mm)) / np.asarray(
            self.spacing_xyz_mm
        )
        return rel[..., ::-1]

    def contains_mm(self, point_mm, margin_voxels: float = 0.0) -> bool:
        """Whether the (x, y, z) mm point lies within the voxel centres' box widened by
        ``margin_voxels`` voxels on every side (0.5: the voxels' outer faces)."""
        index = self.mm_to_index(point_mm)
        high = np.asarray(self.shape_zyx) - 1 + margin_voxels
        return bool(np.all(index >= -margin_voxels - 1e-6) and np.all(index <= high + 1e-6))

    def to_attrs(self) -> dict:
        """JSON-serialisable metadata (stored with every dose array)."""
        return {
            "shape_zyx": list(self.shape_zyx),
            "spacing_xyz_mm": list(self.spacing_xyz_mm),
            "origin_xyz_mm": list(self.origin_xyz_mm),
            "axes": "z,y,x; origin = centre of voxel (0,0,0)",
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> Grid:
        return cls(
            tuple(attrs["shape_zyx"]), tuple(attrs["spacing_xyz_mm"]), tuple(attrs["origin_xyz_mm"])
        )


def sub_offsets_mm(grid: Grid, supersampling: int) -> np.ndarray:
    """(supersampling^3, 3) offsets (x, y, z) mm of the sub-samples from a voxel centre."""
    o = (np.arange(supersampling) + 0.5) / supersampling - 0.5
    oz, oy, ox = np.meshgrid(o, o, o, indexing="ij")
    return np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=-1) * np.asarray(grid.spacing_xyz_mm)
