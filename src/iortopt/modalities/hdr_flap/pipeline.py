"""One HDR flap plan from config to outputs: setup, optimisation, full dose, metrics, files.

    prepare_plan(config, dtype, builtin) -> PreparedPlan   case, dwells, source, optimisation
                                                           voxels, terms (``builtin``: the
                                                           built-in phantom's
                                                           :class:`FlapCaseSide`, from
                                                           :mod:`iortopt.phantoms`)
    optimise_and_write(prepared) -> PlanResult    influence matrix, optimiser, full-grid dose,
                                                  DVHs/metrics/goals, plan.zarr, summary.json,
                                                  PNGs

The optimisation runs on the voxels that matter (every structure plus ``voxel_margin_mm``), with an
explicit influence matrix (Gy per second of each dwell) when it fits in ``influence_memory_mb`` and
matrix-free kernel passes otherwise; the full grid is computed once at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from scipy import ndimage

from iortopt.cases.case import Case
from iortopt.cases.catheters import Dwells, FlapApplicator, select_active
from iortopt.compute.progress import DelayedProgress
from iortopt.compute.run_context import RunContext
from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities import COMMON_SECTIONS, stage_settings
from iortopt.optimisation import objectives
from iortopt.outputs.dicom_export import hdr_writer
from iortopt.outputs.plan_files import (
    common_summary,
    evaluate_plan,
    format_wall_times,
    print_report,
    provenance,
    write_plan_outputs,
)
from iortopt.physics.sources import SourceData, load_source
from iortopt.physics.tg43 import (
    GY_PER_CGY,
    SECONDS_PER_HOUR,
    TG43Kernel,
    auto_chunk_size,
    decay_factor,
    dose_gy,
    dose_rate_matrix,
    make_kernel,
)


@dataclass(frozen=True)
class FlapCaseSide:
    """The case side of an HDR flap plan: a built-in phantom's, built by its adapter
    (:mod:`iortopt.phantoms`) from the ``[case.<phantom>]`` parameters, or a DICOM case's."""

    case: Case
    applicator: FlapApplicator
    source_to_surface_mm: float  # catheter axis to the tissue surface (active-dwell selection)
    #: keyword arguments of ``shield_placement.build_specs`` naming the phantom whose surfaces
    #: shields may be given on (e.g. ``{"flap": params}`` for ``surface = "behind_flap"``)
    shield_surfaces: dict = field(default_factory=dict)
    #: a DICOM case's clinical plan (``applicator.from_rtplan``): its dwell times and S_K
    #: (:class:`iortopt.cases.dicom_case.ClinicalPlan`), reported beside the re-optimised plan
    clinical: object = None


@dataclass
class PreparedPlan:
    config: PlanConfig
    case: Case
    dwells: Dwells  # active dwells only
    all_dwells: Dwells
    source: SourceData
    kernel: TG43Kernel
    sk_U: float
    opt_mask: np.ndarray  # (nz, ny, nx) bool: optimisation voxels
    weights: dict[str, np.ndarray]  # structure -> occupancy on optimisation voxels
    dtype: object
    setup_s: float
    notes: list[str] = field(default_factory=list)
    shield_specs: list = field(default_factory=list)  # shield_placement.ShieldSpec
    clinical: object = None  # FlapCaseSide.clinical
    robust: object = None  # robust.RobustSetup when [robust] is given


@dataclass
class PlanResult:
    prepared: PreparedPlan
    times_s: np.ndarray
    dose_gy: np.ndarray
    metrics: dict
    goals: list[dict]
    summary: dict
    out_dir: Path


def _as_datetime(value) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time())


def _case_side(cfg: PlanConfig, builtin: FlapCaseSide | None) -> FlapCaseSide:
    """The case, applicator, source-to-surface distance and shield surfaces of the plan: a DICOM
    case's from ``[case.dicom]`` and ``[applicator]``, a built-in phantom's as its adapter built
    them.

    Raises:
        ConfigError: a built-in case kind without its ``builtin`` (built by
            :func:`iortopt.pipeline.prepare_modality`).
    """
    if cfg.case.kind == "dicom" and cfg.applicator.from_rtplan:
        from iortopt.cases.dicom_case import flap_case_from_rtplan

        case, applicator, clinical = flap_case_from_rtplan(cfg)
        return FlapCaseSide(case, applicator, cfg.applicator.source_to_surface_mm, {}, clinical)
    if cfg.case.kind == "dicom":
        from iortopt.cases.dicom_case import flap_case_from_config

        case, applicator = flap_case_from_config(cfg)
        return FlapCaseSide(case, applicator, cfg.applicator.source_to_surface_mm)
    if cfg.applicator.from_rtplan:
        raise ConfigError(
            f"applicator.from_rtplan: needs case.kind = 'dicom' (the RTPLAN's CT and RTSTRUCT), "
            f"not {cfg.case.kind!r}"
        )
    if builtin is None:
        raise ConfigError(
            f"case.kind {cfg.case.kind!r}: a built-in phantom's case is built by its adapter "
            "(iortopt.phantoms); prepare the plan with iortopt.pipeline.prepare"
        )
    return builtin


def _active_mask(
    cfg: PlanConfig, case: Case, dwells: Dwells, spacing_mm: float, source_to_surface_mm: float
) -> np.ndarray:
    app = cfg.applicator
    if app.active == "auto" and app.from_rtplan:
        return np.ones(len(dwells), bool)  # the clinical plan's dwells, all of them
    if app.active == "auto":
        target = case.structure(cfg.prescription.structure)
        source_to_surface = float(source_to_surface_mm)
        try:
            return select_active(
                dwells,
                target.occupancy,
                case.grid,
                source_to_surface + app.active_margin_mm + spacing_mm / 2,
            )
        except ValueError as exc:
            raise ConfigError(f"applicator.active: {exc}") from None
    wanted = {tuple(p) for p in app.active}
    mask = np.array(
        [(int(c), int(i)) in wanted for c, i in zip(dwells.catheter, dwells.index, strict=True)]
    )
    found = {
        (int(c), int(i)) for c, i in zip(dwells.catheter[mask], dwells.index[mask], strict=True)
    }
    missing = sorted(wanted - found)
    if missing:
        raise ConfigError(
            f"applicator.active: no dwell position (catheter, index) {missing[:5]} "
            "in the applicator"
        )
    return mask


def _optimisation_mask(case: Case, margin_mm: float) -> np.ndarray:
    inside = np.zeros(case.grid.shape_zyx, bool)
    for s in case.structures:
        inside |= s.occupancy > 0
    if margin_mm <= 0:
        return inside
    sx, sy, sz = case.grid.spacing_xyz_mm
    distance = ndimage.distance_transform_edt(~inside, sampling=(sz, sy, sx))
    return distance <= margin_mm


#: Smallest fraction of the calibrated S_K a plan accepts after decay. 10 % is 3.3 half-lives
#: (about 8 months for Ir-192, whose sources are exchanged after 3-4 months, at 30-40 %): below
#: it the calibration or treatment date is almost certainly wrong (e.g. a year typed wrong), and a
#: plan would silently stretch every dwell time.
MIN_DECAY_FACTOR = 0.1


def _check_optimisable(cfg: PlanConfig, n_dwells: int) -> None:
    """An HDR plan needs an active dwell and an objective term that counts (ConfigError)."""
    if n_dwells == 0:
        raise ConfigError("applicator.active: no active dwell position; nothing to optimise")
    if not any(o.weight > 0 for o in cfg.objectives):
        given = "none given" if not cfg.objectives else "every weight is 0"
        raise ConfigError(
            f"objectives: an hdr_flap plan needs at least one [[objectives]] term with weight > 0 "
            f"({given}); without one the dwell times are not optimised"
        )


def _check_decay(cfg: PlanConfig, factor: float, half_life_days: float) -> None:
    if factor >= MIN_DECAY_FACTOR:
        return
    calibration = _as_datetime(cfg.source.calibration)
    treatment = _as_datetime(cfg.source.treatment)
    days = (treatment - calibration).total_seconds() / 86400.0
    raise ConfigError(
        f"source.calibration / source.treatment: the source would have decayed to "
        f"{100 * factor:.3g} % of its calibrated S_K ({days:.0f} days, "
        f"{days / half_life_days:.1f} half-lives, from {calibration.isoformat()} to "
        f"{treatment.isoformat()}); below {100 * MIN_DECAY_FACTOR:g} % the dates are refused "
        "as implausible (a source is exchanged long before): check both dates"
    )


def prepare_plan(
    cfg: PlanConfig, dtype=jnp.float32, builtin: FlapCaseSide | None = None
) -> PreparedPlan:
    """Build the case, dwells, source and optimisation voxels; validate every cross-reference.

    ``builtin``: the built-in phantom's case side (:class:`FlapCaseSide`, from
    :mod:`iortopt.phantoms`); None for a DICOM case, which is imported here.

    Raises:
        ConfigError / SourceDataError: with the field or file at fault. Nothing is written.
    """
    t0 = time.perf_counter()
    side = _case_side(cfg, builtin)
    case = side.case
    stage_settings.check_config_names(cfg, case)
    all_dwells = side.applicator.dwells(cfg.applicator.step_mm)
    active = _active_mask(
        cfg, case, all_dwells, min(case.grid.spacing_xyz_mm), side.source_to_surface_mm
    )
    dwells = all_dwells.subset(active)
    source = load_source(cfg.source.model)
    try:
        kernel = make_kernel(source, cfg.source.formalism, dtype)
    except ValueError as exc:
        raise ConfigError(f"source.formalism: {exc}") from None
    sk = cfg.source.air_kerma_strength_U
    notes = []
    if cfg.source.calibration is not None:
        try:
            factor = decay_factor(
                source.half_life_days,
                _as_datetime(cfg.source.calibration),
                _as_datetime(cfg.source.treatment),
            )
        except ValueError as exc:
            raise ConfigError(f"source.treatment: {exc}") from None
        _check_decay(cfg, factor, source.half_life_days)
        sk *= factor
        notes.append(f"S_K decayed by {factor:.4f} from calibration to treatment")
    _check_optimisable(cfg, len(dwells))
    opt_mask = _optimisation_mask(case, cfg.optimizer.voxel_margin_mm)
    weights = {s.name: s.occupancy[opt_mask] for s in case.structures}
    shield_specs = []
    if cfg.shields:
        from iortopt.optimisation.shield_placement import build_specs

        shield_specs = build_specs(
            cfg.shields,
            case,
            cfg.plan.modality,
            dtype,
            applicator_points_mm=dwells.positions_mm,
            **side.shield_surfaces,
        )
    robust_setup = None
    if cfg.robust is not None:
        from iortopt.modalities.hdr_flap import robust as hdr_robust

        robust_setup = hdr_robust.setup(cfg, case, dwells)
    return PreparedPlan(
        cfg,
        case,
        dwells,
        all_dwells,
        source,
        kernel,
        sk,
        opt_mask,
        weights,
        dtype,
        time.perf_counter() - t0,
        notes,
        shield_specs,
        clinical=side.clinical,
        robust=robust_setup,
    )


def _influence_matrix(
    points_mm: np.ndarray,
    dwells: Dwells,
    kernel: TG43Kernel,
    sk_U: float,
    dtype,
    chunk_size: int = 0,
    mesh=None,
):
    """(P, N) dose in Gy per second of dwell time, computed in chunks of ``chunk_size`` points
    (0: ``auto_chunk_size``; a plan run passes the chunk it chose from its memory budget).

    Each chunk of rows is written in place into the (P, N) result, so the build holds one matrix
    and one chunk (a padded matrix sliced afterwards would hold two). The last chunk is shifted
    back to end at row P (rows computed twice, same values).
    With a multi-device ``mesh`` (:func:`iortopt.compute.sharding.voxel_mesh`) every device
    builds its own rows, and the matrix stays split by rows when P is a multiple of the device
    count (the optimiser's ``matrix @ t`` then runs on every device); ``compile_s`` is then
    included in ``run_s``. Returns (matrix, compile_s, run_s)."""
    from iortopt.compute.sharding import sharded_influence_matrix

    scale = sk_U * GY_PER_CGY / SECONDS_PER_HOUR
    chunk = chunk_size or auto_chunk_size(len(dwells))

    def build(pts, pos, axes):
        n_rows = pts.shape[0]
        size = max(min(chunk, n_rows), 1)

        def write_chunk(i, out):
            start = jnp.minimum(i * size, n_rows - size)
            block = dose_rate_matrix(
                jax.lax.dynamic_slice_in_dim(pts, start, size), pos, axes, kernel
            )
            return jax.lax.dynamic_update_slice_in_dim(out, block * scale, start, 0)

        empty = jnp.zeros((n_rows, pos.shape[0]), pts.dtype)
        return jax.lax.fori_loop(0, -(-n_rows // size), write_chunk, empty)

    args = (
        jnp.asarray(points_mm, dtype),
        jnp.asarray(dwells.positions_mm, dtype),
        jnp.asarray(dwells.axes, dtype),
    )
    if mesh is not None and mesh.size > 1:
        t0 = time.perf_counter()
        matrix = sharded_influence_matrix(lambda p: build(p, *args[1:]), args[0], mesh)
        return matrix.block_until_ready(), 0.0, time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = jax.jit(build).lower(*args).compile()
    t1 = time.perf_counter()
    matrix = compiled(*args).block_until_ready()
    return matrix, t1 - t0, time.perf_counter() - t1


def _use_influence_matrix(
    cfg: PlanConfig, n_points: int, n_dwells: int, dtype, ctx: RunContext
) -> bool:
    """Explicit matrix or matrix-free passes (``optimizer.influence``): in ``"auto"`` what the
    run's memory plan decided (``ctx.influence``), else the matrix when it is at most
    ``optimizer.influence_memory_mb`` and its optimiser step fits the run's budget
    (:func:`iortopt.compute.memory.use_influence_matrix`)."""
    from iortopt.compute.memory import use_influence_matrix

    if cfg.optimizer.influence == "auto" and ctx.influence is not None:
        return ctx.influence == "matrix"
    return use_influence_matrix(
        cfg.optimizer.influence,
        n_points,
        n_dwells,
        dtype,
        cfg.optimizer.influence_memory_mb,
        n_structures=max(len(cfg.objectives), 1),
        budget_bytes=ctx.budget_bytes,
    )


def _initial_time_s(
    dose_all_unit_times: np.ndarray, target_w: np.ndarray, rx_gy: float, t_max_s: float
) -> float:
    """The equal dwell time giving the prescription as the mean target dose (below t_max).

    ``dose_all_unit_times``: (P,) dose in Gy with every active dwell at 1 s.
    """
    mean = float(np.sum(target_w * dose_all_unit_times) / np.sum(target_w))
    value = rx_gy / mean if mean > 0 else t_max_s / 2
    return min(value, 0.9 * t_max_s)


def checkpoint_path_for(out_dir: str | Path) -> Path:
    """Where a run writing ``out_dir`` keeps its optimiser checkpoint (removed on success)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.checkpoint.npz")


def shield_checkpoint_path_for(out_dir: str | Path) -> Path:
    """Where a run writing ``out_dir`` keeps its shield-stage checkpoint (removed on success)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.shields.checkpoint.npz")


def resume_times(
    path: Path, run_key: str, n_dwells: int, t_max_s: float, notes: list[str]
) -> np.ndarray | None:
    """Dwell times (s) of a valid checkpoint of this run at ``path``, else None.

    A damaged, foreign or out-of-bounds checkpoint is never fatal: it is ignored with a warning
    printed to stderr and added to ``notes``; one of another config is ignored with a note.
    """
    import sys

    from iortopt.optimisation.optax_loop import CheckpointRejected, load_checkpoint

    if not path.exists():
        return None
    try:
        times, iteration, key = load_checkpoint(path, n_dwells, t_max_s)
    except CheckpointRejected as exc:
        message = f"ignored the checkpoint {path} ({exc}); optimising from the start"
        print(f"warning: {message}", file=sys.stderr)
        notes.append(message)
        return None
    if key != run_key:
        notes.append(f"ignored the checkpoint {path.name} of another config")
        return None
    notes.append(f"resumed from checkpoint at iteration {iteration}")
    return np.clip(times, 0.0, t_max_s)


def checkpoint_writer(path: Path, run_key: str, notes: list[str]):
    """``checkpoint(iteration, times_s)`` saving to ``path``; a failed write (a folder in the
    way, a full disk) warns once and the run goes on without checkpoints."""
    import sys

    from iortopt.optimisation.optax_loop import save_checkpoint

    failed = []

    def write(iteration: int, times_s: np.ndarray) -> None:
        if failed:
            return
        try:
            save_checkpoint(path, times_s, iteration, run_key)
        except OSError as exc:
            failed.append(exc)
            message = f"cannot write the checkpoint {path} ({exc.strerror or exc}); not resumable"
            print(f"warning: {message}", file=sys.stderr)
            notes.append(message)

    return write


def checkpoint_key(cfg: PlanConfig, n_dwells: int) -> str:
    """Identifies the problem a checkpoint belongs to: the whole config and the dwell count."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16] + f"-{n_dwells}"


def optimise_and_write(
    prepared: PreparedPlan,
    out_dir: str | Path,
    ctx: RunContext | None = None,
    fixed_times_s: np.ndarray | None = None,
) -> PlanResult:
    """Optimise dwell times, compute the full dose and write every output into ``out_dir``.

    ``ctx``: the run's chunking, influence mode, device mesh and progress console (None: the
    defaults on one device, no progress display). Every 25 iterations the dwell times go to a
    checkpoint beside ``out_dir``; a later run of the same config into the same folder starts
    from it (an interrupted long run resumes). ``fixed_times_s``: write the plan of these dwell
    times (s) without optimising (``iortopt pareto pick``). With ``[pareto]`` the Pareto set of
    :mod:`iortopt.modalities.hdr_flap.pareto` is computed after the nominal plan.
    """
    ctx = ctx or RunContext()
    cfg, case, dwells, dtype = prepared.config, prepared.case, prepared.dwells, prepared.dtype
    grid = case.grid
    timings = {"setup_s": prepared.setup_s}
    points_opt = grid.points_mm(np.float32)[prepared.opt_mask.reshape(-1)]
    n_dwells = len(dwells)
    weights = {k: jnp.asarray(v, dtype) for k, v in prepared.weights.items()}
    terms = objectives.build_terms(
        cfg.objectives,
        weights,
        grid.voxel_volume_cm3,
        dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
        partial_sort=prepared.robust is None,  # robust evaluation vmaps the terms
    )
    total = objectives.combine(terms)
    chunk = ctx.chunk_size(n_dwells)
    rob = prepared.robust
    robust_opt = rob is not None and cfg.robust.optimise and len(rob.scenarios) > 1
    n_rows = points_opt.shape[0] * (len(rob.scenarios) if robust_opt else 1)
    use_matrix = _use_influence_matrix(cfg, n_rows, n_dwells, dtype, ctx)
    if prepared.shield_specs and not use_matrix:
        raise ConfigError(
            "shields: the shield optimisation needs the explicit influence matrix "
            f"({points_opt.shape[0]} voxels x {n_dwells} dwells); set optimizer.influence = "
            "'matrix' or 'auto' with a larger optimizer.influence_memory_mb, or a coarser grid"
        )
    from iortopt.modalities.hdr_flap import pareto as hdr_pareto

    hdr_pareto.check_usable(cfg, use_matrix, points_opt.shape[0], n_dwells)
    if cfg.pareto is not None and robust_opt:
        raise ConfigError(
            "pareto: a Pareto set is made of nominal plans; it cannot be combined with "
            "[robust] optimise = true (use optimise = false to evaluate its plans)"
        )
    if robust_opt:
        from iortopt.modalities.hdr_flap import robust as hdr_robust

        problem = hdr_robust.optimisation_problem(prepared, points_opt, use_matrix, chunk, timings)
        operands, dose_of, objective_of = problem.operands, problem.dose_of, problem.objective_of
    elif use_matrix:
        matrix, compile_s, run_s = _influence_matrix(
            points_opt, dwells, prepared.kernel, prepared.sk_U, dtype, chunk, ctx.mesh
        )
        timings.update(influence_compile_s=compile_s, influence_s=run_s)
        operands = (matrix,)

        def dose_of(t, matrix):
            return matrix @ t

    else:
        operands = (
            jnp.asarray(points_opt, dtype),
            jnp.asarray(dwells.positions_mm, dtype),
            jnp.asarray(dwells.axes, dtype),
        )

        def dose_of(t, pts, pos, axes):
            return dose_gy(pts, pos, axes, t, prepared.kernel, prepared.sk_U, chunk, mesh=ctx.mesh)

    if not robust_opt:

        def objective_of(t, params, *ops):
            return total(dose_of(t, *ops), t, params)

    unit_dose = np.asarray(jax.jit(dose_of)(jnp.ones(n_dwells, dtype), *operands))
    target_w = prepared.weights[cfg.prescription.structure]
    t_max = cfg.applicator.max_dwell_time_s
    init = np.full(n_dwells, _initial_time_s(unit_dose, target_w, cfg.prescription.dose_gy, t_max))

    from iortopt.optimisation import bucketed
    from iortopt.optimisation.buckets import bucketed_runs_enabled
    from iortopt.optimisation.optax_loop import minimise

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_path = checkpoint_path_for(out_dir)
    shield_checkpoint_path = shield_checkpoint_path_for(out_dir)
    run_key = checkpoint_key(cfg, n_dwells)
    resumed = resume_times(checkpoint_path, run_key, n_dwells, t_max, prepared.notes)
    if resumed is not None:
        init = resumed

    bar = DelayedProgress(ctx.console, cfg.optimizer.max_iterations, "optimising")
    params = objectives.term_params(terms, dtype)
    progress = lambda it, value: bar.update(it, f"objective {value:.4g}")  # noqa: E731
    checkpoint = checkpoint_writer(checkpoint_path, run_key, prepared.notes)
    problem = None
    loop_settings = dict(
        method=cfg.optimizer.method,
        max_iterations=cfg.optimizer.max_iterations,
        tolerance=cfg.optimizer.tolerance,
        learning_rate=cfg.optimizer.learning_rate,
        progress=progress,
        checkpoint=checkpoint,
    )
    if use_matrix and not robust_opt and fixed_times_s is None and bucketed_runs_enabled():
        problem = _bucketed_problem(prepared, matrix)
        result = bucketed.minimise_problem(problem, init, t_max, **loop_settings)
    else:
        optimise = minimise if fixed_times_s is None else _fixed_plan(fixed_times_s, t_max)
        result = optimise(
            objective_of, init, t_max, dtype=dtype, operands=(params, *operands), **loop_settings
        )
    bar.close()
    timings.update(optimise_compile_s=result.compile_s, optimise_s=result.optimise_s)
    times_s, stage = result.times_s, None
    if prepared.shield_specs:
        from iortopt.modalities.hdr_flap import shields as hdr_shields
        from iortopt.optimisation import shield_placement as shl

        stage = hdr_shields.run_shield_stage(
            prepared,
            total,
            params,
            operands[0],
            points_opt,
            result.times_s,
            ctx.console,
            shield_checkpoint_path,
            run_key,
        )
        times_s = stage.optimum.times_s
        timings.update(
            shield_compile_s=stage.optimum.compile_s, shield_optimise_s=stage.optimum.optimise_s
        )

    t0 = time.perf_counter()
    if stage is None:
        full = dose_gy(
            grid.points_mm(np.float32),
            dwells.positions_mm,
            dwells.axes,
            times_s,
            prepared.kernel,
            prepared.sk_U,
            chunk_size=cfg.output.dose_chunk_size or chunk,
            mesh=ctx.mesh,
        )
        dose = np.asarray(full, np.float32).reshape(grid.shape_zyx)
    else:
        dose = hdr_shields.full_dose_gy(prepared, times_s, stage, ctx)
    timings["full_dose_s"] = time.perf_counter() - t0
    times_final = jnp.asarray(times_s, dtype)
    if stage is None and problem is not None:
        term_values = bucketed.term_values(problem, times_s)  # one program, one transfer
    else:
        dose_opt = (
            dose_of(times_final, *operands)
            if stage is None
            else jnp.asarray(dose.reshape(-1)[prepared.opt_mask.reshape(-1)], dtype)
        )
        term_values = objectives.evaluate(terms, dose_opt, times_final)

    evaluation = evaluate_plan(stage_settings.evaluation_settings(cfg), case, dose)
    settings = stage_settings.output_settings(cfg)
    summary = common_summary(settings, case, evaluation, dtype)
    summary |= {
        "source": prepared.source.key,
        "air_kerma_strength_U": prepared.sk_U,
        "n_dwells_active": n_dwells,
        "n_dwells_total": len(prepared.all_dwells),
        "total_treatment_time_s": float(np.sum(times_s)),
        "total_reference_air_kerma_uGy_m2": float(prepared.sk_U * np.sum(times_s) / 3600.0),
        "source_strength": source_strength(prepared),
        "optimisation_voxels": int(points_opt.shape[0]),
        "influence": "matrix" if use_matrix else "matrix_free",
        "objective": result.objective,
        "objective_terms": term_values,
        "iterations": result.iterations,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "method": result.method,
        "notes": prepared.notes,
    }
    if stage is not None:
        summary["objective"] = stage.optimum.objective
        summary |= hdr_shields.shield_summary(prepared, stage, evaluation, result.times_s, ctx)
    if prepared.clinical is not None:
        summary["from_rtplan"] = clinical_comparison(prepared, evaluation, times_s, chunk)
    extra_writer = _dicom_writer(prepared, dose, evaluation, times_s)
    if rob is not None:
        from iortopt.modalities.hdr_flap import robust as hdr_robust

        t0 = time.perf_counter()
        summary["robust"], extra_writer = hdr_robust.evaluate(
            prepared,
            terms,
            points_opt,
            times_s,
            chunk,
            extra_writer,
            matrices=operands[0] if robust_opt and use_matrix else None,
        )
        timings["robust_evaluation_s"] = time.perf_counter() - t0
    pareto_set = None
    if cfg.pareto is not None and fixed_times_s is None:
        pareto_set = hdr_pareto.compute_set(prepared, operands[0], times_s)
        summary["pareto"] = hdr_pareto.summary(pareto_set)
        timings["pareto_s"] = pareto_set.timings_s["wall_s"]
        extra_writer = hdr_pareto.writer(pareto_set, cfg, then=extra_writer)
    summary["wall_times_s"] = timings
    d = dwells
    write_plan_outputs(
        settings,
        case,
        dose,
        evaluation,
        summary,
        out_dir,
        applicator={
            "dwells": {
                "positions_mm": d.positions_mm,
                "axes": d.axes,
                "times_s": times_s,
                "catheter": d.catheter,
                "index": d.index,
            }
        }
        | (
            {}
            if stage is None
            else shl.store_groups(stage.specs, stage.placed, stage.optimum.size_index)
        ),
        provenance_attrs=provenance(
            cfg.plan.modality,
            case,
            dtype,
            source=prepared.source.key,
            source_citation=prepared.source.citation,
            formalism=cfg.source.formalism,
            air_kerma_strength_U=prepared.sk_U,
        ),
        markers_mm=d.positions_mm,
        extra_writer=extra_writer,
        shield_points_mm=None if stage is None else shl.figure_points(stage.specs, stage.placed),
        ctx=ctx,
    )
    for path in (checkpoint_path, shield_checkpoint_path):
        if path.is_file() or path.is_symlink():  # never a folder someone put there
            path.unlink(missing_ok=True)
    return PlanResult(
        prepared, times_s, dose, evaluation["metrics"], evaluation["goals"], summary, out_dir
    )


def _bucketed_problem(prepared: PreparedPlan, matrix):
    """The nominal dwell-time problem on the rows its terms read, padded to size buckets
    (:mod:`iortopt.optimisation.bucketed`): a case of similar size reuses the compiled step."""
    from iortopt.modalities.hdr_flap.pareto import structure_blocks
    from iortopt.optimisation import bucketed

    cfg = prepared.config
    return bucketed.build_problem(
        cfg.objectives,
        structure_blocks(cfg, prepared.weights, np.asarray(matrix)),
        prepared.dwells.neighbour_pairs(),
        prepared.case.grid.voxel_volume_cm3,
        cfg.prescription.dose_gy,
        prepared.dtype,
    )


def clinical_comparison(prepared: PreparedPlan, evaluation: dict, times_s, chunk: int) -> dict:
    """The clinical plan (``applicator.from_rtplan``: its dwell times with the S_K its TPS used,
    on every planned dwell, no shields) beside the re-optimised plan: total time, S_K, metrics."""
    cfg, case, clinical = prepared.config, prepared.case, prepared.clinical
    all_dwells = prepared.all_dwells
    dose = dose_gy(
        case.grid.points_mm(np.float32),
        all_dwells.positions_mm,
        all_dwells.axes,
        clinical.times_s,
        prepared.kernel,
        clinical.sk_U,
        chunk_size=cfg.output.dose_chunk_size or chunk,
    )
    dose = np.asarray(dose, np.float32).reshape(case.grid.shape_zyx)
    theirs = evaluate_plan(stage_settings.evaluation_settings(cfg), case, dose)
    return {
        "rtplan": clinical.path,
        "source_model": clinical.source_model,
        "warnings": list(clinical.warnings),
        "clinical": {
            "air_kerma_strength_U": clinical.sk_U,
            "total_treatment_time_s": float(np.sum(clinical.times_s)),
            "metrics": theirs["metrics"],
            "goals": theirs["goals"],
        },
        "reoptimised": {
            "air_kerma_strength_U": prepared.sk_U,
            "total_treatment_time_s": float(np.sum(times_s)),
            "metrics": evaluation["metrics"],
            "goals": evaluation["goals"],
        },
    }


def source_strength(prepared: PreparedPlan) -> dict:
    """The source as the plan used it: model, citation, half-life, S_K (U = uGy m^2 h^-1) at
    calibration and at treatment and the decay factor between them (1 without dates)."""
    cfg = prepared.config.source
    calibrated = cfg.air_kerma_strength_U
    return {
        "model": prepared.source.key,
        "citation": prepared.source.citation,
        "formalism": cfg.formalism,
        "half_life_days": prepared.source.half_life_days,
        "calibration": None if cfg.calibration is None else cfg.calibration.isoformat(),
        "treatment": None if cfg.treatment is None else cfg.treatment.isoformat(),
        "air_kerma_strength_U_at_calibration": calibrated,
        "decay_factor": prepared.sk_U / calibrated,
        "air_kerma_strength_U_at_treatment": prepared.sk_U,
    }


def _fixed_plan(times_s: np.ndarray, t_max_s: float):
    """A stand-in for ``optax_loop.minimise`` that returns ``times_s`` unchanged (clipped to
    [0, t_max]) with their objective: the plan of given dwell times."""
    from iortopt.optimisation.optax_loop import OptimizationResult

    def fixed(objective_of_times, init, t_max, method, dtype, operands, **_):
        times = np.clip(np.asarray(times_s, np.float64), 0.0, t_max_s)
        value = float(objective_of_times(jnp.asarray(times, dtype), *operands))
        return OptimizationResult(
            times, value, 0, True, "dwell times given (not optimised)", [value], method=method
        )

    return fixed


def _dicom_writer(prepared: PreparedPlan, dose_gy: np.ndarray, evaluation: dict, times_s):
    """:func:`iortopt.outputs.dicom_export.hdr_writer` when ``[output] dicom = true``, else None."""
    cfg = prepared.config
    if not cfg.output.dicom:
        return None
    return hdr_writer(
        stage_settings.dicom_plan_info(cfg),
        prepared.case,
        dose_gy,
        evaluation["dvhs"],
        prepared.dwells,
        times_s,
        prepared.source,
        prepared.sk_U,
        step_mm=cfg.applicator.step_mm,
        calibration=cfg.source.calibration,
        calibration_air_kerma_strength_U=cfg.source.air_kerma_strength_U,
    )


def print_summary(result: PlanResult, console: Console) -> None:
    """Metrics table, clinical goals (met or not) and timings on the terminal."""
    s = result.summary
    print_report(s, result.prepared.case, console)
    if "robust" in s:
        from iortopt.outputs.robust_figures import print_robust_table

        print_robust_table(s["robust"], console)
    w = s["wall_times_s"]
    console.print(
        f"{s['n_dwells_active']} active dwells, total time {s['total_treatment_time_s']:.1f} s "
        f"at S_K {s['air_kerma_strength_U']:.0f} U; "
        f"{s['iterations']} iterations ({s['stop_reason']}); "
        + format_wall_times(w)
        + f"; outputs in {result.out_dir}",
        highlight=False,
    )


# ----------------------------------------------------------------------------------------------
# The modality interface (iortopt.modalities)
# ----------------------------------------------------------------------------------------------

NAME = "hdr_flap"
#: The config sections this modality reads; others are refused when given.
SECTIONS = COMMON_SECTIONS | {
    "source",
    "applicator",
    "objectives",
    "optimizer",
    "shields",
    "pareto",
    "robust",
}
#: Case capabilities it needs (:mod:`iortopt.cases.capabilities`).
NEEDS = frozenset({"catheters"})
DWELL_CHUNKED = True
prepare = prepare_plan
print_result = print_summary


def run(prepared: PreparedPlan, out_dir: str | Path, ctx: RunContext) -> PlanResult:
    return optimise_and_write(prepared, out_dir, ctx)


def replan_session(prepared: PreparedPlan, ctx: RunContext):
    """The plan kept in memory for fast replans (:mod:`iortopt.modalities.hdr_flap.replan`):
    its influence matrix and the run's starting dwell time are built here."""
    from iortopt.modalities.hdr_flap.replan import ReplanSession

    cfg = prepared.config
    if cfg.optimizer.influence == "matrix_free":
        raise ConfigError(
            'optimizer.influence: a replanning session needs the matrix ("matrix" or "auto")'
        )
    points = prepared.case.grid.points_mm(np.float32)[prepared.opt_mask.reshape(-1)]
    n = len(prepared.dwells)
    matrix, _, _ = _influence_matrix(
        points, prepared.dwells, prepared.kernel, prepared.sk_U, prepared.dtype, ctx.chunk_size(n)
    )
    unit = np.asarray(matrix @ jnp.ones(n, prepared.dtype))
    target = prepared.weights[cfg.prescription.structure]
    start = _initial_time_s(unit, target, cfg.prescription.dose_gy, cfg.applicator.max_dwell_time_s)
    return ReplanSession(prepared, matrix, start)


def memory_sizes(prepared: PreparedPlan) -> dict:
    grid = prepared.case.grid
    return {
        "n_voxels": grid.n_voxels,
        "n_points": int(np.count_nonzero(prepared.opt_mask)),
        "n_dwells": len(prepared.dwells),
        "n_structures": len(prepared.case.structures),
        "spacing_mm": min(grid.spacing_xyz_mm),
        "n_shields": len(prepared.shield_specs),
        "n_scenarios": _optimised_scenarios(prepared),
    }


def _optimised_scenarios(prepared: PreparedPlan) -> int:
    """Scenarios the optimiser holds at once (1 without robust optimisation)."""
    rob, cfg = prepared.robust, prepared.config
    return len(rob.scenarios) if rob is not None and cfg.robust.optimise else 1


def memory_estimate(s: dict, chunk: int | None, dtype, influence: str):
    from iortopt.compute import memory

    return memory.hdr_plan_estimate(
        s["n_voxels"],
        s["n_points"],
        s["n_dwells"],
        s["n_structures"],
        dtype,
        chunk,
        influence,
        s["n_shields"],
        s.get("n_scenarios", 1),
    )
