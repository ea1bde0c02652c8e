"""The optimiser reaches the global optimum of a convex problem found by an independent solver."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import lsq_linear

from iortopt.config import Objective
from iortopt.optimisation import objectives
from iortopt.optimisation.optax_loop import (
    load_checkpoint,
    minimise,
    save_checkpoint,
    times_from_u,
    u_from_times,
)
from iortopt.physics.sources import load_source
from iortopt.physics.tg43 import GY_PER_CGY, SECONDS_PER_HOUR, dose_rate_matrix, make_kernel

SK_U = 40000.0
RX_GY = 10.0
T_MAX_S = 60.0


@pytest.fixture(scope="module")
def small_problem():
    """Two straight catheters 10 mm apart, 5 mm step; target slab 5-15 mm below them."""
    kernel = make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=jnp.float64)
    z = np.arange(-20.0, 20.1, 5.0)
    positions = np.array([[x, 0.0, zz] for x in (-5.0, 5.0) for zz in z])
    axes = np.tile([0.0, 0.0, 1.0], (len(positions), 1))
    gx, gy, gz = np.meshgrid(
        np.arange(-14, 15, 4.0), np.arange(5, 16, 2.5), np.arange(-20, 21, 4.0)
    )
    points = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    rate = np.asarray(
        dose_rate_matrix(jnp.asarray(points), jnp.asarray(positions), jnp.asarray(axes), kernel)
    )
    matrix = rate * SK_U * GY_PER_CGY / SECONDS_PER_HOUR  # Gy per second
    return matrix, positions


def scipy_optimum(matrix):
    ref = lsq_linear(
        matrix, np.full(matrix.shape[0], RX_GY), bounds=(0.0, T_MAX_S), tol=1e-12, max_iter=5000
    )
    return float(np.mean((matrix @ ref.x - RX_GY) ** 2) / RX_GY**2)


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_quadratic_objective_reaches_independent_optimum(small_problem, method):
    matrix, _ = small_problem
    w = jnp.ones(matrix.shape[0])
    terms = objectives.build_terms(
        [
            Objective(type="underdose", structure="T", dose_gy=RX_GY, weight=1.0),
            Objective(type="overdose", structure="T", dose_gy=RX_GY, weight=1.0),
        ],
        {"T": w},
        0.1,
        np.zeros((0, 2), int),
        RX_GY,
    )
    total = objectives.combine(terms)
    a = jnp.asarray(matrix)
    result = minimise(
        lambda t, params: total(a @ t, t, params),
        np.full(matrix.shape[1], 5.0),
        T_MAX_S,
        method=method,
        max_iterations=3000,
        tolerance=1e-9,
        learning_rate=0.05,
        dtype=jnp.float64,
        operands=(objectives.term_params(terms, jnp.float64),),
    )
    optimum = scipy_optimum(matrix)
    assert result.objective <= optimum * 1.01 + 1e-12
    assert np.all(result.times_s >= 0) and np.all(result.times_s <= T_MAX_S)


def test_bounds_are_respected_when_active():
    """A tiny upper bound must bind: every time ends at t_max, never above."""
    a = jnp.ones((5, 3))
    result = minimise(
        lambda t: jnp.sum((a @ t - 100.0) ** 2), np.full(3, 0.5), 1.0, max_iterations=500
    )
    np.testing.assert_allclose(result.times_s, 1.0, atol=1e-3)
    assert np.all(result.times_s <= 1.0)


def test_reparametrisation_round_trip():
    t = np.array([0.5, 10.0, 59.0])
    np.testing.assert_allclose(np.asarray(times_from_u(u_from_times(t, 60.0), 60.0)), t, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, np.array([1.0, 2.0]), 7, "abc")
    times, it, key = load_checkpoint(path)
    np.testing.assert_array_equal(times, [1.0, 2.0])
    assert it == 7 and key == "abc"
    assert not list(tmp_path.glob("*.tmp*"))


def _calm_objective(u, offset):
    # converges in a few iterations; afterwards every relative change is below any tolerance
    return jnp.sum(jnp.square(u - 0.3)) + offset


def test_stop_when_stalled_stops_at_the_first_calm_stalled_iteration(monkeypatch):
    from iortopt.optimisation import optax_loop

    u0 = jnp.zeros(4, jnp.float32)
    args = dict(method="adam", max_iterations=400, tolerance=1e-3, learning_rate=0.1)
    plain = optax_loop.run_optax(_calm_objective, u0, operands=(jnp.float32(5.0),), **args)
    monkeypatch.setattr(optax_loop, "_line_search_failed", lambda state: True)
    stalled = optax_loop.run_optax(
        _calm_objective, u0, operands=(jnp.float32(5.0),), stop_when_stalled=True, **args
    )
    assert plain.stop_reason == "relative change below tolerance"
    assert stalled.stop_reason == "relative change below tolerance, line search stalled"
    h = plain.history  # the same path up to the stop; the stop at the first calm iteration
    first_calm = next(i for i in range(1, len(h)) if abs(h[i - 1] - h[i]) / abs(h[i]) < 1e-3)
    assert stalled.history == h[: first_calm + 1]
    assert stalled.iterations == first_calm + 1 < plain.iterations
    unflagged = optax_loop.run_optax(_calm_objective, u0, operands=(jnp.float32(5.0),), **args)
    assert unflagged.iterations == plain.iterations  # without the flag the rule is unchanged


def test_line_search_failed_reads_the_wolfe_errors():
    import optax

    from iortopt.optimisation.optax_loop import _line_search_failed

    state = optax.lbfgs().init(jnp.zeros(3))  # before any search: errors are inf

    def with_errors(decrease, curvature):
        info = optax.tree_utils.tree_get(state, "info")
        info = info._replace(decrease_error=jnp.float32(decrease), curvature_error=curvature)
        return optax.tree_utils.tree_set(state, info=info)

    assert not _line_search_failed(with_errors(0.0, jnp.float32(0.0)))
    assert _line_search_failed(with_errors(0.0, jnp.float32(5e-7)))
    assert _line_search_failed(with_errors(1e-3, jnp.float32(0.0)))
    assert not _line_search_failed(optax.adam(0.1).init(jnp.zeros(3)))


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_the_step_is_traced_once_per_run(method):
    """The optimiser state after init has the types the step returns, so a run compiles its
    step once (L-BFGS's init state is weakly typed; unstripped, the step compiled twice)."""
    from iortopt.optimisation import optax_loop

    def objective(u, offset):  # a new function: its compiled step is not shared with others
        return jnp.sum(jnp.square(u - 0.3)) + offset

    result = optax_loop.run_optax(
        objective,
        jnp.zeros(4, jnp.float32),
        method=method,
        max_iterations=20,
        operands=(jnp.float32(5.0),),
    )
    assert result.iterations > 2
    _, step = optax_loop._compiled_step(objective, method, 0.05)
    assert step._cache_size() == 1
