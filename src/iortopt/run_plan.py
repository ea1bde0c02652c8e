"""Run any plan config: pick the modality's pipeline (HDR flap, X-ray sphere or electron).

prepared = prepare(config, dtype)      # validates everything, memory included; raises, writes
                                       # nothing
result = execute(prepared, out_dir)    # optimise, evaluate, write outputs
print_result(result, console)

Before a plan starts, :func:`plan_memory` estimates its peak memory (:mod:`iortopt.memory`) from
the prepared sizes and the ``[compute]`` section, chooses the TG-43 chunk size from the budget, and
:func:`prepare` stops with a :class:`~iortopt.errors.ConfigError` when the plan cannot fit (how much
it needs, how much there is, the grid that would fit). :func:`execute` runs with that chunking and
with the voxel axis split over ``compute.devices`` (:mod:`iortopt.sharding`).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from iortopt import memory
from iortopt.config import PlanConfig, config_origin, with_origin
from iortopt.errors import ConfigError


def prepare(cfg: PlanConfig, dtype):
    """The modality's prepared plan (``PreparedPlan``, ``PreparedXray`` or ``PreparedElectron``).

    Raises:
        ConfigError: invalid input, a case too large to build (checked from the config before
            anything is built, :mod:`iortopt.case_size`), or a plan that does not fit the memory
            budget; the message starts with the config's file (or batch job) when it does not
            already.
    """
    from iortopt.case_size import check_case_size

    try:
        check_case_size(cfg, dtype)
        prepared = prepare_modality(cfg, dtype)
        check_memory(plan_memory(prepared))
    except ConfigError as exc:
        raise with_origin(exc, config_origin(cfg)) from None
    return prepared


def prepare_modality(cfg: PlanConfig, dtype):
    """:func:`prepare` without the memory check."""
    if cfg.plan.modality == "electron":
        from iortopt.plan_electron import prepare_electron

        return prepare_electron(cfg, dtype)
    if cfg.plan.modality == "xray_sphere":
        from iortopt.plan_xray import prepare_xray

        return prepare_xray(cfg, dtype)
    from iortopt.plan import prepare_plan

    return prepare_plan(cfg, dtype)


def execute(prepared, out_dir: str | Path, console: Console | None = None):
    """Optimise and write the outputs; the result has ``summary`` and ``out_dir``.

    Runs with the chunk size chosen from the memory budget and the voxel axis split over
    ``compute.devices`` (one device: the plain single-device path)."""
    plan = plan_memory(prepared)
    with ExitStack() as stack:
        stack.enter_context(
            memory.active_compute(
                memory.ActiveCompute(
                    plan.pairs_per_chunk,
                    plan.budget.usable_bytes,
                    plan.estimate.sizes.get("influence"),
                )
            )
        )
        if plan.devices > 1:
            from iortopt.sharding import active_mesh, voxel_mesh

            stack.enter_context(active_mesh(voxel_mesh(plan.devices)))
        return _execute(prepared, out_dir, console)


def _execute(prepared, out_dir: str | Path, console: Console | None):
    if prepared.config.plan.modality == "electron":
        from iortopt.plan_electron import run_electron

        return run_electron(prepared, out_dir)
    if prepared.config.plan.modality == "xray_sphere":
        from iortopt.plan_xray import run_xray

        return run_xray(prepared, out_dir)
    from iortopt.plan import optimise_and_write

    return optimise_and_write(prepared, out_dir, console=console)


def print_result(result, console: Console) -> None:
    if result.prepared.config.plan.modality == "electron":
        from iortopt.plan_electron import print_electron_summary

        print_electron_summary(result, console)
    elif result.prepared.config.plan.modality == "xray_sphere":
        from iortopt.plan_xray import print_xray_summary

        print_xray_summary(result, console)
    else:
        from iortopt.plan import print_summary

        print_summary(result, console)


# ----------------------------------------------------------------------------------------------
# Memory pre-flight
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanMemory:
    """The memory plan of one run: estimate, budget, chosen chunk and devices."""

    estimate: memory.MemoryEstimate
    budget: memory.Budget
    chunk_size: int | None  # TG-43 points per chunk (None: not a TG-43 plan)
    pairs_per_chunk: int | None
    devices: int
    fits: bool
    largest_scale: float  # fraction of the voxels (and points) that fits; 1.0 if it all fits
    spacing_mm: float

    def to_dict(self) -> dict:
        return {
            "estimate": self.estimate.to_dict(),
            "budget_mib": None
            if self.budget.usable_bytes is None
            else self.budget.usable_bytes / memory.MIB,
            "free_mib": None
            if self.budget.free_bytes is None
            else self.budget.free_bytes / memory.MIB,
            "budget_source": self.budget.source,
            "chunk_size": self.chunk_size,
            "devices": self.devices,
            "fits": self.fits,
        }


def _sizes(prepared) -> tuple[str, dict]:
    """Modality and the sizes its estimate needs, from a prepared plan (no computation)."""
    cfg = prepared.config
    if cfg.plan.modality == "electron":
        from iortopt.electron_plan import CHUNK

        case, _, samples = prepared.built_case
        n_points = int(sum(len(weights) for _, weights in samples.values()))
        return "electron", {
            "n_voxels": case.grid.n_voxels,
            "n_points": n_points,
            "n_rows": CHUNK,
            "n_structures": len(case.structures),
            "supersampling": prepared.params.supersampling,
            "spacing_mm": min(case.grid.spacing_xyz_mm),
        }
    if cfg.plan.modality == "xray_sphere":
        from iortopt.anatomy.breast import breast_geometry, case_grid

        beam, params = prepared.beam, prepared.params
        diameters = cfg.xray.catalogue_diameters_cm or list(beam.diameters_cm)
        radius_mm = 5.0 * float(max(diameters))
        grid = case_grid(params, breast_geometry(params, radius_mm))
        # Evaluation points: breast cells within reach of the cavity (a ball, at most the grid)
        # plus at most one OAR point per cell.
        reach_mm = radius_mm + params.target_thickness_mm + 3.0 + params.spacing_mm
        ball = 4.0 / 3.0 * math.pi * reach_mm**3 / params.spacing_mm**3
        n_points = int(min(ball, grid.n_voxels)) + grid.n_voxels
        return "xray_sphere", {
            "n_voxels": grid.n_voxels,
            "n_points": n_points,
            "n_sizes": len(diameters),
            "supersampling": params.supersampling,
            "spacing_mm": float(params.spacing_mm),
        }
    grid = prepared.case.grid
    return "hdr_flap", {
        "n_voxels": grid.n_voxels,
        "n_points": int(np.count_nonzero(prepared.opt_mask)),
        "n_dwells": len(prepared.dwells),
        "n_structures": len(prepared.case.structures),
        "spacing_mm": min(grid.spacing_xyz_mm),
        "n_shields": len(prepared.shield_specs),
    }


def _estimator(modality: str, s: dict, dtype, influence: str):
    """``estimate(scale, chunk)`` of the plan with voxels and points scaled by ``scale``."""

    def estimate(scale: float = 1.0, chunk: int | None = 0) -> memory.MemoryEstimate:
        v = max(int(s["n_voxels"] * scale), 1)
        p = max(int(s["n_points"] * scale), 1)
        if modality == "electron":
            return memory.electron_plan_estimate(
                v, p, s["n_rows"], 8, s["n_structures"], s["supersampling"], dtype
            )
        if modality == "xray_sphere":
            return memory.xray_plan_estimate(
                v, p, s["n_sizes"], supersampling=s["supersampling"], dtype=dtype
            )
        return memory.hdr_plan_estimate(
            v, p, s["n_dwells"], s["n_structures"], dtype, chunk, influence, s["n_shields"]
        )

    return estimate


def plan_memory(prepared, free_bytes: int | None = None) -> PlanMemory:
    """Estimate a prepared plan's peak memory and choose its chunking (nothing is computed).

    ``free_bytes`` replaces the queried free memory (tests, what-if).

    Raises:
        ConfigError: ``compute.devices`` asks for more devices than exist.
    """
    from iortopt.sharding import resolve_device_count

    cfg, dtype = prepared.config, prepared.dtype
    compute = cfg.compute
    try:
        devices = resolve_device_count(compute.devices)
    except ValueError as exc:
        raise ConfigError(f"compute.devices: {exc}") from None
    budget = memory.memory_budget(
        compute.memory_limit_mb, compute.safety_fraction, None, free_bytes
    )
    usable = budget.usable_bytes
    modality, s = _sizes(prepared)
    chunk = pairs = None
    influence = "matrix"
    if modality == "hdr_flap":
        n_dwells = s["n_dwells"]
        mode = cfg.optimizer.influence
        influence = (
            "matrix"
            if memory.use_influence_matrix(
                mode,
                s["n_points"],
                n_dwells,
                dtype,
                cfg.optimizer.influence_memory_mb,
                s["n_structures"],
                usable if usable is not None else 2**62,
            )
            else "matrix_free"
        )
    estimate = _estimator(modality, s, dtype, influence)
    if modality == "hdr_flap" and influence == "matrix" and mode == "auto" and usable is not None:
        # The matrix stays alive through the full-grid dose: drop it if the plan then won't fit.
        small = memory.MIN_CHUNK
        if estimate(1.0, small).peak_bytes > usable:
            influence = "matrix_free"
            estimate = _estimator(modality, s, dtype, influence)
    if modality == "hdr_flap":
        if compute.chunk_size > 0:
            chunk = compute.chunk_size
        else:
            preferred = memory.preferred_pairs_per_chunk(budget.platform) // max(n_dwells, 1)
            chunk = memory.choose_chunk_size(
                lambda c: estimate(1.0, c).peak_bytes, preferred, usable
            )
        fit_chunk = chunk or memory.MIN_CHUNK
        pairs = fit_chunk * max(n_dwells, 1)
        est = estimate(1.0, fit_chunk)
    else:
        est = estimate(1.0)
    fits = usable is None or est.peak_bytes <= usable
    scale = 1.0
    if not fits:
        scale = memory.largest_fitting_scale(
            lambda x: estimate(x, chunk or memory.MIN_CHUNK).peak_bytes, usable
        )
    return PlanMemory(est, budget, chunk, pairs, devices, fits, scale, s["spacing_mm"])


def check_memory(plan: PlanMemory) -> None:
    """Raise a :class:`ConfigError` if ``plan`` does not fit its budget, saying what would."""
    if plan.fits:
        return
    est, mib = plan.estimate, memory.MIB
    sizes = ", ".join(f"{k} {v}" for k, v in est.sizes.items())
    lines = [
        f"compute: the plan needs about {est.peak_bytes / mib:.0f} MiB at its peak "
        f"({est.peak_stage}; {sizes}) but the budget is {plan.budget.describe()}."
    ]
    voxels = est.sizes.get("voxels")
    if plan.largest_scale > 0 and voxels:
        fit_voxels = int(voxels * plan.largest_scale)
        spacing = plan.spacing_mm * plan.largest_scale ** (-1 / 3)
        lines.append(
            f"  what fits: about {fit_voxels} voxels, i.e. a grid spacing of at least "
            f"{spacing:.2f} mm instead of {plan.spacing_mm:g} mm"
        )
    else:
        lines.append("  even a tiny grid does not fit this budget")
    if est.sizes.get("influence") == "matrix":
        lines.append('  or optimizer.influence = "matrix_free" (no influence matrix)')
    lines.append(
        "  or raise compute.memory_limit_mb / compute.safety_fraction if more memory is free"
    )
    raise ConfigError("\n".join(lines))
