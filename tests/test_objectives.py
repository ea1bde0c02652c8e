"""Objective terms against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.optimisation import objectives


def test_underdose_overdose_values():
    d = jnp.array([8.0, 10.0, 12.0, 14.0])
    w = jnp.array([1.0, 1.0, 1.0, 0.0])
    # under 10: only 8 -> (2^2)/3 voxels, / 10^2
    assert np.isclose(objectives.underdose(w, 10.0)(d, None), 4.0 / 3.0 / 100.0)
    # over 11: only 12 counts (14 has weight 0) -> 1/3 / 121
    assert np.isclose(objectives.overdose(w, 11.0)(d, None), 1.0 / 3.0 / 121.0)


def test_max_dose_is_a_sum_not_a_mean():
    w_small = jnp.ones(2)
    w_big = jnp.ones(200)
    hot = lambda n: jnp.zeros(n).at[0].set(12.0)  # noqa: E731
    assert np.isclose(objectives.max_dose(w_small, 10.0)(hot(2), None), 4.0 / 100.0)
    assert np.isclose(objectives.max_dose(w_big, 10.0)(hot(200), None), 4.0 / 100.0)


def test_mean_dose_and_dose_at_volume():
    d = jnp.arange(1.0, 11.0)  # 1..10 Gy, ten voxels
    w = jnp.ones(10)
    assert np.isclose(objectives.mean_dose(w, 0.0, 10.0)(d, None), 5.5**2 / 100.0)
    # hottest 30 % = 3 voxels (10, 9, 8): D30 = 8
    assert float(objectives.dose_at_volume(d, w, 3.0)) == 8.0


def test_dvh_min_penalises_only_voxels_needed():
    # D50 >= 6 wanted; dose 1..10: current D50 = 6 -> satisfied, no penalty
    d = jnp.arange(1.0, 11.0)
    w = jnp.ones(10)
    assert float(objectives.dvh_min(w, 6.0, volume_fraction=0.5)(d, None)) == 0.0
    # D50 >= 8: voxels with D50(=6) <= d < 8, i.e. 6 and 7, are penalised: ((2^2 + 1^2)/10)/64
    assert np.isclose(objectives.dvh_min(w, 8.0, volume_fraction=0.5)(d, None), 0.5 / 64.0)


def test_dvh_max_penalises_hottest_excess():
    # D20 <= 5: current D20 = 9; voxels with 5 < d <= 9 penalised: 6,7,8,9 -> (1+4+9+16)/10/25
    d = jnp.arange(1.0, 11.0)
    w = jnp.ones(10)
    assert np.isclose(objectives.dvh_max(w, 5.0, volume_fraction=0.2)(d, None), 3.0 / 25.0)


def test_modulation_and_gradients_finite():
    pairs = np.array([[0, 1], [1, 2]])
    t = jnp.array([1.0, 3.0, 3.0])
    # differences 2, 0 -> mean of squares 2, / mean(t)^2 = (7/3)^2
    assert np.isclose(objectives.modulation(pairs)(None, t), 2.0 / (7.0 / 3.0) ** 2, rtol=1e-5)
    g = jax.grad(lambda t: objectives.modulation(pairs)(None, t))(t)
    assert np.all(np.isfinite(np.asarray(g)))
