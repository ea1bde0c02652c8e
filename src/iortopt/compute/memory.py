"""Peak memory of every engine, computed before it runs; free device memory; chunk sizes from it.

An estimate is a :class:`MemoryEstimate`: arrays alive throughout (``persistent``) plus, per stage
(building points, an influence matrix, one optimiser step, a full-grid dose...), the arrays alive
only then. The peak is the persistent bytes plus the largest stage. Every figure is an upper bound
of what XLA allocates, from the buffer counts below (measured with ``compiled.memory_analysis()``
on the CPU backend, float32, jax 0.10) and the arrays the pipelines keep on the host;
``benchmarks/bench_memory.py`` and ``tests/test_memory.py`` compare it with measurements.

    budget = memory_budget(memory_limit_mb=None, safety_fraction=0.8)    # free memory, queried
    est = tg43_dose_estimate(n_points, n_dwells, chunk_size, np.float32)
    chunk = choose_chunk_size(lambda c: tg43_dose_estimate(P, N, c).peak_bytes, preferred, budget)

Free memory: on CPU the host's available memory (``MemAvailable`` in /proc/meminfo, else
``os.sysconf``, and the cgroup v2 limit of the process where there is one); on a GPU the
device's ``memory_stats()`` (``bytes_limit - bytes_in_use``, JAX's pool; see
:mod:`iortopt.compute.runtime` for the preallocation settings), queried lazily.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIB = 2**20
#: Values per point x dwell pair held while one TG-43 chunk is evaluated (6.7 to 7.0 measured).
TG43_VALUES_PER_PAIR = 8
#: Values per (size, point) pair of the X-ray catalogue pass (1 measured isotropic, 7 with the
#: shaft anisotropy), besides its (K, P) output.
XRAY_VALUES_PER_PAIR = 8
#: Values per (cone, point) pair of one step of the electron catalogue map (10.1 to 10.3
#: measured), besides its (K, P) output.
ELECTRON_VALUES_PER_PAIR = 12
#: Point-sized vectors of one optimiser step besides the dose operands (dose, cotangents,
#: objective terms, line-search candidates), plus one per structure weight.
STEP_VECTORS_PER_POINT = 24
#: Dwell-sized vectors of optax L-BFGS (memory 10: 2 x 10 history, state, line search).
LBFGS_VECTORS_PER_DWELL = 40
#: Point-sized vectors of one step of the X-ray or electron continuous optimisers (one applicator
#: or cone; the gradient keeps the forward pass's intermediates).
POSE_STEP_VECTORS_PER_POINT = 64
#: Host bytes per voxel while ``Grid.points_mm`` builds the points beyond the float32 result:
#: three float64 meshgrids and their float64 stack.
GRID_POINTS_BUILD_BYTES = 48
#: Host bytes per voxel of plan evaluation and outputs (DVHs, metrics, zarr, figures): the float32
#: dose and a few float64 working copies.
OUTPUT_BYTES_PER_VOXEL = 32
#: Per shield and (voxel, dwell) pair of the HDR shield stage: pair indices and matrix entry, the
#: crossings (length, u, v for up to two crossings) and the values of one value-and-gradient
#: evaluation (occupancy, length, transmission and their cotangents). Not fitted to a measurement:
#: a count of the arrays, rounded up.
SHIELD_VALUES_PER_PAIR = 24
#: Smallest chunk (points) the automatic choice goes down to.
MIN_CHUNK = 64
#: Host memory kept back on CPU for the Python process, JAX and compiled programs (measured RSS of
#: the runtime alone: 0.5 to 0.7 GiB).
CPU_RUNTIME_RESERVE_BYTES = 1024 * MIB
#: Point x dwell pairs per chunk preferred on accelerators (large chunks keep them busy).
#: Point x dwell pairs a TG-43 chunk holds on CPU by default (see :func:`auto_chunk_size`).
PAIRS_PER_CHUNK = 131072
ACCELERATOR_PAIRS_PER_CHUNK = 2**24
DEFAULT_SAFETY_FRACTION = 0.8


# ----------------------------------------------------------------------------------------------
# Estimates
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one engine or plan: ``persistent`` parts plus, per stage, that stage's parts."""

    engine: str
    persistent: dict[str, int]
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    sizes: dict[str, int | str] = field(default_factory=dict)

    @property
    def persistent_bytes(self) -> int:
        return int(sum(self.persistent.values()))

    def stage_bytes(self, stage: str) -> int:
        return int(sum(self.stages[stage].values()))

    @property
    def peak_stage(self) -> str | None:
        if not self.stages:
            return None
        return max(self.stages, key=self.stage_bytes)

    @property
    def peak_bytes(self) -> int:
        stage = self.peak_stage
        return self.persistent_bytes + (0 if stage is None else self.stage_bytes(stage))

    def rows(self) -> list[tuple[str, str, int]]:
        """(stage, part, bytes) rows; persistent parts have stage ``"all"``."""
        out = [("all", part, int(b)) for part, b in self.persistent.items()]
        for stage, parts in self.stages.items():
            out += [(stage, part, int(b)) for part, b in parts.items()]
        return out

    def to_dict(self) -> dict:
        return {
            "engine": self.engine,
            "sizes": dict(self.sizes),
            "peak_mib": self.peak_bytes / MIB,
            "peak_stage": self.peak_stage,
            "persistent_mib": {k: v / MIB for k, v in self.persistent.items()},
            "stages_mib": {
                s: {k: v / MIB for k, v in parts.items()} for s, parts in self.stages.items()
            },
        }


def _itemsize(dtype) -> int:
    return int(np.dtype(dtype).itemsize)


def _chunk(n_points: int, n_dwells: int, chunk_size: int | None) -> int:
    """Points per chunk as ``tg43.dose_gy`` resolves ``chunk_size`` (0 auto, None all)."""
    if chunk_size == 0:
        chunk_size = auto_chunk_size(n_dwells)
    if chunk_size is None:
        return max(n_points, 1)
    return max(1, min(int(chunk_size), max(n_points, 1)))


def _tg43_pass(n_points: int, n_dwells: int, chunk: int, b: int, gradient: bool) -> dict[str, int]:
    """Device bytes of one chunked TG-43 pass over ``n_points`` (its points counted by caller)."""
    padded = -(-n_points // chunk) * chunk
    chunked = padded > chunk or chunk < n_points
    pass_copies = 2 if gradient else 1  # forward and the recomputed block in the backward pass
    parts = {
        "chunk temporaries": pass_copies * TG43_VALUES_PER_PAIR * chunk * n_dwells * b,
        "padded points": 3 * padded * b if chunked else 0,
        "dose (padded and sliced)": 2 * padded * b,
    }
    if gradient:
        parts["per-chunk residuals"] = 4 * padded * b
    return parts


def tg43_dose_estimate(
    n_points: int,
    n_dwells: int,
    chunk_size: int | None = 0,
    dtype=np.float32,
    grid_points: bool = False,
) -> MemoryEstimate:
    """Full dose by :func:`iortopt.physics.tg43.dose_gy` (no gradient).

    ``grid_points``: include the host points built by ``Grid.points_mm(float32)`` and the float32
    dose copied back (as in a plan's full-grid dose); else the points are already on the device.
    """
    b = _itemsize(dtype)
    chunk = _chunk(n_points, n_dwells, chunk_size)
    persistent = {"points": 3 * n_points * b}
    stages = {"dose": _tg43_pass(n_points, n_dwells, chunk, b, gradient=False)}
    if grid_points:
        persistent |= {"grid points (host float32)": 12 * n_points, "dose (host)": 4 * n_points}
        stages["build points"] = {"grid points (float64 build)": GRID_POINTS_BUILD_BYTES * n_points}
    sizes = {"points": n_points, "dwells": n_dwells, "chunk": chunk, "dtype": np.dtype(dtype).name}
    return MemoryEstimate("tg43_dose", persistent, stages, sizes)


def _step_parts(n_points: int, n_dwells: int, n_structures: int, b: int) -> dict[str, int]:
    return {
        "step vectors": (STEP_VECTORS_PER_POINT + n_structures) * n_points * b,
        "L-BFGS state": LBFGS_VECTORS_PER_DWELL * n_dwells * b,
    }


def tg43_matrix_estimate(
    n_points: int,
    n_dwells: int,
    dtype=np.float32,
    n_structures: int = 1,
    chunk_size: int | None = 0,
) -> MemoryEstimate:
    """Influence matrix (P x N, built chunk by chunk in place) and one optimiser step on it
    (value, gradient, L-BFGS update with its line search)."""
    b = _itemsize(dtype)
    chunk = _chunk(n_points, n_dwells, chunk_size)
    persistent = {
        "optimisation points (host float32)": 12 * n_points,
        "influence matrix": n_points * n_dwells * b,
    }
    stages = {
        "build matrix": {
            "points": 3 * n_points * b,
            "chunk temporaries": (TG43_VALUES_PER_PAIR + 1) * chunk * n_dwells * b,
        },
        "optimiser step": _step_parts(n_points, n_dwells, n_structures, b),
    }
    sizes = {"points": n_points, "dwells": n_dwells, "chunk": chunk, "dtype": np.dtype(dtype).name}
    return MemoryEstimate("tg43_matrix", persistent, stages, sizes)


def tg43_matrix_free_estimate(
    n_points: int,
    n_dwells: int,
    dtype=np.float32,
    n_structures: int = 1,
    chunk_size: int | None = 0,
) -> MemoryEstimate:
    """One optimiser step with chunked kernel passes (``dose_gy`` recomputing each chunk in the
    backward pass), no matrix."""
    b = _itemsize(dtype)
    chunk = _chunk(n_points, n_dwells, chunk_size)
    persistent = {"optimisation points (host float32)": 12 * n_points, "points": 3 * n_points * b}
    step = _tg43_pass(n_points, n_dwells, chunk, b, gradient=True)
    step |= _step_parts(n_points, n_dwells, n_structures, b)
    sizes = {"points": n_points, "dwells": n_dwells, "chunk": chunk, "dtype": np.dtype(dtype).name}
    return MemoryEstimate("tg43_matrix_free", persistent, {"optimiser step": step}, sizes)


def xray_catalogue_estimate(n_points: int, n_sizes: int, dtype=np.float32) -> MemoryEstimate:
    """All K sphere sizes at P points in one vmapped pass (``physics.xray.catalogue_dose_gy``),
    the (K, P) result copied to the host in float64."""
    b = _itemsize(dtype)
    persistent = {"points": 3 * n_points * b, "points (host float64)": 24 * n_points}
    stages = {
        "catalogue pass": {
            "temporaries": XRAY_VALUES_PER_PAIR * n_sizes * n_points * b,
            "doses": n_sizes * n_points * b,
            "doses (host float64)": 8 * n_sizes * n_points,
        }
    }
    return MemoryEstimate(
        "xray_catalogue", persistent, stages, {"points": n_points, "sizes": n_sizes}
    )


def electron_catalogue_estimate(
    n_points: int, n_rows: int = 16, batch_size: int = 8, dtype=np.float32
) -> MemoryEstimate:
    """K catalogue rows (energy, cone, bevel, disc) at P points: a sequential map over groups of
    ``batch_size`` rows (``physics.electron.catalogue_dose_gy``), the (K, P) result copied to the
    host in float64."""
    b = _itemsize(dtype)
    persistent = {"points": 3 * n_points * b}
    stages = {
        "catalogue pass": {
            "temporaries": ELECTRON_VALUES_PER_PAIR * min(batch_size, n_rows) * n_points * b,
            "doses": n_rows * n_points * b,
            "doses (host float64)": 8 * n_rows * n_points,
        }
    }
    sizes = {"points": n_points, "rows": n_rows, "batch": batch_size}
    return MemoryEstimate("electron_catalogue", persistent, stages, sizes)


# ----------------------------------------------------------------------------------------------
# Whole plans
# ----------------------------------------------------------------------------------------------


def _merge(name: str, persistent: dict, *estimates: MemoryEstimate, extra_stages=None, sizes=None):
    """One plan estimate: shared persistent parts; each engine's stages with its own persistent
    parts added to them (an engine's arrays live only while the pipeline runs that engine)."""
    stages = {}
    for est in estimates:
        for stage, parts in est.stages.items():
            stages[f"{est.engine}: {stage}"] = {**est.persistent, **parts}
    stages |= extra_stages or {}
    return MemoryEstimate(name, dict(persistent), stages, sizes or {})


def hdr_plan_estimate(
    n_voxels: int,
    n_opt_voxels: int,
    n_dwells: int,
    n_structures: int,
    dtype=np.float32,
    chunk_size: int | None = 0,
    influence: str = "matrix",
    n_shields: int = 0,
    n_scenarios: int = 1,
) -> MemoryEstimate:
    """HDR plan (``plan.optimise_and_write``): optimisation on ``n_opt_voxels`` with an influence
    matrix (``influence="matrix"``, kept until the end) or matrix-free passes, then the full grid
    dose and the outputs. With ``n_shields``, the joint shield stage on (at most) every
    optimisation voxel x dwell pair, and the shielded full-grid dose. With ``n_scenarios`` > 1
    (robust optimisation) the optimiser holds one matrix (or dose pass) per scenario: the
    optimisation stage is that of ``n_scenarios * n_opt_voxels`` rows."""
    n_rows = n_opt_voxels * max(int(n_scenarios), 1)
    persistent = {
        "structure occupancies (host float32)": 4 * n_structures * n_voxels,
        "optimisation mask and weights (host)": n_voxels + 4 * n_structures * n_opt_voxels,
    }
    if influence == "matrix":
        opt = tg43_matrix_estimate(n_rows, n_dwells, dtype, n_structures, chunk_size)
        persistent |= opt.persistent  # the matrix stays referenced through the full dose
        opt = MemoryEstimate(opt.engine, {}, opt.stages, opt.sizes)
    else:
        opt = tg43_matrix_free_estimate(n_rows, n_dwells, dtype, n_structures, chunk_size)
    full = tg43_dose_estimate(n_voxels, n_dwells, chunk_size, dtype, grid_points=True)
    outputs = {"outputs": {"evaluation and files (host)": OUTPUT_BYTES_PER_VOXEL * n_voxels}}
    if n_shields:
        b = np.dtype(dtype).itemsize
        pairs = n_opt_voxels * n_dwells  # upper bound: the pairs that can reach a shield
        outputs["shields: joint optimisation"] = {
            "shield pairs and crossings": n_shields * SHIELD_VALUES_PER_PAIR * b * pairs
        }
        outputs["shields: full-grid dose"] = {
            f"{stage} + shield factors": sum(parts.values())
            + n_shields * SHIELD_VALUES_PER_PAIR * b * full.sizes["chunk"] * n_dwells
            for stage, parts in full.stages.items()
        }
    sizes = {
        "voxels": n_voxels,
        "optimisation_voxels": n_opt_voxels,
        "dwells": n_dwells,
        "influence": influence,
        "chunk": full.sizes["chunk"],
        "shields": n_shields,
    }
    if n_scenarios > 1:
        sizes["scenarios"] = int(n_scenarios)
    return _merge("hdr_plan", persistent, opt, full, extra_stages=outputs, sizes=sizes)


def band_voxels(n_voxels: int, n_surfaces: int) -> int:
    """Voxels cut by ``n_surfaces`` smooth surfaces crossing a roughly cubic grid (a bound of
    about two voxel layers per surface), never more than the grid."""
    return int(min(n_voxels, 2 * n_surfaces * math.ceil(n_voxels ** (2 / 3))))


def _full_grid_sampled(n_voxels: int, n_band: int, supersampling: int, b: int) -> dict[str, int]:
    """A full-grid dose of the X-ray or electron pipelines: voxel centres plus the sub-samples of
    the voxels in ``n_band``, points built and results copied on the host in float64."""
    n_points = n_voxels + n_band * supersampling**3
    return {
        "grid points (host float64)": 24 * n_voxels,
        "sub-sample points (host float64)": 2 * 24 * n_band * supersampling**3,
        "points": 3 * n_points * b,
        "temporaries": XRAY_VALUES_PER_PAIR * n_points * b,
        "dose": n_points * (b + 8),
    }


def _point_plan_estimate(
    name: str,
    catalogue: MemoryEstimate,
    n_voxels: int,
    n_points: int,
    labels: tuple[str, str, str],
    *,
    band_thickness: int,
    n_structures: int,
    supersampling: int,
    dtype,
    sizes: dict,
) -> MemoryEstimate:
    """The X-ray and electron plans' shared shape: a catalogue pass on ``n_points`` points, a
    pose optimisation on them (``labels``: its stage name, the points' name in the table and in
    ``sizes``), the full-grid dose with sub-samples in a band ``band_thickness`` voxels thick,
    outputs."""
    b = _itemsize(dtype)
    stage, points, points_key = labels
    stages = {
        stage: {"step vectors": POSE_STEP_VECTORS_PER_POINT * n_points * b},
        "full grid dose": _full_grid_sampled(
            n_voxels, band_voxels(n_voxels, band_thickness), supersampling, b
        ),
        "outputs": {"evaluation and files (host)": OUTPUT_BYTES_PER_VOXEL * n_voxels},
    }
    persistent = {
        "structure occupancies (host float32)": 4 * n_structures * n_voxels,
        f"{points} (host)": 40 * n_points,
    }
    sizes = {"voxels": n_voxels, points_key: n_points} | sizes
    return _merge(name, persistent, catalogue, extra_stages=stages, sizes=sizes)


def xray_plan_estimate(
    n_voxels: int,
    n_eval_points: int,
    n_sizes: int,
    n_structures: int = 6,
    supersampling: int = 3,
    dtype=np.float32,
) -> MemoryEstimate:
    """X-ray sphere plan (``iortopt.modalities.xray_sphere.choice.plan_spheres``): catalogue
    pass, continuous relaxation on the evaluation points, full-grid dose with sub-samples in the
    applicator band, outputs."""
    return _point_plan_estimate(
        "xray_plan",
        xray_catalogue_estimate(n_eval_points, n_sizes, dtype),
        n_voxels,
        n_eval_points,
        ("relaxation", "evaluation points", "evaluation_points"),
        band_thickness=1,
        n_structures=n_structures,
        supersampling=supersampling,
        dtype=dtype,
        sizes={"sizes": n_sizes},
    )


def electron_plan_estimate(
    n_voxels: int,
    n_sample_points: int,
    n_rows: int = 16,
    batch_size: int = 8,
    n_structures: int = 6,
    supersampling: int = 3,
    dtype=np.float32,
) -> MemoryEstimate:
    """Electron plan (``iortopt.modalities.electron.choice.optimise_electron``): catalogue
    passes of ``n_rows`` rows, the joint cone/disc optimisation on the sample points, full-grid
    dose, outputs."""
    return _point_plan_estimate(
        "electron_plan",
        electron_catalogue_estimate(n_sample_points, n_rows, batch_size, dtype),
        n_voxels,
        n_sample_points,
        ("joint optimisation", "sample points", "sample_points"),
        band_thickness=4,
        n_structures=n_structures,
        supersampling=supersampling,
        dtype=dtype,
        sizes={"rows": n_rows},
    )


# ----------------------------------------------------------------------------------------------
# Free memory and the budget
# ----------------------------------------------------------------------------------------------


def _meminfo_available_bytes(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available_bytes(root: str = "/sys/fs/cgroup") -> int | None:
    """Limit minus usage of the process's cgroup v2 (batch schedulers set one), if limited."""
    try:
        limit = Path(root, "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int(Path(root, "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def host_available_bytes() -> int:
    """Memory the host can still give this process (bytes)."""
    candidates = [_meminfo_available_bytes(), _cgroup_available_bytes()]
    if candidates[0] is None:
        try:
            candidates[0] = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            candidates[0] = None
    known = [c for c in candidates if c is not None]
    if not known:
        raise RuntimeError("cannot query the host's available memory")
    return int(min(known))


def device_free_bytes(device=None) -> int | None:
    """Free memory of a JAX device (bytes): the host's on CPU, ``memory_stats()`` elsewhere;
    None where the backend does not report it."""
    import jax

    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return host_available_bytes()
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics raise various errors
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


@dataclass(frozen=True)
class Budget:
    """Bytes a plan may use, and where the figure comes from."""

    usable_bytes: int | None  # None: unknown (the backend reports no free memory)
    free_bytes: int | None
    source: str
    platform: str = "cpu"

    def describe(self) -> str:
        if self.usable_bytes is None:
            return f"free memory unknown on {self.platform}"
        if self.source == "memory_limit_mb":
            return f"{self.usable_bytes / MIB:.0f} MiB (compute.memory_limit_mb)"
        return (
            f"{self.usable_bytes / MIB:.0f} MiB usable of {self.free_bytes / MIB:.0f} MiB free "
            f"on {self.platform}"
        )


def memory_budget(
    memory_limit_mb: float | None = None,
    safety_fraction: float = DEFAULT_SAFETY_FRACTION,
    device=None,
    free_bytes: int | None = None,
) -> Budget:
    """The plan's memory budget.

    ``memory_limit_mb`` (config ``compute.memory_limit_mb``) is used as given: the bytes the plan's
    arrays may take. Otherwise the device's free memory (``free_bytes`` if given, else queried)
    times ``safety_fraction``, less :data:`CPU_RUNTIME_RESERVE_BYTES` on CPU.
    """
    import jax

    platform = (device or jax.devices()[0]).platform
    if memory_limit_mb is not None:
        return Budget(int(memory_limit_mb * MIB), None, "memory_limit_mb", platform)
    free = device_free_bytes(device) if free_bytes is None else int(free_bytes)
    if free is None:
        return Budget(None, None, "unknown", platform)
    reserve = CPU_RUNTIME_RESERVE_BYTES if platform == "cpu" else 0
    usable = max(int(free * safety_fraction) - reserve, 0)
    return Budget(usable, free, "free device memory", platform)


# ----------------------------------------------------------------------------------------------
# Choices from the budget
# ----------------------------------------------------------------------------------------------


def choose_chunk_size(
    peak_of_chunk: Callable[[int], int], preferred: int, budget_bytes: int | None
) -> int | None:
    """Largest chunk <= ``preferred`` (a multiple of 8, at least :data:`MIN_CHUNK`) whose
    ``peak_of_chunk(chunk)`` fits ``budget_bytes``; None if even the smallest does not fit.
    ``peak_of_chunk`` must not decrease with the chunk."""
    preferred = max(MIN_CHUNK, int(preferred) // 8 * 8)
    if budget_bytes is None or peak_of_chunk(preferred) <= budget_bytes:
        return preferred
    if peak_of_chunk(MIN_CHUNK) > budget_bytes:
        return None
    lo, hi = MIN_CHUNK // 8, preferred // 8  # fits at lo, not at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak_of_chunk(8 * mid) <= budget_bytes else (lo, mid)
    return 8 * lo


def largest_fitting_scale(peak_at_scale: Callable[[float], int], budget_bytes: int) -> float:
    """Largest s in (0, 1] with ``peak_at_scale(s) <= budget_bytes`` (bisection, 1e-3 relative);
    0 if nothing fits. ``peak_at_scale`` must not decrease with s."""
    if peak_at_scale(1.0) <= budget_bytes:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if peak_at_scale(mid) <= budget_bytes else (lo, mid)
        if hi - lo < 1e-3 * hi:
            break
    return lo


def preferred_pairs_per_chunk(platform: str) -> int:
    """Point x dwell pairs per chunk aimed at before the budget: cache-sized on CPU, large on
    accelerators."""
    if platform == "cpu":
        return PAIRS_PER_CHUNK
    return ACCELERATOR_PAIRS_PER_CHUNK


def use_influence_matrix(
    mode: str,
    n_points: int,
    n_dwells: int,
    dtype,
    influence_memory_mb: float,
    n_structures: int = 1,
    budget_bytes: int | None = None,
) -> bool:
    """Whether an HDR optimisation uses the explicit influence matrix: ``mode`` ``"matrix"`` or
    ``"matrix_free"`` decides; ``"auto"`` takes the matrix when it is at most
    ``influence_memory_mb`` and its optimiser step fits ``budget_bytes`` (None: no budget)."""
    if mode != "auto":
        return mode == "matrix"
    matrix_bytes = n_points * n_dwells * _itemsize(dtype)
    if matrix_bytes > influence_memory_mb * MIB:
        return False
    if budget_bytes is None:
        return True
    est = tg43_matrix_estimate(n_points, n_dwells, dtype, n_structures)
    return est.peak_bytes <= budget_bytes


def auto_chunk_size(n_dwells: int, pairs_per_chunk: int | None = None) -> int:
    """Points per chunk so that one chunk holds about ``pairs_per_chunk`` point x dwell pairs.

    ``None`` or 0 (default) takes :data:`PAIRS_PER_CHUNK`; a plan run passes the value it chose from
    its memory budget (:class:`iortopt.compute.run_context.RunContext`).
    About 1e5 pairs (a few hundred kB per intermediate) keeps a chunk in the CPU's L2 cache; on the
    reference problem 256 to 2000 points per chunk all ran within 15 % of each other.
    """
    pairs_per_chunk = pairs_per_chunk or PAIRS_PER_CHUNK
    return max(64, int(pairs_per_chunk // max(n_dwells, 1)) // 8 * 8)
