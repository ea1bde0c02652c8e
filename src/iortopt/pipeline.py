"""Run any plan config: pick the modality's pipeline (HDR flap, X-ray sphere or electron).

prepared = prepare(config, dtype)      # validates everything, memory included; raises, writes
                                       # nothing
result = execute(prepared, out_dir)    # optimise, evaluate, write outputs
print_result(result, console)

Before a plan starts, :func:`plan_memory` estimates its peak memory (:mod:`iortopt.compute.memory`)
from
the prepared sizes and the ``[compute]`` section, chooses the TG-43 chunk size from the budget, and
:func:`prepare` stops with a :class:`~iortopt.errors.ConfigError` when the plan cannot fit (how much
it needs, how much there is, the grid that would fit). :func:`execute` runs with that chunking and
with the voxel axis split over ``compute.devices`` (:mod:`iortopt.compute.sharding`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from iortopt import modalities
from iortopt.compute import memory
from iortopt.compute.run_context import RunContext
from iortopt.config import PlanConfig, config_origin, non_default_sections, with_origin
from iortopt.errors import ConfigError


def prepare(cfg: PlanConfig, dtype):
    """The modality's prepared plan (``PreparedPlan``, ``PreparedXray`` or ``PreparedElectron``).

    Raises:
        ConfigError: invalid input, a config section the modality does not use, a case too large
            to build (checked from the config before anything is built,
            :mod:`iortopt.cases.size_estimate`), or a plan that does not fit the memory budget;
            the message starts with the config's file (or batch job) when it does not already.
    """
    from iortopt.cases.size_estimate import check_case_size

    try:
        check_config(cfg)
        check_case_size(cfg, dtype)
        prepared = prepare_modality(cfg, dtype)
        check_memory(plan_memory(prepared))
    except ConfigError as exc:
        raise with_origin(exc, config_origin(cfg)) from None
    return prepared


def check_config(cfg: PlanConfig) -> None:
    """The checks of a parsed config that need its modality (:func:`check_capabilities`,
    :func:`check_sections_used`); nothing is built. Batch manifests run it on every job.

    Raises:
        ConfigError: from either check.
    """
    check_capabilities(cfg)
    check_sections_used(cfg)


def check_capabilities(cfg: PlanConfig) -> None:
    """Refuse a case that lacks a capability the modality needs (``NEEDS``, see
    :mod:`iortopt.cases.capabilities`).

    Raises:
        ConfigError: naming the modality, the missing capability, the case kind and how to
            provide it.
    """
    from iortopt.cases import capabilities

    needs = modalities.get(cfg.plan.modality).NEEDS
    missing = sorted(needs - capabilities.case_capabilities(cfg))
    if missing:
        raise ConfigError(
            "\n".join(
                capabilities.missing_message(cfg.plan.modality, capability, cfg.case.kind)
                for capability in missing
            )
        )


def check_sections_used(cfg: PlanConfig) -> None:
    """Refuse config sections that the plan's modality would ignore (a section counts as given
    when it differs from its default, so a config dumped with every default still loads).

    Raises:
        ConfigError: naming the sections, the modality and the sections it uses.
    """
    modality = modalities.get(cfg.plan.modality)
    unused = [name for name in non_default_sections(cfg) if name not in modality.SECTIONS]
    if unused:
        listed = ", ".join(f"[{name}]" for name in unused)
        raise ConfigError(
            f"{listed}: not used by plan.modality {cfg.plan.modality!r} (remove it); that "
            f"modality reads {', '.join(f'[{n}]' for n in sorted(modality.SECTIONS))}"
        )


def prepare_modality(cfg: PlanConfig, dtype):
    """:func:`prepare` without the checks: a built-in phantom's case side is built by its adapter
    (:func:`iortopt.phantoms.build`; None for a DICOM case) and handed to the modality's
    ``prepare``."""
    from iortopt import phantoms

    builtin = phantoms.build(cfg, dtype)
    return modalities.get(cfg.plan.modality).prepare(cfg, dtype, builtin)


def execute(
    prepared,
    out_dir: str | Path,
    console: Console | None = None,
    process_times_s: dict[str, float | None] | None = None,
    compile_cache: str | None = None,
):
    """Optimise and write the outputs; the result has ``summary`` and ``out_dir``.

    Runs with the chunk size chosen from the memory budget and the voxel axis split over
    ``compute.devices`` (one device: the plain single-device path), both handed to the modality
    in its :class:`~iortopt.compute.run_context.RunContext`.

    ``process_times_s``: what the caller spent before (start-up, imports, case build); they go
    first in summary.json's ``wall_times_s``, with ``total_s`` (everything up to summary.json,
    the last file written) last, so a slow run shows where its time went. ``compile_cache``: the
    persistent compilation cache folder in use (recorded in the summary; None: none)."""
    started_s = time.perf_counter()
    ctx = dataclasses.replace(
        run_context(plan_memory(prepared), console),
        started_s=started_s,
        times_before_s=process_times_s,
        compile_cache=compile_cache,
    )
    return modalities.get(prepared.config.plan.modality).run(prepared, out_dir, ctx)


def replan_session(config, dtype=None):
    """An in-memory plan to re-optimise quickly after changes (notebooks, the OR), for a modality
    that offers one (its ``replan_session``; HDR flaps:
    :class:`iortopt.modalities.hdr_flap.replan.ReplanSession`). ``config``: a path or a
    :class:`PlanConfig`; ``dtype``: jnp.float32 unless given."""
    import jax.numpy as jnp

    from iortopt.config import load_config

    cfg = config if isinstance(config, PlanConfig) else load_config(config)
    name = cfg.plan.modality
    factory = getattr(modalities.get(name), "replan_session", None)
    if factory is None:
        raise ConfigError(f"plan.modality: {name!r} plans offer no replanning session")
    prepared = prepare(cfg, jnp.float32 if dtype is None else dtype)
    return factory(prepared, run_context(plan_memory(prepared)))


def run_context(plan: PlanMemory, console: Console | None = None) -> RunContext:
    """The run settings of a memory plan: TG-43 pairs per chunk, budget, influence mode and, for
    more than one device, the voxel mesh."""
    mesh = None
    if plan.devices > 1:
        from iortopt.compute.sharding import voxel_mesh

        mesh = voxel_mesh(plan.devices)
    return RunContext(
        pairs_per_chunk=plan.pairs_per_chunk,
        budget_bytes=plan.budget.usable_bytes,
        influence=plan.estimate.sizes.get("influence"),
        mesh=mesh,
        console=console,
    )


def print_result(result, console: Console) -> None:
    modalities.get(result.prepared.config.plan.modality).print_result(result, console)


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


def plan_memory(prepared, free_bytes: int | None = None) -> PlanMemory:
    """Estimate a prepared plan's peak memory and choose its chunking (nothing is computed).

    ``free_bytes`` replaces the queried free memory (tests, what-if).

    Raises:
        ConfigError: ``compute.devices`` asks for more devices than exist.
    """
    from iortopt.compute.sharding import resolve_device_count

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
    modality = modalities.get(cfg.plan.modality)
    s = modality.memory_sizes(prepared)

    def estimate(scale: float, chunk: int | None, influence: str) -> memory.MemoryEstimate:
        scaled = {
            **s,
            "n_voxels": max(int(s["n_voxels"] * scale), 1),
            "n_points": max(int(s["n_points"] * scale), 1),
        }
        return modality.memory_estimate(scaled, chunk, dtype, influence)

    chunk = pairs = None
    influence = "matrix"
    if modality.DWELL_CHUNKED:
        influence, chunk, pairs = _dwell_chunking(cfg, s, dtype, budget, estimate)
    est = estimate(1.0, chunk or memory.MIN_CHUNK, influence)
    fits = usable is None or est.peak_bytes <= usable
    scale = 1.0
    if not fits:
        scale = memory.largest_fitting_scale(
            lambda x: estimate(x, chunk or memory.MIN_CHUNK, influence).peak_bytes, usable
        )
    return PlanMemory(est, budget, chunk, pairs, devices, fits, scale, s["spacing_mm"])


def _dwell_chunking(cfg: PlanConfig, s: dict, dtype, budget, estimate):
    """Influence matrix or matrix-free, TG-43 points per chunk and pairs per chunk of a plan that
    optimises dwell times (``s``: its memory sizes, with ``n_dwells``)."""
    compute, usable, n_dwells = cfg.compute, budget.usable_bytes, s["n_dwells"]
    mode = cfg.optimizer.influence
    influence = (
        "matrix"
        if memory.use_influence_matrix(
            mode,
            s["n_points"] * s.get("n_scenarios", 1),
            n_dwells,
            dtype,
            cfg.optimizer.influence_memory_mb,
            s["n_structures"],
            usable if usable is not None else 2**62,
        )
        else "matrix_free"
    )
    if influence == "matrix" and mode == "auto" and usable is not None:
        # The matrix stays alive through the full-grid dose: drop it if the plan then won't fit.
        if estimate(1.0, memory.MIN_CHUNK, influence).peak_bytes > usable:
            influence = "matrix_free"
    if compute.chunk_size > 0:
        chunk = compute.chunk_size
    else:
        preferred = memory.preferred_pairs_per_chunk(budget.platform) // max(n_dwells, 1)
        chunk = memory.choose_chunk_size(
            lambda c: estimate(1.0, c, influence).peak_bytes, preferred, usable
        )
    pairs = (chunk or memory.MIN_CHUNK) * max(n_dwells, 1)
    return influence, chunk, pairs


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
