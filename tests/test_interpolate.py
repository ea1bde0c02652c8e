"""Uniform resampling + look-up must equal interpolation on the original (non-uniform) knots.

References are independent: ``numpy.interp`` and a hand-written bilinear interpolation on the
published knots, with the HEBD 2012 extrapolation rule (nearest value below the first knot, linear
extension of the last interval above the last knot).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.physics.interpolate import (
    MAX_NODES,
    interp1d,
    interp2d,
    nodes,
    resample_1d,
    resample_2d,
    uniform_axis,
)

# Non-uniform knots as published: mHDR-v2 HEBD 2012 g_L radii (cm) and F angles (deg).
R_KNOTS = np.array(
    [0.0, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
)
THETA_KNOTS = np.array(
    [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 26.0, 30.0, 32.0, 36.0]
    + [40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 132.0, 134.0, 136.0]
    + [138.0, 140.0, 144.0, 148.0, 150.0, 154.0, 158.0, 160.0, 162.0, 164.0, 166.0, 168.0]
    + [170.0, 172.0, 174.0, 176.0, 178.0, 180.0]
)
# CLRP radii start above 0 and have quarter steps.
CLRP_R_KNOTS = np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0])


def reference_interp1d(knots, values, x):
    """numpy.interp inside and below (nearest) the table; the last interval extended above it."""
    out = np.interp(x, knots, values)
    above = x > knots[-1]
    slope = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
    out[above] = values[-1] + slope * (x[above] - knots[-1])
    return out


def _cell(knots, x):
    """Interval index and fraction on the original knots (HEBD rule: clamp below, extend above)."""
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, knots.size - 2)
    t = (x - knots[i]) / (knots[i + 1] - knots[i])
    return i, np.maximum(t, 0.0)


def reference_bilinear(knots_a, knots_b, table, a, b):
    """Hand-written bilinear interpolation of ``table[ia, ib]`` on non-uniform knots."""
    ia, ta = _cell(knots_a, a)
    ib, tb = _cell(knots_b, b)
    return (
        (1 - ta) * (1 - tb) * table[ia, ib]
        + (1 - ta) * tb * table[ia, ib + 1]
        + ta * (1 - tb) * table[ia + 1, ib]
        + ta * tb * table[ia + 1, ib + 1]
    )


def _sample_points(knots, rng, n_inside=400):
    lo, hi = knots[0], knots[-1]
    span = hi - lo
    return np.concatenate(
        [
            rng.uniform(lo, hi, n_inside),
            knots,  # exactly on the knots
            rng.uniform(lo - 0.5 * span, lo, 20),  # below the first knot: nearest value
            rng.uniform(hi, hi + 0.5 * span, 20),  # above the last knot: linear extrapolation
        ]
    )


@pytest.mark.parametrize("knots", [R_KNOTS, THETA_KNOTS, CLRP_R_KNOTS], ids=["r", "theta", "clrp"])
def test_resample_1d_equals_numpy_interp_on_original_knots(knots):
    rng = np.random.default_rng(1)
    values = rng.uniform(0.5, 1.5, knots.size)
    axis, table = resample_1d(knots, values)
    assert axis.exact
    # Every published knot is a node of the uniform grid.
    node_x = nodes(axis)
    assert np.min(np.abs(node_x[None, :] - knots[:, None]), axis=1).max() < 1e-9 * knots[-1]
    x = _sample_points(knots, rng)
    got = np.asarray(interp1d(axis, jnp.asarray(table), jnp.asarray(x)))
    np.testing.assert_allclose(got, reference_interp1d(knots, values, x), rtol=0, atol=1e-12)


def test_below_first_knot_is_nearest_and_above_last_is_linear():
    knots = np.array([0.25, 0.5, 1.0, 2.0])
    values = np.array([2.0, 1.0, 4.0, 3.0])
    axis, table = resample_1d(knots, values)
    got = np.asarray(
        interp1d(axis, jnp.asarray(table), jnp.array([-1.0, 0.0, 0.25, 2.0, 3.0, 4.0]))
    )
    # Below 0.25: first value 2; above 2: slope of the last interval (-1 per unit).
    np.testing.assert_allclose(got, [2.0, 2.0, 2.0, 3.0, 2.0, 1.0], atol=1e-12)


def test_resample_2d_equals_hand_written_bilinear_on_original_knots():
    rng = np.random.default_rng(2)
    table = rng.uniform(0.3, 1.8, (THETA_KNOTS.size, R_KNOTS.size))
    axis_t, axis_r, resampled = resample_2d(THETA_KNOTS, R_KNOTS, table)
    assert axis_t.exact and axis_r.exact
    theta = _sample_points(THETA_KNOTS, rng)
    r = rng.permutation(_sample_points(R_KNOTS, rng, n_inside=theta.size - 2 * 20 - R_KNOTS.size))
    assert theta.shape == r.shape
    got = np.asarray(
        interp2d(axis_t, axis_r, jnp.asarray(resampled), jnp.asarray(theta), jnp.asarray(r))
    )
    want = reference_bilinear(THETA_KNOTS, R_KNOTS, table, theta, r)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_resample_2d_corners_outside_both_axes():
    """Below/above both axes at once: clamp below, extend the last cell linearly above."""
    ka = np.array([0.0, 1.0, 3.0])
    kb = np.array([0.5, 1.0, 2.0, 2.5])
    table = np.arange(12.0).reshape(3, 4) ** 1.5
    axes_and_table = resample_2d(ka, kb, table)
    a = np.array([-1.0, -1.0, 4.0, 4.0, 2.0, -0.5])
    b = np.array([0.0, 3.0, 0.0, 3.5, 2.7, 1.7])
    got = np.asarray(interp2d(*axes_and_table[:2], jnp.asarray(axes_and_table[2]), a, b))
    np.testing.assert_allclose(got, reference_bilinear(ka, kb, table, a, b), atol=1e-12)


def test_commensurate_thirds_are_exact():
    axis = uniform_axis(np.array([0.0, 1.0 / 3.0, 1.0]))
    assert axis.exact and axis.size == 4


@pytest.mark.parametrize(
    "knots",
    [np.array([0.0, 1e-4, 1.0 / 3.0, 1.0]), np.array([0.0, 1.0 / 3.0, 0.50003, 1.0])],
    ids=["1e-4_and_third", "third_and_0.50003"],
)
def test_non_commensurate_knots_flag_inexact_and_stay_close(knots):
    values = np.array([1.0, 3.0, 0.5, 2.0])
    axis, table = resample_1d(knots, values)
    assert not axis.exact
    assert axis.size == MAX_NODES
    x = np.random.default_rng(3).uniform(knots[0], knots[-1], 500)
    got = np.asarray(interp1d(axis, jnp.asarray(table), jnp.asarray(x)))
    # Linear interpolation of a piecewise-linear function whose kinks fall between nodes: the
    # error is at most |change of slope| * step / 4 per kink.
    slopes = np.diff(values) / np.diff(knots)
    bound = np.abs(np.diff(slopes)).sum() / axis.inv_step / 4.0
    assert np.max(np.abs(got - np.interp(x, knots, values))) <= bound + 1e-12


@pytest.mark.parametrize(
    "knots", [np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.5]), np.array([1.0]), np.zeros((2, 2))]
)
def test_invalid_knots_raise(knots):
    with pytest.raises(ValueError):
        uniform_axis(knots)


def test_float32_table_lookup_stays_float32_with_x64_enabled():
    """The session has x64 on; a float32 table looked up at float32 points must stay float32.

    (Fails if the axis constants are numpy float64 scalars, which jax promotes to float64.)
    """
    axis, table = resample_1d(R_KNOTS, np.linspace(1.0, 2.0, R_KNOTS.size))
    x = jnp.linspace(0.0, 12.0, 7, dtype=jnp.float32)
    assert interp1d(axis, jnp.asarray(table, jnp.float32), x).dtype == jnp.float32
    ax_t, ax_r, grid = resample_2d(THETA_KNOTS, R_KNOTS, np.ones((THETA_KNOTS.size, R_KNOTS.size)))
    out = interp2d(ax_t, ax_r, jnp.asarray(grid, jnp.float32), x * 10.0, x)
    assert out.dtype == jnp.float32
