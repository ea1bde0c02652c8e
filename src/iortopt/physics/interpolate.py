"""Piecewise-linear table interpolation on uniform grids, exact for non-uniform tables.

Dose tables (g(r), F(r, theta)) are published on irregular knots. Looking up the interval of each
point is the slow part of a TG-43 kernel (a search plus several scattered reads per table), so each
table is resampled once onto a uniform grid whose nodes include every published knot: the spacing
divides every knot interval. A piecewise-linear (or bilinear) function restricted to a sub-interval
(sub-rectangle) is again linear (bilinear), so interpolating the resampled table gives exactly the
same values as interpolating the published one, while the interval index becomes one multiply and
the four corner values one contiguous read.

If no common spacing with at most ``MAX_NODES`` nodes exists (knots such as 1/3), the table is
resampled on ``MAX_NODES`` nodes and ``exact`` is False; the deviation from knot interpolation is
bounded by the table's curvature over one node spacing.

Extrapolation (HEBD 2012 rule for TG-43 tables): below the first knot the first value is used
(zeroth order); above the last knot the last interval is extended linearly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_NODES = 8192


class UniformAxis(NamedTuple):
    """A uniform axis: node ``i`` sits at ``first + i / inv_step``; ``size`` nodes (static)."""

    first: float
    inv_step: float
    size: int
    exact: bool


def uniform_axis(knots: np.ndarray, max_nodes: int = MAX_NODES) -> UniformAxis:
    """Smallest uniform grid over ``[knots[0], knots[-1]]`` that contains every knot."""
    knots = np.asarray(knots, dtype=np.float64)
    if knots.ndim != 1 or knots.size < 2 or np.any(np.diff(knots) <= 0):
        raise ValueError("knots must be a 1-D strictly increasing array with at least two values")
    span = knots[-1] - knots[0]
    rel = (knots - knots[0]) / span
    for intervals in range(1, max_nodes):
        pos = rel * intervals
        if np.all(np.abs(pos - np.round(pos)) < 1e-7 * intervals):
            return UniformAxis(float(knots[0]), float(intervals / span), intervals + 1, True)
    return UniformAxis(float(knots[0]), float((max_nodes - 1) / span), max_nodes, False)


def nodes(axis: UniformAxis) -> np.ndarray:
    """Node coordinates of ``axis``."""
    return axis.first + np.arange(axis.size) / axis.inv_step


def resample_1d(knots: np.ndarray, values: np.ndarray) -> tuple[UniformAxis, np.ndarray]:
    """Uniform axis and the values of the linear interpolant of (knots, values) on its nodes."""
    axis = uniform_axis(knots)
    return axis, np.interp(nodes(axis), knots, values)


def resample_2d(
    knots_a: np.ndarray, knots_b: np.ndarray, values: np.ndarray
) -> tuple[UniformAxis, UniformAxis, np.ndarray]:
    """Uniform axes and the bilinear interpolant of ``values[ia, ib]`` on their node grid."""
    axis_a, axis_b = uniform_axis(knots_a), uniform_axis(knots_b)
    along_b = np.stack([np.interp(nodes(axis_b), knots_b, row) for row in values])
    grid = np.stack([np.interp(nodes(axis_a), knots_a, col) for col in along_b.T], axis=1)
    return axis_a, axis_b, grid


def locate(axis: UniformAxis, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Interval index ``i`` (int32) and fraction ``t``: ``x = node[i] + t * step``.

    ``t`` is 0 below the first node and may exceed 1 beyond the last (linear extrapolation).
    """
    u = jnp.maximum((x - axis.first) * axis.inv_step, 0.0)
    i = jnp.minimum(u, axis.size - 2).astype(jnp.int32)
    return i, u - i


def _gather_pairs(table: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """``table[index + k]`` for k in {0, 1} (or the 2x2 block for a 2-D table), one read each."""
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(index.ndim - 1, index.ndim - 1 + table.ndim)),
        collapsed_slice_dims=(),
        start_index_map=tuple(range(table.ndim)),
    )
    return jax.lax.gather(
        table, index, dims, slice_sizes=(2,) * table.ndim, mode="promise_in_bounds"
    )


def interp1d(axis: UniformAxis, table: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Linear interpolation of a resampled 1-D ``table`` at ``x``."""
    i, t = locate(axis, x)
    pair = _gather_pairs(table, i[..., None])
    return pair[..., 0] + t * (pair[..., 1] - pair[..., 0])


def interp2d(
    axis_a: UniformAxis, axis_b: UniformAxis, table: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray
) -> jnp.ndarray:
    """Bilinear interpolation of a resampled 2-D ``table[ia, ib]`` at points ``(a, b)``."""
    ia, ta = locate(axis_a, a)
    ib, tb = locate(axis_b, b)
    block = _gather_pairs(table, jnp.stack([ia, ib], axis=-1))
    lower = block[..., 0, 0] + tb * (block[..., 0, 1] - block[..., 0, 0])
    upper = block[..., 1, 0] + tb * (block[..., 1, 1] - block[..., 1, 0])
    return lower + ta * (upper - lower)
