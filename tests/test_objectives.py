"""Objective terms against hand-computed values."""

import functools

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


def test_partial_sort_dose_at_volume_equals_the_full_sort():
    d = jnp.arange(1.0, 11.0)
    w = jnp.ones(10)
    # the 3 hottest of the 4 kept: D30 = 8, as the full sort gives
    assert float(objectives.dose_at_volume_top_k(d, w, 3.0, k=4)) == 8.0
    # 6 voxels are not among the 4 kept: the fallback sort gives D60 = 5
    assert float(objectives.dose_at_volume_top_k(d, w, 6.0, k=4)) == 5.0
    rng = np.random.default_rng(7)
    for trial in range(12):
        n = (2048, 5000, 7919)[trial % 3]
        dose = rng.gamma(2.0, 3.0, n).astype(np.float32)
        if trial % 2:
            dose = np.round(dose, 1)  # many equal doses: ties must break as the stable sort does
        weight = rng.uniform(0.05, 1.0, n).astype(np.float32)
        n_valid = n - 50 if trial % 3 == 0 else None
        if n_valid is not None:  # bucket padding: dose 0, weight 0 at the end
            dose[n_valid:], weight[n_valid:] = 0.0, 0.0
        volume = float(rng.uniform(1.0, 0.004 * n))
        k = objectives.top_k_size(weight, volume, n)
        assert k >= objectives.TOP_K_MIN
        full = jax.jit(functools.partial(objectives.dose_at_volume, n_valid=n_valid))
        top = jax.jit(functools.partial(objectives.dose_at_volume_top_k, k=k, n_valid=n_valid))
        for v in (volume, 3.0 * volume, 0.5 * n):  # within k, near its edge, the fallback
            assert np.asarray(top(dose, weight, v)) == np.asarray(full(dose, weight, v))


def test_top_k_size_covers_twice_the_volume_with_the_smallest_weights():
    w = np.concatenate([np.full(1000, 0.1), np.ones(9000)])
    # twice 30 voxels of weight: 60 units, the 1000 weights of 0.1 hold only 100 -> 600 voxels
    assert objectives.top_k_size(w, 30.0, w.size) == 1024
    assert objectives.top_k_size(np.ones(10000), 10.0, 10000) == objectives.TOP_K_MIN
    # a volume of most of the structure: the full sort (k would exceed a quarter of the rows)
    assert objectives.top_k_size(np.ones(10000), 5000.0, 10000) == 0
    assert objectives.top_k_size(np.ones(100), 80.0, 100) == 0  # larger than the structure


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


def test_build_terms_with_the_partial_sort_give_the_same_values_and_gradients():
    from iortopt.config import Objective

    rng = np.random.default_rng(3)
    n = 20000
    dose = jnp.asarray(rng.gamma(2.0, 3.0, n), jnp.float32)
    weights = {"bowel": jnp.asarray(rng.uniform(0.2, 1.0, n), jnp.float32)}
    cfgs = [
        Objective(type="dvh_max", structure="bowel", volume_cc=2.0, dose_gy=8.0, weight=10.0),
        Objective(type="dvh_min", structure="bowel", volume_percent=1.0, dose_gy=9.0),
        Objective(type="dvh_min", structure="bowel", volume_percent=90.0, dose_gy=2.0),
    ]
    exact = objectives.build_terms(cfgs, weights, 0.008, np.zeros((0, 2), int), 10.0)
    fast = objectives.build_terms(
        cfgs, weights, 0.008, np.zeros((0, 2), int), 10.0, partial_sort=True
    )
    params = objectives.term_params(exact)

    def sorts(term, p):
        return str(jax.make_jaxpr(lambda d: term.fn(d, None, p))(dose)).count("top_k")

    # the D2cc and D1 % take the partial sort; D90 (most of the structure) keeps the full one
    assert [sorts(t, p) for t, p in zip(fast, params, strict=True)] == [1, 1, 0]
    assert [sorts(t, p) for t, p in zip(exact, params, strict=True)] == [0, 0, 0]
    for a, b, p in zip(exact, fast, params, strict=True):
        va, ga = jax.value_and_grad(lambda d, a=a, p=p: a.fn(d, None, p))(dose)
        vb, gb = jax.value_and_grad(lambda d, b=b, p=p: b.fn(d, None, p))(dose)
        assert np.asarray(va) == np.asarray(vb) and np.array_equal(ga, gb)
    # a replan's volume 30x the configured one: beyond the partial sort, the fallback answers
    big = [dict(p, volume_voxels=jnp.float32(60.0 / 0.008)) if "volume_voxels" in p else p
           for p in params]  # fmt: skip
    assert np.asarray(exact[0].fn(dose, None, big[0])) == np.asarray(fast[0].fn(dose, None, big[0]))
