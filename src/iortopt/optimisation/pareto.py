"""Pareto sets of dose-linear plans: K weighted plans optimised together in one compiled program.

Dose is linear in the dwell times, d = A t, with A (voxels x dwells) the influence matrix in Gy/s.
Each plan k minimises a weighted sum of G objective groups,

    F_k(t) = G * sum_g W[k, g] f_g(A t, t) + f_rest(A t, t),     W[k] on the simplex,

so the simplex centroid (1/G, ..., 1/G) is the plan with every term at its config weight, and a
vertex keeps one group (plus the terms in no group, such as dwell-time modulation). All K plans
run in one jitted ``lax.scan`` of a fixed number of iterations: the K dose vectors are one matrix
product (K x dwells) @ (dwells x voxels) per iteration (or one per block of plans, blocks one
after the other in the same program, where cache size matters: CPUs), the plans' objectives
are ``jax.vmap``-ed, and the dwell times are bounded, 0 <= t <= t_max, through the variable of
:func:`iortopt.optimisation.optax_loop.times_from_u`. Adam acts elementwise, so it runs on the
(K, dwells) array directly; L-BFGS (optax, with its zoom line search) is vmapped per plan.

The DVH surrogate terms need D_v, the dose to the hottest volume v. The single-plan optimiser
sorts the structure's voxels; sorting K x voxels every iteration dominates a batched run on a CPU,
so here D_v is found by bisection on the dose (:func:`dose_at_volume_bisect`, ``BISECT_STEPS``
halvings of the dose range: within (max - min) / 2**12 of the sorted value).

Nothing here knows a modality: the caller gives A, the objective terms
(:mod:`iortopt.optimisation.objectives`), the groups and the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iortopt.optimisation.objectives import Term
from iortopt.optimisation.optax_loop import times_from_u, u_from_times

#: Plans per block on a CPU (:func:`optimise_set` ``block``): the doses of a block (40 plans x
#: 19k voxels, float32: 3 MB) stay in cache. Built-in flap case, K = 1000, loaded 2-core CPU
#: (process CPU seconds of the whole set): one block of 1000 64 s, blocks of 250 39 s, 100
#: 36 s, 40 32 s, 20 30 s; 40 gave the shortest wall time (20 s).
CPU_BLOCK = 40

#: Halvings of [min, max] of the structure dose that locate D_v in :func:`dose_at_volume_bisect`
#: (12: within 1/4096 of the dose range, a few mGy on the flap case; each halving is a pass over
#: the K x voxels doses, about half the cost of an iteration at 20).
BISECT_STEPS = 12


def dose_at_volume_bisect(d: jnp.ndarray, w: jnp.ndarray, volume, steps: int = BISECT_STEPS):
    """D_v without sorting: the largest dose x with sum(w[d >= x]) >= ``volume`` (weight units),
    found by ``steps`` halvings of [min d, max d]; the result is at most (max - min) / 2**steps
    below the sorted :func:`iortopt.optimisation.objectives.dose_at_volume`. A ``volume`` above
    the total weight gives the minimum dose, as the sorted version does. No gradient flows
    through it (the DVH terms stop it anyway; stopping it at the input keeps the differentiation
    from carrying the loop)."""
    d = jax.lax.stop_gradient(d)
    bottom, top = jnp.min(d), jnp.max(d)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        enough = jnp.sum(jnp.where(d >= mid, w, 0.0)) >= volume
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, steps, halve, (bottom, top))
    return lo


def simplex_weights(n_plans: int, n_groups: int, seed: int = 0) -> np.ndarray:
    """(n_plans, n_groups) weight vectors on the simplex (rows >= 0, summing to 1).

    Row 0 is the centroid (the nominal plan), rows 1..G the vertices, the rest a seeded scrambled
    Halton sequence in the (G-1)-cube mapped to the simplex by sorted spacings (uniform on the
    simplex, low discrepancy). Deterministic for a given seed; fewer plans than 1 + G keep the
    first rows.
    """
    from scipy.stats import qmc

    if n_groups < 2:
        raise ValueError(f"a Pareto set needs at least 2 objective groups, got {n_groups}")
    rows = [np.full(n_groups, 1.0 / n_groups), *np.eye(n_groups)]
    extra = n_plans - len(rows)
    if extra > 0:
        cube = qmc.Halton(d=n_groups - 1, scramble=True, seed=seed).random(extra)
        edges = np.concatenate(
            [np.zeros((extra, 1)), np.sort(cube, axis=1), np.ones((extra, 1))], axis=1
        )
        rows.extend(np.diff(edges, axis=1))
    return np.asarray(rows[:n_plans], np.float64)


def grouped_objective(
    terms: Sequence[Term], groups: Sequence[Sequence[int]]
) -> tuple[Callable, Callable]:
    """``(groups_fn, rest_fn)`` of ``terms``: ``groups_fn(d, t, params)`` -> (G,) the weighted
    sum of each group's terms (indices into ``terms``), ``rest_fn(d, t, params)`` -> the weighted
    sum of the terms in no group (0 if none); ``params`` from
    :func:`iortopt.optimisation.objectives.term_params`.

    Raises:
        ValueError: a term index out of range or in two groups.
    """
    seen: set[int] = set()
    for g in groups:
        for i in g:
            if not 0 <= i < len(terms):
                raise ValueError(f"term index {i} out of range (have {len(terms)} terms)")
            if i in seen:
                raise ValueError(f"term {terms[i].name!r} is in two objective groups")
            seen.add(i)
    rest = [i for i in range(len(terms)) if i not in seen]

    def weighted(i, d, t, params):
        return params[i]["weight"] * terms[i].fn(d, t, params[i])

    def groups_fn(d, t, params):
        return jnp.stack([sum(weighted(i, d, t, params) for i in g) for g in groups])

    def rest_fn(d, t, params):
        return sum((weighted(i, d, t, params) for i in rest), jnp.zeros((), d.dtype))

    return groups_fn, rest_fn


@dataclass
class ParetoRun:
    """K plans: dwell times (K, N) s, group values (K, G), total weighted objective (K,)."""

    times_s: np.ndarray
    group_values: np.ndarray
    objective: np.ndarray
    compile_s: float
    run_s: float


def _plan_value(groups_fn, rest_fn, n_groups: int, t_max_s: float):
    def value(u, w, matrix, params):
        t = times_from_u(u, t_max_s)
        d = matrix @ t
        return n_groups * jnp.dot(w, groups_fn(d, t, params)) + rest_fn(d, t, params)

    return value


def _adam_program(value, iterations: int, learning_rate: float):
    opt = optax.adam(learning_rate)
    batched = jax.vmap(value, in_axes=(0, 0, None, None))

    def run(u0, weights, matrix, params):
        def total(u):
            values = batched(u, weights, matrix, params)
            return jnp.sum(values), values

        def step(carry, _):
            u, state = carry
            grads, _ = jax.grad(total, has_aux=True)(u)
            updates, state = opt.update(grads, state, u)
            return (optax.apply_updates(u, updates), state), None

        (u, _), _ = jax.lax.scan(step, (u0, opt.init(u0)), None, length=iterations)
        return u

    return run


def _lbfgs_program(value, iterations: int):
    opt = optax.lbfgs()

    def run(u0, weights, matrix, params):
        def one(u, state, w):
            def f(u):
                return value(u, w, matrix, params)

            v, grad = optax.value_and_grad_from_state(f)(u, state=state)
            updates, state = opt.update(grad, state, u, value=v, grad=grad, value_fn=f)
            return optax.apply_updates(u, updates), state

        step_all = jax.vmap(one)

        def step(carry, _):
            return step_all(*carry, weights), None

        (u, _), _ = jax.lax.scan(step, (u0, jax.vmap(opt.init)(u0)), None, length=iterations)
        return u

    return run


def optimise_set(
    matrix,
    terms: Sequence[Term],
    groups: Sequence[Sequence[int]],
    weights: np.ndarray,
    init_times_s: np.ndarray,
    t_max_s: float,
    iterations: int = 100,
    optimizer: str = "adam",
    learning_rate: float = 0.02,
    dtype=jnp.float32,
    block: int | None = None,
) -> ParetoRun:
    """Optimise the K plans of ``weights`` (K, G) together; see the module docstring.

    Args:
        matrix: (P, N) influence matrix, Gy per second of dwell time, on the voxels the terms
            index.
        terms: objective terms on those voxels (built with ``dv_fn=dose_at_volume_bisect`` for
            speed); ``groups``: term indices of each of the G groups.
        init_times_s: (N,) or (K, N) starting dwell times (s), e.g. the nominal optimum.
        iterations: fixed iteration count of every plan.
        block: plans per matrix product (None: all K in one). The plans are independent, so a
            block runs its whole optimisation before the next (``lax.map`` in the same compiled
            program); on a CPU a block whose K x voxels doses fit the cache is several times
            faster per plan than one product of all K (:data:`CPU_BLOCK`).
    Returns:
        :class:`ParetoRun`; ``compile_s`` is tracing and compilation, ``run_s`` the run.
    """
    from iortopt.optimisation.objectives import term_params

    weights = np.asarray(weights, np.float64)
    k, n_groups = weights.shape
    if n_groups != len(groups):
        raise ValueError(f"weights have {n_groups} columns for {len(groups)} groups")
    groups_fn, rest_fn = grouped_objective(terms, groups)
    value = _plan_value(groups_fn, rest_fn, n_groups, t_max_s)
    if optimizer == "adam":
        program = _adam_program(value, iterations, learning_rate)
    elif optimizer == "lbfgs":
        program = _lbfgs_program(value, iterations)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    n_dwells = matrix.shape[1]
    init = np.broadcast_to(np.asarray(init_times_s, np.float64), (k, n_dwells))
    size = k if block is None or block >= k else max(int(block), 1)
    n_blocks = -(-k // size)
    padded = np.arange(n_blocks * size).clip(max=k - 1)  # the last plan repeated, then dropped
    params = term_params(terms, dtype)
    args = (
        jnp.asarray(u_from_times(init[padded], t_max_s), dtype).reshape(n_blocks, size, -1),
        jnp.asarray(weights[padded], dtype).reshape(n_blocks, size, n_groups),
        jnp.asarray(matrix, dtype),
        params,
    )

    def finish_block(u0, w, a, p):
        u = program(u0, w, a, p)
        t = times_from_u(u, t_max_s)
        d = t @ a.T
        g = jax.vmap(groups_fn, in_axes=(0, 0, None))(d, t, p)
        r = jax.vmap(rest_fn, in_axes=(0, 0, None))(d, t, p)
        return t, g, n_groups * jnp.sum(w * g, axis=1) + r

    def finish(u0, w, a, p):
        t, g, f = jax.lax.map(lambda b: finish_block(b[0], b[1], a, p), (u0, w))
        return t.reshape(-1, n_dwells)[:k], g.reshape(-1, n_groups)[:k], f.reshape(-1)[:k]

    t0 = time.perf_counter()
    compiled = jax.jit(finish).lower(*args).compile()
    t1 = time.perf_counter()
    times, group_values, objective = jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    return ParetoRun(
        np.asarray(times, np.float64),
        np.asarray(group_values, np.float64),
        np.asarray(objective, np.float64),
        t1 - t0,
        t2 - t1,
    )


def non_dominated(values: np.ndarray, block: int = 256) -> np.ndarray:
    """(K,) bool: rows of ``values`` (K, G), all minimised, that no other row dominates (<= in
    every column and < in one). Exact duplicates are both kept. O(K^2 G) in blocks of rows."""
    values = np.asarray(values, np.float64)
    keep = np.ones(values.shape[0], bool)
    for start in range(0, values.shape[0], block):
        rows = values[start : start + block, None, :]  # (b, 1, G) candidates
        others = values[None, :, :]  # (1, K, G)
        dominated = np.all(others <= rows, axis=2) & np.any(others < rows, axis=2)
        keep[start : start + block] = ~np.any(dominated, axis=1)
    return keep
