"""Robust HDR flap planning: the scenario geometry of a prepared plan, the robust optimisation
problem (dose of every scenario at once) and the robust evaluation of the final dwell times.

    setup(cfg, case, dwells) -> RobustSetup          scenarios, moved dwells, dwell factors
    scenario_matrices(points, setup, kernel, sk_U, dtype, chunk) -> (S, P, N) Gy/s
    scenario_doses(points, setup, times, kernel, sk_U, chunk) -> (S, P) Gy (matrix-free)
    optimisation_problem(prepared, points, use_matrix, chunk, timings) -> RobustProblem
    evaluate(prepared, terms, points, times, chunk, then) -> (summary dict, extra_writer)

Scenario s has its own dwell positions and axes (TG-43 on the moved geometry) and a factor per
dwell (dwell-time error x dose-model scale) multiplying that dwell's column, so its dose is
``D_s = A_s t`` with ``A_s`` the influence matrix of the moved dwells, columns scaled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.cases.case import Case
from iortopt.cases.catheters import Dwells
from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities.hdr_flap import scenarios as sc
from iortopt.optimisation import objectives, robust
from iortopt.physics.tg43 import GY_PER_CGY, SECONDS_PER_HOUR, dose_gy, dose_rate_matrix


@dataclass(frozen=True)
class RobustSetup:
    """The scenario set of a plan with its geometry: ``positions_mm`` / ``axes`` (S, N, 3) of the
    active dwells, ``factors`` (S, N) per-dwell dose factors, ``magnitudes`` as used."""

    scenarios: sc.Scenarios
    positions_mm: np.ndarray
    axes: np.ndarray
    factors: np.ndarray
    magnitudes: dict


def setup(cfg: PlanConfig, case: Case, dwells: Dwells) -> RobustSetup:
    """Scenarios of ``[robust]`` for the plan's active ``dwells`` (ConfigError on bad input)."""
    r = cfg.robust
    if cfg.shields:
        raise ConfigError(
            "robust: robust planning with [[shields]] is not supported yet; remove one of them"
        )
    mags = sc.magnitudes(r.magnitudes)
    sigma = {k: v["value"] for k, v in mags.items()}
    target = case.structure(cfg.prescription.structure)
    inside = np.argwhere(target.occupancy >= 0.5)
    if inside.size == 0:
        raise ConfigError(
            f"robust: the target {target.name!r} has no voxel for the lift-off normal"
        )
    normals = sc.tissue_normals(dwells.positions_mm, dwells.axes, case.grid.index_to_mm(inside))
    n_cath = int(dwells.catheter.max()) + 1 if len(dwells) else 1
    scen = sc.build(sigma, n_cath, len(dwells), r.scenarios, r.n_scenarios, r.seed)
    centre = dwells.positions_mm.mean(axis=0)
    pos, axes = sc.moved_dwells(
        dwells.positions_mm, dwells.axes, normals, dwells.catheter, centre, scen
    )
    factors = scen.time_factor * scen.dose_factor[:, None]
    return RobustSetup(scen, pos, axes, factors, mags)


def _gy_per_s_per_rate(sk_U: float) -> float:
    return sk_U * GY_PER_CGY / SECONDS_PER_HOUR


def scenario_matrices(points_mm, rs: RobustSetup, kernel, sk_U: float, dtype, chunk: int):
    """(S, P, N) influence matrices (Gy per s) of every scenario, built in chunks of ``chunk``
    points, one scenario after the other in one compiled program (``lax.map``).
    Returns (matrices, compile_s, run_s)."""
    scale = _gy_per_s_per_rate(sk_U)
    pts = jnp.asarray(points_mm, dtype)
    n_rows = pts.shape[0]
    size = max(min(chunk or 1024, n_rows), 1)

    def one(args):
        pos, axes, factor = args

        def write_chunk(i, out):
            start = jnp.minimum(i * size, n_rows - size)
            block = dose_rate_matrix(
                jax.lax.dynamic_slice_in_dim(pts, start, size), pos, axes, kernel
            )
            return jax.lax.dynamic_update_slice_in_dim(out, block * scale * factor, start, 0)

        empty = jnp.zeros((n_rows, pos.shape[0]), dtype)
        return jax.lax.fori_loop(0, -(-n_rows // size), write_chunk, empty)

    args = tuple(jnp.asarray(a, dtype) for a in (rs.positions_mm, rs.axes, rs.factors))
    t0 = time.perf_counter()
    compiled = jax.jit(lambda a: jax.lax.map(one, a)).lower(args).compile()
    t1 = time.perf_counter()
    mats = compiled(args).block_until_ready()
    return mats, t1 - t0, time.perf_counter() - t1


def scenario_doses(points_mm, rs: RobustSetup, times_s, kernel, sk_U: float, chunk: int, dtype):
    """(S, P) dose (Gy) of every scenario, matrix-free: one TG-43 pass per scenario, the
    scenarios mapped in one compiled program (``lax.map``: one scenario's memory at a time)."""

    @jax.jit
    def doses(pts, pos, axes, factors, t):
        return jax.lax.map(
            lambda a: dose_gy(pts, a[0], a[1], t * a[2], kernel, sk_U, chunk), (pos, axes, factors)
        )

    args = (points_mm, rs.positions_mm, rs.axes, rs.factors, times_s)
    return np.asarray(doses(*(jnp.asarray(a, dtype) for a in args)), np.float64)


class RobustProblem(NamedTuple):
    """The robust dwell-time problem: ``objective_of(t, params, *operands)``, the nominal
    ``dose_of(t, *operands)`` on every optimisation voxel, and the ``rows`` (indices into the
    optimisation voxels) that the scenario doses are computed on, with the ``terms`` built on
    them."""

    operands: tuple
    dose_of: Callable
    objective_of: Callable
    rows: np.ndarray
    terms: list


def term_rows(cfg: PlanConfig, weights: dict) -> np.ndarray:
    """Indices of the optimisation voxels some weighted objective term reads (the margin voxels
    and structures no term names are left out of the scenario doses)."""
    used = np.zeros(len(next(iter(weights.values()))), bool)
    for o in cfg.objectives:
        if o.structure is not None and o.weight > 0:
            used |= np.asarray(weights[o.structure]) > 0
    return np.flatnonzero(used)


def optimisation_problem(prepared, points_opt, use_matrix: bool, chunk: int, timings: dict):
    """The :class:`RobustProblem` of a prepared plan: the sum over terms of ``weight *
    aggregate`` of the term over the scenario doses ``D_s = A_s t`` on the rows the terms read
    (stacked matrices, or matrix-free TG-43 passes mapped over the scenarios)."""
    cfg, rs, dtype = prepared.config, prepared.robust, prepared.dtype
    r = cfg.robust
    rows = term_rows(cfg, prepared.weights)
    terms = objectives.build_terms(
        cfg.objectives,
        {k: jnp.asarray(np.asarray(v)[rows], dtype) for k, v in prepared.weights.items()},
        prepared.case.grid.voxel_volume_cm3,
        prepared.dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
    )
    objective = robust.robust_objective(
        terms, robust.aggregator(r.aggregate, r.temperature, r.cvar_alpha)
    )
    kernel, sk = prepared.kernel, prepared.sk_U
    nominal = (
        jnp.asarray(points_opt, dtype),
        jnp.asarray(rs.positions_mm[0], dtype),
        jnp.asarray(rs.axes[0], dtype),
    )

    def dose_of(t, *ops):  # the nominal dose on every optimisation voxel (matrix-free)
        pts, pos, axes = ops[-3:]
        return dose_gy(pts, pos, axes, t, kernel, sk, chunk)

    points = np.asarray(points_opt)[rows]
    if use_matrix:
        mats, compile_s, run_s = scenario_matrices(points, rs, kernel, sk, dtype, chunk)
        timings.update(influence_compile_s=compile_s, influence_s=run_s)

        @jax.jit  # also the optimiser's final (otherwise eager) evaluation
        def objective_of(t, params, mats, *nominal):
            return objective(jnp.einsum("spn,n->sp", mats, t), t, params)

        return RobustProblem((mats, *nominal), dose_of, objective_of, rows, terms)

    scenario_ops = tuple(
        jnp.asarray(a, dtype) for a in (points, rs.positions_mm, rs.axes, rs.factors)
    )

    @jax.jit
    def objective_of(t, params, pts, pos, axes, factors, *nominal):
        doses = jax.lax.map(
            lambda a: dose_gy(pts, a[0], a[1], t * a[2], kernel, sk, chunk), (pos, axes, factors)
        )
        return objective(doses, t, params)

    return RobustProblem((*scenario_ops, *nominal), dose_of, objective_of, rows, terms)


def evaluate(prepared, terms, points_opt, times_s, chunk: int, then=None, matrices=None):
    """The summary ``robust`` dict of the final ``times_s`` and the plan writer's
    ``extra_writer`` adding dvh_bands.png (then ``then``, e.g. the DICOM writer).
    ``matrices``: the (S, P, N) scenario matrices of the optimisation, if it built them on
    every optimisation voxel (else the doses are computed matrix-free)."""
    from iortopt.evaluation.robust_metrics import scenario_metrics
    from iortopt.outputs.plan_files import GoalSpec
    from iortopt.outputs.robust_figures import case_bands_writer, robust_summary

    cfg, rs, case, dtype = prepared.config, prepared.robust, prepared.case, prepared.dtype
    r = cfg.robust
    if matrices is not None and matrices.shape[1] == len(points_opt):
        doses = np.asarray(jnp.einsum("spn,n->sp", matrices, jnp.asarray(times_s, dtype)))
        doses = doses.astype(np.float64)
    else:
        doses = scenario_doses(
            points_opt, rs, times_s, prepared.kernel, prepared.sk_U, chunk, dtype
        )
    vv = case.grid.voxel_volume_cm3
    rx = cfg.prescription.dose_gy
    per_scenario = scenario_metrics(doses, prepared.weights, vv, rx)
    goals = [GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals]
    t = jnp.asarray(times_s, dtype)
    per_term = robust.per_term_values(
        terms, jnp.asarray(doses, dtype), t, objectives.term_params(terms, dtype)
    )
    scenario_set = sc.describe(
        rs.magnitudes,
        r.scenarios,
        rs.scenarios,
        optimise=bool(r.optimise),
        aggregate=r.aggregate,
        temperature=r.temperature,
        cvar_alpha=r.cvar_alpha,
        seed=r.seed if r.scenarios == "sampled" else None,
    )
    summary = robust_summary(
        scenario_set,
        per_scenario,
        goals,
        tuple(r.band_percent),
        extra={"objective_terms_per_scenario": per_term},
    )
    writer = case_bands_writer(
        doses, prepared.weights, case.structures, vv, tuple(r.band_percent), rx, cfg.plan.name, then
    )
    return summary, writer
