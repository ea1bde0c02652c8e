"""HDR flap plans with shields: dwell times and shield positions/sizes optimised together.

The unshielded influence matrix M (Gy per second of each dwell, optimisation voxels x dwells) does
not depend on the shields; a shield multiplies each entry by its transmission factor F(pose) along
the dwell -> voxel segment. Only the (voxel, dwell) pairs whose segment can cross a shield in some
allowed pose (:func:`shield_pairs`: a hard-edged envelope of every position and size, so the
selection is exact for the model) get F recomputed at each step, from crossings computed once:

    d_i = sum_j M_ij t_j + sum over selected pairs (i, j) of M_ij (F_ij(pose) - 1) t_j

Sizes come from each shield's catalogue: every size is tried (a shortened joint optimisation
warm-started from the best so far) and the one with the lowest objective is kept; a final joint
optimisation polishes dwell times and positions for the chosen sizes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.compute.run_context import RunContext
from iortopt.optimisation import shield_placement as shl
from iortopt.optimisation.optax_loop import (
    CheckpointRejected,
    read_npz_checked,
    run_optax,
    times_from_u,
    u_from_times,
)
from iortopt.physics import shield as sh
from iortopt.physics.tg43 import GY_PER_CGY, SECONDS_PER_HOUR, auto_chunk_size, dose_rate_matrix

HIGHEST = jax.lax.Precision.HIGHEST
#: Iterations of the shortened joint optimisation that scores each catalogue size.
TRIAL_ITERATIONS = 25
#: A crossing present in at most this fraction of the pairs is stored for those pairs only.
SPARSE_FRACTION = 0.5


@dataclass
class ShieldedOptimum:
    times_s: np.ndarray
    pose: np.ndarray  # (S, 3): u mm, v mm, rotation rad
    size_index: np.ndarray  # (S,)
    objective: float
    iterations: int
    converged: bool
    stop_reason: str
    size_trials: list[dict] = field(default_factory=list)
    compile_s: float = 0.0
    optimise_s: float = 0.0
    affected_pairs: int = 0
    notes: list[str] = field(default_factory=list)  # checkpoint warnings


def shield_pairs(points_opt: np.ndarray, positions_mm: np.ndarray, specs, dtype):
    """The (voxel, dwell) pairs whose segment can cross some shield in some allowed pose, and
    per shield the pose-independent :class:`~iortopt.physics.shield.Crossings` of those pairs.

    Returns (rows (K,), cols (K,), [Crossings per shield])."""
    envs = [shl.envelope(s) for s in specs]
    pos = jnp.asarray(positions_mm, dtype)

    @jax.jit
    def hit(p):
        total = 0.0
        for env, s in zip(envs, specs, strict=True):
            total = total + sh.path_length_mm(
                pos[None, :, :], p[:, None, :], env, "rectangle", s.surface, 0.0
            )
        return total > 0

    chunk = max(1, 2**20 // max(len(positions_mm), 1))
    n = points_opt.shape[0]
    rows, cols = [], []
    for start in range(0, n, chunk):
        block = np.zeros((chunk, 3), np.float32)
        part = points_opt[start : start + chunk]
        block[: len(part)] = part
        r, c = np.nonzero(np.asarray(hit(jnp.asarray(block, dtype)))[: len(part)])
        rows.append(r + start)
        cols.append(c)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    crossing = jax.jit(
        lambda a, b, base, surface: sh.crossings(a, b, base, surface), static_argnums=3
    )
    pts = jnp.asarray(points_opt[rows], dtype)
    src = pos[jnp.asarray(cols)]
    per_shield = [_compact(crossing(src, pts, s.base, s.surface), rows.size) for s in specs]
    return rows, cols, per_shield


def _compact(cross: sh.Crossings, n_pairs: int) -> list[tuple]:
    """Per crossing k: (pair indices or None, Crossings of those pairs (1, M)). A crossing that
    few pairs have (a ray leaving a cylindrical shell again) keeps only those pairs."""
    out = []
    lengths = np.asarray(cross.length_mm)
    for k in range(lengths.shape[0]):
        keep = np.flatnonzero(lengths[k] > 0)
        if keep.size == 0:
            continue
        part = sh.Crossings(*(jnp.asarray(a[k : k + 1]) for a in cross))
        if keep.size > SPARSE_FRACTION * n_pairs:
            out.append((None, part))
        else:
            idx = jnp.asarray(keep)
            out.append((idx, sh.Crossings(*(a[:, idx] for a in part))))
    return out


def _pair_path_length_mm(pieces, shield, spec, n_pairs: int):
    """Effective path length (mm) of every pair from its compacted crossings."""
    total = 0.0
    for idx, cross in pieces:
        length = sh.occupied_length_mm(cross, shield, spec.shape, spec.surface, spec.edge_mm)
        if idx is None:
            total = total + length
        else:
            total = total + jnp.zeros(n_pairs, length.dtype).at[idx].add(length)
    return total


def optimise_with_shields(
    specs: list[shl.ShieldSpec],
    total,
    params,
    matrix: jnp.ndarray,
    points_opt: np.ndarray,
    positions_mm: np.ndarray,
    init_times_s: np.ndarray,
    t_max_s: float,
    distance_map: np.ndarray,
    grid,
    optimizer_cfg,
    dtype=jnp.float32,
    progress=None,
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
) -> ShieldedOptimum:
    """Joint optimisation of dwell times, shield positions and catalogue sizes.

    Args:
        total: objective(dose (P,), times (N,), params) of the plan (:func:`objectives.combine`).
        matrix: (P, N) unshielded influence matrix on ``points_opt`` (P, 3) mm.
        distance_map: target distance map (mm) on ``grid`` for the distance constraint.
        optimizer_cfg: the ``[optimizer]`` section (method, iterations, tolerance, rate).
        progress: progress(iteration, objective) for the final run.
        checkpoint_path / checkpoint_key: the state (chosen sizes, dwell-time and pose variables)
            is saved there after the size trials and every 25 iterations of the final run; a
            later call with the same key starts the final run from it (sizes kept, no trials).
    """
    t_setup = time.perf_counter()
    rows, cols, crossings = shield_pairs(points_opt, positions_mm, specs, dtype)
    low, high = (jnp.asarray(a, dtype) for a in shl.pose_ranges(specs))
    n_points = points_opt.shape[0]
    rows_j, cols_j = jnp.asarray(rows), jnp.asarray(cols)
    operands = (
        params,
        matrix,
        matrix[rows_j, cols_j],
        rows_j,
        cols_j,
        crossings,
        jnp.asarray(distance_map, dtype),
    )

    def objective(u, half_sizes, params, m, m_pairs, rows, cols, crossings, dist):
        t = times_from_u(u[0], t_max_s)
        placed = shl.shields_at(specs, shl.pose_from_z(u[1], low, high), half_sizes)
        factor = 1.0
        for shield, spec, pieces in zip(placed, specs, crossings, strict=True):
            length = _pair_path_length_mm(pieces, shield, spec, rows.shape[0])
            factor = factor * sh.transmission(length, spec.table)
        dose = jnp.matmul(m, t, precision=HIGHEST)
        delta = jax.ops.segment_sum(m_pairs * (factor - 1.0) * t[cols], rows, n_points)
        penalty = shl.distance_penalty(placed, specs, dist, grid)
        return jnp.asarray(
            total(dose + delta, t, params) + shl.DISTANCE_PENALTY_WEIGHT * penalty, dtype
        )

    def run(u0, size_index, iterations, progress_fn=None, checkpoint=None):
        half = jnp.asarray(shl.half_sizes(specs, size_index), dtype)
        return run_optax(
            objective,
            u0,
            optimizer_cfg.method,
            iterations,
            optimizer_cfg.tolerance,
            optimizer_cfg.learning_rate,
            progress_fn,
            checkpoint if checkpoint_path is not None else None,
            operands=(half, *operands),
        )

    u = (
        u_from_times(init_times_s, t_max_s).astype(dtype),
        jnp.asarray(shl.z_from_pose(shl.start_pose(specs), specs), dtype),
    )
    compile_s = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    trial_iterations = min(TRIAL_ITERATIONS, optimizer_cfg.max_iterations)

    def trial(sizes, u_start):
        loop = run(u_start, sizes, trial_iterations)
        return loop.history[-1], loop.u

    saved, warning = _load_state(
        checkpoint_path, checkpoint_key, u, [len(s.sizes_mm) for s in specs]
    )
    notes = [] if warning is None else [warning]
    if saved is not None:
        size_index, u, resumed_at = saved
        trials = [{"resumed_from_iteration": resumed_at}]
    else:
        size_index, u, trials = shl.choose_sizes(specs, trial, u)
        _save_state(checkpoint_path, checkpoint_key, size_index, u, 0, notes)

    def save(it, u_now):
        _save_state(checkpoint_path, checkpoint_key, size_index, u_now, it, notes)

    final = run(u, size_index, optimizer_cfg.max_iterations, progress, save)
    u = final.u
    pose = np.asarray(shl.pose_from_z(u[1], low, high), np.float64)
    return ShieldedOptimum(
        times_s=np.asarray(times_from_u(u[0], t_max_s), np.float64),
        pose=pose,
        size_index=size_index,
        objective=final.history[-1],
        iterations=final.iterations,
        converged=final.converged,
        stop_reason=final.stop_reason,
        size_trials=trials,
        compile_s=compile_s + final.compile_s,
        optimise_s=time.perf_counter() - t0,
        affected_pairs=int(rows.size),
        notes=notes,
    )


def _save_state(
    path: Path | None, key: str, size_index, u, iteration: int, notes: list[str]
) -> None:
    """Write the shield stage's state to ``path`` (.npz, atomically; nothing when path is None).

    A failed write warns once (printed and in ``notes``) and the stage goes on without it."""
    if path is None or any(n.startswith("cannot write the shield checkpoint") for n in notes):
        return
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(
            tmp,
            size_index=np.asarray(size_index, np.int64),
            u_times=np.asarray(u[0]),
            u_pose=np.asarray(u[1]),
            iteration=np.asarray(int(iteration)),
            key=np.asarray(str(key)),
        )
        tmp.replace(path)
    except OSError as exc:
        message = f"cannot write the shield checkpoint {path} ({exc.strerror or exc})"
        print(f"warning: {message}", file=sys.stderr)
        notes.append(message)


def _check_state(data: dict, u_like, n_sizes: list[int]) -> None:
    """Raise CheckpointRejected unless ``data`` fits the stage (shapes, dtypes, bounds)."""
    index = data["size_index"]
    if index.dtype.kind not in "iu" or index.shape != (len(n_sizes),):
        raise CheckpointRejected(
            f"size_index is {index.dtype}{list(index.shape)}, expected {len(n_sizes)} integers"
        )
    if np.any(index < 0) or np.any(index >= np.asarray(n_sizes)):
        raise CheckpointRejected(f"size_index {index.tolist()} outside the catalogues {n_sizes}")
    for name, like in (("u_times", u_like[0]), ("u_pose", u_like[1])):
        value = data[name]
        if value.dtype.kind != "f" or value.shape != tuple(like.shape):
            raise CheckpointRejected(
                f"{name} is {value.dtype}{list(value.shape)}, expected {list(like.shape)} floats"
            )
        if not np.all(np.isfinite(value)):
            raise CheckpointRejected(f"{name} holds NaN or infinite values")
    it = data["iteration"]
    if it.shape != () or it.dtype.kind not in "iu" or int(it) < 0:
        raise CheckpointRejected("iteration is not a non-negative integer")
    if data["key"].shape != () or data["key"].dtype.kind != "U":
        raise CheckpointRejected("key is not a string")


def _load_state(path: Path | None, key: str, u_like, n_sizes: list[int]):
    """((size_index, u, iteration) or None, warning or None) from the checkpoint at ``path``.

    ``n_sizes``: catalogue length per shield. A matching valid checkpoint gives the state; one of
    another plan gives (None, None); a damaged or out-of-bounds one (None, warning), the warning
    also printed to stderr. Never pickle, never fatal."""
    if path is None or not path.exists():
        return None, None
    keys = ("size_index", "u_times", "u_pose", "iteration", "key")
    try:
        data = read_npz_checked(path, keys)
        _check_state(data, u_like, n_sizes)
    except CheckpointRejected as exc:
        message = f"ignored the shield checkpoint {path} ({exc}); choosing sizes from the start"
        print(f"warning: {message}", file=sys.stderr)
        return None, message
    if str(data["key"]) != key:
        return None, None
    u = (
        jnp.asarray(data["u_times"], u_like[0].dtype),
        jnp.asarray(data["u_pose"], u_like[1].dtype),
    )
    return (data["size_index"].astype(int), u, int(data["iteration"])), None


def placed_shields(specs, optimum: ShieldedOptimum, dtype=jnp.float32):
    """The shields at the optimum's positions and sizes."""
    half = shl.half_sizes(specs, optimum.size_index)
    return shl.shields_at(specs, jnp.asarray(optimum.pose, dtype), jnp.asarray(half, dtype))


def shielded_dose_gy(
    points_mm: np.ndarray,
    positions_mm: np.ndarray,
    axes: np.ndarray,
    times_s: np.ndarray,
    kernel,
    sk_U: float,
    placed,
    specs,
    chunk_size: int = 0,
) -> np.ndarray:
    """Full dose (Gy) at points with the shields in place, in chunks of points.

    Each chunk holds chunk x dwells kernel values and transmission factors."""
    dtype = kernel.g_values.dtype
    n_dwells = positions_mm.shape[0]
    chunk = chunk_size or auto_chunk_size(n_dwells)
    n = points_mm.shape[0]
    n_chunks = -(-n // chunk)
    padded = np.zeros((n_chunks * chunk, 3), np.float32)
    padded[:n] = points_mm
    scale = sk_U * GY_PER_CGY / SECONDS_PER_HOUR

    @jax.jit
    def run(pts, pos, ax, t, placed):
        def one(p):
            rate = dose_rate_matrix(p, pos, ax, kernel) * scale
            factor = shl.transmission_factor(pos[None, :, :], p[:, None, :], placed, specs)
            return jnp.matmul(rate * factor, t, precision=HIGHEST)

        return jax.lax.map(one, pts.reshape(n_chunks, chunk, 3)).reshape(-1)

    out = run(
        jnp.asarray(padded, dtype),
        jnp.asarray(positions_mm, dtype),
        jnp.asarray(axes, dtype),
        jnp.asarray(times_s, dtype),
        placed,
    )
    return np.asarray(out)[:n]


# ----------------------------------------------------------------------------------------------
# Plan glue (called from iortopt.modalities.hdr_flap.pipeline.optimise_and_write)
# ----------------------------------------------------------------------------------------------

#: Metrics of the target compared with and without the shields.
TARGET_METRICS = ("D90_gy", "V100_percent", "D98_gy")


@dataclass
class ShieldStage:
    specs: list
    optimum: ShieldedOptimum
    placed: list
    distance_map: np.ndarray


def run_shield_stage(
    prepared,
    total,
    params,
    matrix,
    points_opt,
    init_times_s,
    console=None,
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
) -> ShieldStage:
    """Optimise dwell times with the shields, starting from the unshielded optimum (or from the
    stage's checkpoint, see :func:`optimise_with_shields`)."""
    from iortopt.compute.progress import DelayedProgress

    cfg, case, dtype = prepared.config, prepared.case, prepared.dtype
    specs = prepared.shield_specs
    distance_map = shl.target_distance_map_mm(case, cfg.prescription.structure)
    bar = DelayedProgress(console, cfg.optimizer.max_iterations, "optimising with shields")
    optimum = optimise_with_shields(
        specs,
        total,
        params,
        matrix,
        points_opt,
        prepared.dwells.positions_mm,
        init_times_s,
        cfg.applicator.max_dwell_time_s,
        distance_map,
        case.grid,
        cfg.optimizer,
        dtype,
        progress=lambda it, value: bar.update(it, f"objective {value:.4g}"),
        checkpoint_path=checkpoint_path,
        checkpoint_key=checkpoint_key,
    )
    bar.close()
    prepared.notes.extend(optimum.notes)
    return ShieldStage(specs, optimum, placed_shields(specs, optimum, dtype), distance_map)


def full_dose_gy(
    prepared, times_s, stage: ShieldStage | None = None, ctx: RunContext | None = None
) -> np.ndarray:
    """Dose (Gy) on the whole grid, (nz, ny, nx), with the stage's shields if given.

    Points per chunk: ``output.dose_chunk_size``, else the run's (``ctx``); without shields the
    points are split over ``ctx.mesh``."""
    from iortopt.physics.tg43 import dose_gy

    ctx = ctx or RunContext()
    grid, dwells = prepared.case.grid, prepared.dwells
    points = grid.points_mm(np.float32)
    chunk = prepared.config.output.dose_chunk_size or ctx.chunk_size(len(dwells))
    args = (points, dwells.positions_mm, dwells.axes, times_s, prepared.kernel, prepared.sk_U)
    if stage is None:
        flat = dose_gy(*args, chunk_size=chunk, mesh=ctx.mesh)
    else:
        flat = shielded_dose_gy(*args, stage.placed, stage.specs, chunk)
    return np.asarray(flat, np.float32).reshape(grid.shape_zyx)


def shield_summary(
    prepared, stage: ShieldStage, evaluation, unshielded_times_s, ctx: RunContext | None = None
) -> dict:
    """Summary fields: the placed shields, the optimisation, and protected-OAR and target metrics
    of (1) this plan, (2) the plan optimised without shields, (3) this plan's dwell times with the
    shields removed."""
    from iortopt.modalities import stage_settings
    from iortopt.outputs.plan_files import evaluate_plan

    cfg, case = prepared.config, prepared.case
    opt = stage.optimum
    distances = shl.min_target_distance(stage.placed, stage.specs, stage.distance_map, case.grid)
    placed = [
        shl.describe(spec, shield, int(k), dist)
        for spec, shield, k, dist in zip(
            stage.specs, stage.placed, opt.size_index, distances, strict=True
        )
    ]
    target = cfg.prescription.structure
    settings = stage_settings.evaluation_settings(cfg)

    def metrics_of(times_s):
        return evaluate_plan(settings, case, full_dose_gy(prepared, times_s, ctx=ctx))["metrics"]

    unshielded, removed = metrics_of(unshielded_times_s), metrics_of(opt.times_s)
    comparison = {
        label: shl.comparison_metrics(metrics, stage.specs, target, TARGET_METRICS)
        for label, metrics in (
            ("with_shields", evaluation["metrics"]),
            ("optimised_without_shields", unshielded),
            ("same_times_shields_removed", removed),
        )
    }
    return {
        "shields": placed,
        "shield_optimisation": {
            "iterations": opt.iterations,
            "converged": opt.converged,
            "stop_reason": opt.stop_reason,
            "objective": opt.objective,
            "size_trials": opt.size_trials,
            "shield_pairs": opt.affected_pairs,
            "compile_s": opt.compile_s,
            "optimise_s": opt.optimise_s,
            "total_time_without_shields_s": float(np.sum(unshielded_times_s)),
        },
        "shield_comparison": comparison,
    }
