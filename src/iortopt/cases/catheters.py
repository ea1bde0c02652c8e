"""Applicator geometry: HDR flap catheters and their dwell positions.

A flap applicator is a set of catheters, each a polyline in patient coordinates (x, y, z) mm ordered
from the catheter tip to the connector end. Dwell positions are placed along each catheter every
``step_mm`` of arc length from the tip, as an afterloader steps the source. Each dwell carries its
own source axis (the local catheter direction, pointing towards the tip, the TG-43 convention used
by :mod:`iortopt.physics.tg43`): flap catheters curve, so one global axis would be wrong.

Catheter and position numbers are 0-based: ``catheter`` indexes ``FlapApplicator.catheters`` and
``index`` counts dwell positions along a catheter from its tip (0 = the position nearest the tip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from iortopt.grid import Grid

#: Dwell positions may overshoot a catheter's end by this much arc length (mm) and still count,
#: so that a catheter of 80 mm stepped by 5 mm gets its position at 80 mm despite rounding.
ARC_TOLERANCE_MM = 1e-3
#: Consecutive polyline points closer than this (mm) are treated as duplicates.
DUPLICATE_POINT_MM = 1e-9


@dataclass(frozen=True, eq=False)
class Dwells:
    """Dwell positions of an applicator, M of them.

    Attributes
    ----------
    positions_mm : (M, 3) float64
        Dwell positions (x, y, z) in mm.
    axes : (M, 3) float64
        Unit source axes: the catheter tangent at each dwell, pointing towards the catheter tip.
    catheter : (M,) int64
        Catheter number of each dwell (0-based).
    index : (M,) int64
        Position number along its catheter, counted from the tip (0-based).
    """

    positions_mm: np.ndarray
    axes: np.ndarray
    catheter: np.ndarray
    index: np.ndarray

    def __post_init__(self):
        positions = np.asarray(self.positions_mm, dtype=np.float64)
        axes = np.asarray(self.axes, dtype=np.float64)
        catheter = np.asarray(self.catheter)
        index = np.asarray(self.index)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"Dwells.positions_mm must have shape (M, 3), got {positions.shape}")
        m = positions.shape[0]
        if axes.shape != (m, 3):
            raise ValueError(f"Dwells.axes must have shape ({m}, 3), got {axes.shape}")
        for name, values in (("catheter", catheter), ("index", index)):
            if values.shape != (m,):
                raise ValueError(f"Dwells.{name} must have shape ({m},), got {values.shape}")
            if m and not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"Dwells.{name} must hold integers, got dtype {values.dtype}")
        if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(axes))):
            raise ValueError("Dwells.positions_mm and Dwells.axes must be finite")
        if m and not np.allclose(np.linalg.norm(axes, axis=1), 1.0, atol=1e-6):
            raise ValueError("Dwells.axes must be unit vectors")
        object.__setattr__(self, "positions_mm", positions)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "catheter", catheter.astype(np.int64))
        object.__setattr__(self, "index", index.astype(np.int64))

    def __len__(self) -> int:
        return self.positions_mm.shape[0]

    def subset(self, mask) -> Dwells:
        """The dwells selected by a boolean mask (M,) or an integer index array, in that order."""
        selector = np.asarray(mask)
        if selector.dtype == bool and selector.shape != (len(self),):
            raise ValueError(
                f"Dwells.subset: boolean mask must have shape ({len(self)},), got {selector.shape}"
            )
        return Dwells(
            self.positions_mm[selector],
            self.axes[selector],
            self.catheter[selector],
            self.index[selector],
        )

    def neighbour_pairs(self) -> np.ndarray:
        """Pairs of consecutive dwells in the same catheter, for a dwell-time modulation penalty.

        Dwells of one catheter are ordered by ``index``; each dwell is paired with the next one of
        this set in that catheter (after :meth:`subset`, a pair may skip inactive positions).

        Returns
        -------
        (K, 2) int64
            Row numbers (i, j) into this set, ``index[i] < index[j]``; shape (0, 2) if none.
        """
        order = np.lexsort((self.index, self.catheter))
        same = self.catheter[order[:-1]] == self.catheter[order[1:]]
        return np.stack([order[:-1][same], order[1:][same]], axis=-1).astype(np.int64)


def _validated_polyline(points, name: str) -> np.ndarray:
    """A (K, 3) float64 polyline without consecutive duplicate points; ValueError otherwise."""
    poly = np.asarray(points, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 3:
        raise ValueError(f"{name} must be a (K, 3) array of (x, y, z) mm, got shape {poly.shape}")
    if not np.all(np.isfinite(poly)):
        raise ValueError(f"{name} must contain only finite coordinates")
    if poly.shape[0] >= 2:
        step = np.linalg.norm(np.diff(poly, axis=0), axis=1)
        poly = poly[np.concatenate([[True], step > DUPLICATE_POINT_MM])]
    if poly.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 distinct points, got {poly.shape[0]}")
    return poly


def _arc_length_mm(polyline_mm: np.ndarray) -> np.ndarray:
    """Cumulative arc length (K,) in mm of a (K, 3) polyline, 0 at its first point."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline_mm, axis=0), axis=1))])


def sample_polyline(polyline_mm: np.ndarray, arc_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points and backward unit tangents at given arc lengths along a polyline.

    Parameters
    ----------
    polyline_mm : (K, 3)
        Polyline from its start (the catheter tip) to its end, no duplicate consecutive points.
    arc_mm : (N,)
        Arc lengths from the start, in [0, total length] (values outside are clipped).

    Returns
    -------
    points_mm : (N, 3)
        Linear interpolation along the polyline.
    axes : (N, 3)
        Unit direction of the segment holding each point, pointing back towards the start.
    """
    cumulative = _arc_length_mm(polyline_mm)
    arc = np.clip(np.asarray(arc_mm, dtype=np.float64), 0.0, cumulative[-1])
    segment = np.clip(np.searchsorted(cumulative, arc, side="right") - 1, 0, len(cumulative) - 2)
    start, end = polyline_mm[segment], polyline_mm[segment + 1]
    length = cumulative[segment + 1] - cumulative[segment]
    fraction = (arc - cumulative[segment]) / length
    points = start + fraction[:, None] * (end - start)
    axes = (start - end) / length[:, None]
    return points, axes


@dataclass(frozen=True, eq=False)
class FlapApplicator:
    """A flap applicator: catheters as polylines in mm, each ordered from tip to connector end.

    Attributes
    ----------
    catheters : tuple of (K_i, 3) float64
        One polyline per catheter, (x, y, z) mm, first point = catheter tip.
    """

    catheters: tuple

    def __post_init__(self):
        catheters = tuple(self.catheters)
        if not catheters:
            raise ValueError("FlapApplicator.catheters must hold at least one catheter polyline")
        polylines = tuple(
            _validated_polyline(c, f"FlapApplicator.catheters[{i}]")
            for i, c in enumerate(catheters)
        )
        object.__setattr__(self, "catheters", polylines)

    @property
    def catheter_lengths_mm(self) -> np.ndarray:
        """Arc length (n_catheters,) of each catheter polyline in mm."""
        return np.array([_arc_length_mm(c)[-1] for c in self.catheters])

    def dwells(self, step_mm: float = 5.0, first_offset_mm: float = 0.0) -> Dwells:
        """Dwell positions every ``step_mm`` of arc length from ``first_offset_mm`` after the tip.

        Parameters
        ----------
        step_mm : float
            Source step along the catheter (mm), > 0; typically 5 or 10.
        first_offset_mm : float
            Arc length (mm, >= 0) from the tip to the first dwell position.

        Returns
        -------
        Dwells
            Catheter by catheter, tip first. Positions lie on the polyline (linear interpolation);
            axes are the local segment directions pointing towards the tip.
        """
        if not (np.isfinite(step_mm) and step_mm > 0):
            raise ValueError(f"step_mm must be a finite number > 0, got {step_mm}")
        if not (np.isfinite(first_offset_mm) and first_offset_mm >= 0):
            raise ValueError(f"first_offset_mm must be a finite number >= 0, got {first_offset_mm}")
        positions, axes, catheter, index = [], [], [], []
        for number, polyline in enumerate(self.catheters):
            length_mm = _arc_length_mm(polyline)[-1]
            n = int(np.floor((length_mm + ARC_TOLERANCE_MM - first_offset_mm) / step_mm)) + 1
            if n <= 0:
                continue
            arc = first_offset_mm + step_mm * np.arange(n)
            points, directions = sample_polyline(polyline, arc)
            positions.append(points)
            axes.append(directions)
            catheter.append(np.full(n, number))
            index.append(np.arange(n))
        if not positions:
            raise ValueError(
                f"no dwell positions: first_offset_mm={first_offset_mm} exceeds every catheter "
                f"length (longest {self.catheter_lengths_mm.max():.1f} mm)"
            )
        return Dwells(
            np.concatenate(positions),
            np.concatenate(axes),
            np.concatenate(catheter),
            np.concatenate(index),
        )


@dataclass(frozen=True, eq=False)
class PlannedApplicator(FlapApplicator):
    """Catheters whose dwell positions an existing plan fixed (``applicator.from_rtplan``):
    :meth:`dwells` returns those positions and axes whatever the step."""

    planned: Dwells | None = None

    def dwells(self, step_mm: float = 5.0, first_offset_mm: float = 0.0) -> Dwells:
        """The planned dwells (``step_mm`` and ``first_offset_mm`` do not apply)."""
        return self.planned


def select_active(
    dwells: Dwells, target_occupancy: np.ndarray, grid: Grid, max_distance_mm: float
) -> np.ndarray:
    """Dwells within ``max_distance_mm`` of the target.

    Parameters
    ----------
    dwells : Dwells
        M candidate dwell positions.
    target_occupancy : (nz, ny, nx)
        Fractional target occupancy on ``grid``; voxels with occupancy >= 0.5 count as target.
    grid : Grid
        The grid of ``target_occupancy``.
    max_distance_mm : float
        A dwell is active if the nearest target voxel centre is at most this far (mm).

    Returns
    -------
    (M,) bool
        True for active dwells. ValueError if none is active or the target is empty.
    """
    occupancy = np.asarray(target_occupancy)
    if occupancy.shape != grid.shape_zyx:
        raise ValueError(
            f"target_occupancy shape {occupancy.shape} does not match grid shape {grid.shape_zyx}"
        )
    if not (np.isfinite(max_distance_mm) and max_distance_mm >= 0):
        raise ValueError(f"max_distance_mm must be a finite number >= 0, got {max_distance_mm}")
    inside_zyx = np.argwhere(occupancy >= 0.5)
    if inside_zyx.size == 0:
        raise ValueError("target has no voxel with occupancy >= 0.5; cannot select active dwells")
    if len(dwells) == 0:
        raise ValueError("no dwell positions to select from")
    tree = cKDTree(grid.index_to_mm(inside_zyx))
    distance_mm, _ = tree.query(dwells.positions_mm, k=1)
    active = distance_mm <= max_distance_mm
    if not active.any():
        raise ValueError(
            f"no dwell position is within max_distance_mm={max_distance_mm} of the target "
            f"(nearest is {distance_mm.min():.1f} mm away)"
        )
    return active
