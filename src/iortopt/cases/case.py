"""A planning case: the dose grid and its structures, independent of how it was built.

Structures are fractional occupancies on the dose grid (float32 in [0, 1], shape
``grid.shape_zyx``):
the volume of a structure is ``occupancy.sum() * grid.voxel_volume_cm3``, which keeps thin or small
organs at their true volume on a coarse grid. Roles: ``"target"`` or ``"oar"`` (or ``"other"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iortopt.grid import Grid

ROLES = ("target", "oar", "other")


@dataclass(frozen=True)
class Structure:
    """One structure on the dose grid."""

    name: str
    role: str
    occupancy: np.ndarray  # (nz, ny, nx) float32 in [0, 1]

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(
                f"structure {self.name!r}: role must be one of {ROLES}, got {self.role!r}"
            )

    def volume_cm3(self, grid: Grid) -> float:
        return float(self.occupancy.sum(dtype=np.float64)) * grid.voxel_volume_cm3


@dataclass(frozen=True)
class Case:
    """Grid plus structures (in a fixed order) and free-form provenance of how it was made."""

    name: str
    grid: Grid
    structures: tuple[Structure, ...]
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for s in self.structures:
            if s.occupancy.shape != self.grid.shape_zyx:
                raise ValueError(
                    f"structure {s.name!r}: occupancy shape {s.occupancy.shape} does not match "
                    f"grid shape {self.grid.shape_zyx}"
                )

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no structure {name!r}; have {[s.name for s in self.structures]}")

    @property
    def targets(self) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.role == "target")

    @property
    def oars(self) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.role == "oar")
