"""A planning case: the dose grid and its structures, independent of how it was built.

Structures are fractional occupancies on the dose grid (float32 in [0, 1], shape
``grid.shape_zyx``):
the volume of a structure is ``occupancy.sum() * grid.voxel_volume_cm3``, which keeps thin or small
organs at their true volume on a coarse grid. Roles:

- ``"target"``, ``"oar"``: planned for (objectives, goals, plan indices) and reported;
- ``"cavity"`` (the surgical / lumpectomy cavity) and ``"body"`` (the patient outline, e.g. the
  RTSTRUCT EXTERNAL): reported, never OARs; a ``body`` structure defines :meth:`Case.body_mask`;
- ``"other"``: kept for display and density, left out of the printed report.

HU (``Case.hu``, (nz, ny, nx) float32 on the dose grid) is optional: a case without HU is
water (0 HU) everywhere. The relative electron density and mass density maps come from the HU
through the case's calibration (:mod:`iortopt.cases.hu_calibration`; ``None`` = the packaged
ILLUSTRATIVE generic one), computed on demand rather than stored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from iortopt.cases.hu_calibration import HuCalibration, default_calibration
from iortopt.grid import Grid

ROLES = ("target", "oar", "cavity", "body", "other")
#: Without a ``body`` structure, the air outside the patient is every connected region of true
#: air (HU <= ``AIR_HU``) that touches the edge of the grid, plus its neighbours (6-connected) of
#: HU <= ``BODY_THRESHOLD_HU`` (the partial-volume voxels at the skin); every other voxel is
#: tissue, enclosed gas and lung (about -750 HU) included. In the one-voxel rim on either side
#: of that boundary the tissue fraction is the air-water mix of the HU, (HU + 1000) / 1000 in
#: [0, 1] (partial volume at the skin).
BODY_THRESHOLD_HU = -500.0
AIR_HU = -950.0


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
    """Grid plus structures (in a fixed order), optional HU and its calibration, and free-form
    provenance of how it was made."""

    name: str
    grid: Grid
    structures: tuple[Structure, ...]
    info: dict = field(default_factory=dict)
    hu: np.ndarray | None = None  # (nz, ny, nx) float32 Hounsfield units
    hu_calibration: HuCalibration | None = None  # None: the packaged generic calibration

    def __post_init__(self):
        if self.hu is not None:
            hu = np.asarray(self.hu)
            if hu.shape != self.grid.shape_zyx:
                raise ValueError(
                    f"hu shape {hu.shape} does not match grid shape {self.grid.shape_zyx}"
                )
            if not np.all(np.isfinite(hu)):
                raise ValueError("hu contains nan or inf")
            object.__setattr__(self, "hu", hu.astype(np.float32, copy=False))
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

    @property
    def cavities(self) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.role == "cavity")

    @property
    def calibration(self) -> HuCalibration:
        return self.hu_calibration if self.hu_calibration is not None else default_calibration()

    def hu_or_water(self) -> np.ndarray:
        """The HU map, or 0 HU (water) everywhere for a case without HU."""
        if self.hu is not None:
            return self.hu
        return np.zeros(self.grid.shape_zyx, np.float32)

    def relative_electron_density(self) -> np.ndarray:
        """(nz, ny, nx) float32 electron density relative to water, from the HU (computed anew
        on every call: keep the result rather than calling twice)."""
        return self.calibration.relative_electron_density_of(self.hu_or_water())

    def mass_density_g_cm3(self) -> np.ndarray:
        """(nz, ny, nx) float32 mass density (g/cm^3), from the HU (computed on every call)."""
        return self.calibration.mass_density_g_cm3_of(self.hu_or_water())

    def body_mask(self) -> np.ndarray:
        """(nz, ny, nx) float32 fraction of tissue (patient, not air) per voxel.

        The ``body`` structure's occupancy (the union if there are several); else, with HU,
        0 in the air outside the patient, 1 inside, a fraction in the rim between (see
        ``BODY_THRESHOLD_HU``); else (a phantom without HU) 1 everywhere.
        """
        bodies = [s.occupancy for s in self.structures if s.role == "body"]
        if bodies:
            return np.clip(functools.reduce(np.maximum, bodies), 0.0, 1.0).astype(np.float32)
        if self.hu is None:
            return np.ones(self.grid.shape_zyx, np.float32)
        return body_fraction(self.hu)


def outside_air(hu: np.ndarray) -> np.ndarray:
    """Boolean mask of the air outside the patient (see ``BODY_THRESHOLD_HU``)."""
    from scipy import ndimage

    labels, n = ndimage.label(hu <= AIR_HU)
    if n == 0:
        return np.zeros(hu.shape, bool)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    at_edge = np.zeros(n + 1, bool)
    at_edge[np.unique(np.concatenate([f.ravel() for f in faces]))] = True
    at_edge[0] = False
    air = at_edge[labels]
    return air | (ndimage.binary_dilation(air) & (hu <= BODY_THRESHOLD_HU))


def body_fraction(hu: np.ndarray) -> np.ndarray:
    """(nz, ny, nx) float32 tissue fraction from HU alone (see ``BODY_THRESHOLD_HU``)."""
    from scipy import ndimage

    outside = outside_air(hu)
    body = (~outside).astype(np.float32)
    rim = ndimage.binary_dilation(outside) & ndimage.binary_dilation(~outside)
    body[rim] = np.clip((hu[rim] + 1000.0) / 1000.0, 0.0, 1.0)
    return body
