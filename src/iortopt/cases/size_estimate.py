"""A case's size from its config alone, before anything is built; refusal of what cannot run.

    size = estimate_case_size(cfg)            # arithmetic only: no array of the grid's size
    check_case_size(cfg)                      # ConfigError naming the field(s) if too large
    check_dose_grid(positions_mm, margin_mm, spacing_mm, n_dwells, dtype, chunk, origin)

The memory check of :mod:`iortopt.pipeline` needs the built case (its optimisation voxels, its
active dwells); building a case is itself the expensive part when the grid is too fine, the dwell
step tiny or the supersampling large. This module derives, with the same arithmetic as the
phantoms (:func:`iortopt.cases.flap._grid_for`, :func:`iortopt.cases.breast.case_grid`,
:func:`iortopt.cases.eliot.case_grid`), the grid shape, the dwell count and the work and memory
of the build, and refuses a case over one of the documented limits below or over the memory
budget. DICOM cases: only the dwells are counted (the CT grid is known only from the files, whose
header checks live in :mod:`iortopt.dicom`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from iortopt.compute import memory
from iortopt.errors import ConfigError, IortoptError

#: Most structure sub-samples (voxels x structures x supersampling^3) a case build may evaluate.
#: Measured on one CPU core: the flap phantom rasterises about 5e8 a second, the ELIOT phantom
#: (which also sums sub-sample centroids) about 5e7, so the limit is some 20 s to 4 min of numpy;
#: beyond it a build, and the plan on that grid, run for many minutes to hours.
MAX_BUILD_SAMPLES = 10**10
#: Most dwell positions of an HDR applicator (afterloaders have some tens of channels of at most
#: about 50 positions; the large shipped example has about 500).
MAX_DWELLS = 20_000
#: Most geometry samples a phantom makes besides its grid (catheter polyline vertices, ureter
#: centreline samples, ribs).
MAX_GEOMETRY_SAMPLES = 10**7
#: Host bytes per voxel at the peak of building each phantom case (occupancy counts, their scaled
#: copies and the sub-sample temporaries; flap: plus the distance transform of the optimisation
#: mask), measured with tracemalloc at the default parameters and rounded up.
BUILD_BYTES_PER_VOXEL = {"builtin_flap": 80, "builtin_breast": 80, "builtin_eliot": 320}
#: Voxels along one axis beyond which a grid is refused without further arithmetic (keeps every
#: product of the estimate a float).
MAX_AXIS_VOXELS = 1e15
N_STRUCTURES = {"builtin_flap": 5, "builtin_breast": 6, "builtin_eliot": 6}
SECTIONS = {"builtin_flap": "flap", "builtin_breast": "breast", "builtin_eliot": "eliot"}


@dataclass(frozen=True)
class CaseSize:
    """What building a case will make: grid, structures, dwells, geometry samples, memory.

    ``shape_zyx`` holds Python ints (never overflowing); ``n_dwells`` is None where the modality
    has no dwells."""

    kind: str
    shape_zyx: tuple[int, int, int] | None
    spacing_mm: float | None
    supersampling: int
    n_structures: int
    n_dwells: int | None = None
    geometry_samples: int = 0

    @property
    def section(self) -> str:
        return f"case.{SECTIONS.get(self.kind, 'dicom')}"

    @property
    def n_voxels(self) -> int:
        return 0 if self.shape_zyx is None else math.prod(self.shape_zyx)

    @property
    def build_samples(self) -> int:
        return self.n_voxels * self.n_structures * self.supersampling**3

    @property
    def build_bytes(self) -> int:
        return self.n_voxels * BUILD_BYTES_PER_VOXEL.get(self.kind, 0)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shape_zyx": None if self.shape_zyx is None else list(self.shape_zyx),
            "voxels": self.n_voxels,
            "spacing_mm": self.spacing_mm,
            "supersampling": self.supersampling,
            "structures": self.n_structures,
            "build_samples": self.build_samples,
            "build_mib": self.build_bytes / memory.MIB,
            "dwells": self.n_dwells,
        }

    def describe(self) -> str:
        parts = [f"{self.kind}"]
        if self.shape_zyx is not None:
            parts.append(
                f"grid {self.shape_zyx} = {self.n_voxels:.3g} voxels at {self.spacing_mm:g} mm, "
                f"{self.n_structures} structures x supersampling {self.supersampling}^3 = "
                f"{self.build_samples:.3g} sub-samples, build about {_mib(self.build_bytes)}"
            )
        if self.n_dwells is not None:
            parts.append(f"{self.n_dwells} dwells")
        return "; ".join(parts)


def _mib(n_bytes: float) -> str:
    mib = n_bytes / memory.MIB
    return f"{mib / 1024**2:.3g} TiB" if mib >= 1024**2 else f"{mib:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# Grid shapes (the phantoms' arithmetic, on scalars)
# ----------------------------------------------------------------------------------------------


def _counts(first, last, spacing_mm: float, what: str) -> tuple[int, int, int]:
    """(nz, ny, nx) of ``Grid.from_bounds(first, last, spacing)``, in Python ints."""
    counts = []
    for lo, hi in zip(first, last, strict=True):
        n = (hi - lo) / spacing_mm + 1e-6
        if not n < MAX_AXIS_VOXELS:  # also NaN and inf
            raise ConfigError(
                f"{what}: a spacing of {spacing_mm:g} mm over {hi - lo:g} mm gives {n:.3g} voxels "
                f"along one axis, a grid too large to build (limit {MAX_AXIS_VOXELS:.0e} per axis)"
            )
        counts.append(math.floor(n) + 1)
    return counts[2], counts[1], counts[0]


def _snapped_counts(lower, upper, spacing_mm: float, what: str) -> tuple[int, int, int]:
    """Shape of a grid whose centres are multiples of the spacing covering [lower, upper]."""
    s = spacing_mm
    first = [math.floor(v / s) * s if math.isfinite(v / s) else -math.inf for v in lower]
    last = [math.ceil(v / s) * s if math.isfinite(v / s) else math.inf for v in upper]
    return _counts(first, last, s, what)


def flap_grid_shape(p) -> tuple[int, int, int]:
    """Grid shape (nz, ny, nx) of ``build_flap_case(p)`` (a ``FlapCaseParams``)."""
    r = p.surface_radius_mm
    catheter_radius = r - p.source_to_surface_mm
    catheter_half = p.catheter_length_mm / (2 * catheter_radius)
    half = max(catheter_half, p.target_length_mm / (2 * r))
    outer_x = p.catheter_spacing_mm * (p.n_catheters - 1) / 2
    half_width = max(
        outer_x + 10.0, p.target_width_mm / 2, abs(p.ureter_lateral_mm) + p.ureter_radius_mm
    )
    bowel_inner = r - p.flap_thickness_mm - p.bowel_gap_mm - p.bowel_thickness_mm
    deepest = r + max(
        p.ctv_depth_mm,
        p.sacrum_depth_mm + p.sacrum_thickness_mm,
        max(p.ureter_depth_start_mm, p.ureter_depth_end_mm) + p.ureter_radius_mm,
    )
    y = deepest * math.sin(half)
    lower = [-half_width, -y, r - deepest]
    upper = [half_width, y, r - bowel_inner * math.cos(half)]
    # Catheter polylines: vertices at phi = linspace(-h, h, n); the one nearest phi = 0 is the
    # catheter's deepest point (z = R - r_c cos phi).
    n = vertices_per_catheter(p)
    nearest = 0.0 if n % 2 else catheter_half / (n - 1)
    cat_lower = [-outer_x, -catheter_radius * math.sin(catheter_half)]
    cat_lower.append(r - catheter_radius * math.cos(nearest))
    cat_upper = [outer_x, catheter_radius * math.sin(catheter_half)]
    cat_upper.append(r - catheter_radius * math.cos(catheter_half))
    m = p.grid_margin_mm
    lower = [min(a, b) - m for a, b in zip(lower, cat_lower, strict=True)]
    upper = [max(a, b) + m for a, b in zip(upper, cat_upper, strict=True)]
    return _snapped_counts(lower, upper, p.spacing_mm, "case.flap.spacing_mm")


def vertices_per_catheter(p) -> int:
    from iortopt.cases.flap import CATHETER_VERTEX_SPACING_MM

    return int(math.ceil(p.catheter_length_mm / CATHETER_VERTEX_SPACING_MM)) + 1


def _flap_geometry_samples(p) -> int:
    from iortopt.cases.flap import URETER_SAMPLE_SPACING_MM

    half = max(
        p.catheter_length_mm / (2 * (p.surface_radius_mm - p.source_to_surface_mm)),
        p.target_length_mm / (2 * p.surface_radius_mm),
    )
    deepest = p.surface_radius_mm + max(p.ureter_depth_start_mm, p.ureter_depth_end_mm)
    ureter = 2 * half * deepest / URETER_SAMPLE_SPACING_MM
    return int(min(p.n_catheters * vertices_per_catheter(p) + ureter, 2**62))


def breast_grid_shape(p, applicator_radius_mm: float | None = None) -> tuple[int, int, int]:
    """Grid shape of ``build_breast_case(p, applicator_radius_mm)`` (centred applicator)."""
    r = p.cavity_radius_mm
    a = r if applicator_radius_mm is None else float(applicator_radius_mm)
    muscle_back = -(r + p.chest_wall_distance_mm) - p.muscle_thickness_mm
    lung_back = muscle_back - 2 * p.rib_radius_mm - p.lung_thickness_mm
    w, m = p.breast_half_width_mm, p.grid_margin_mm
    lower = [min(-w, -a) - m, min(-w, -a) - m, min(lung_back, -a) - m]
    upper = [max(w, a) + m, max(w, a) + m, max(r + p.skin_distance_mm, a) + m]
    return _snapped_counts(lower, upper, p.spacing_mm, "case.breast.spacing_mm")


def _breast_ribs(p) -> int:
    return 2 * int(math.floor((p.breast_half_width_mm + p.rib_radius_mm) / p.rib_spacing_mm)) + 1


def eliot_grid_shape(p) -> tuple[int, int, int]:
    """Grid shape of ``build_eliot_case(p)``."""
    from iortopt.cases.eliot import tilt_rotation

    lung_back = -(
        p.gland_thickness_mm
        + p.disc_gap_mm
        + p.muscle_thickness_mm
        + 2 * p.rib_radius_mm
        + p.lung_thickness_mm
    )
    hw = p.half_width_mm
    corners = np.array([[x, y, w] for x in (-hw, hw) for y in (-hw, hw) for w in (lung_back, 0.0)])
    patient = corners @ tilt_rotation(p.surface_tilt_deg).T
    lower = patient.min(axis=0) - p.grid_margin_mm
    upper = patient.max(axis=0) + p.grid_margin_mm
    s = p.spacing_mm
    with np.errstate(over="ignore", invalid="ignore"):
        first = (np.floor(lower / s - 0.5) + 0.5) * s
        last = (np.ceil(upper / s + 0.5) - 0.5) * s
    return _counts(first.tolist(), last.tolist(), s, "case.eliot.spacing_mm")


def _eliot_ribs(p) -> int:
    return 2 * int(math.floor((p.half_width_mm - p.rib_radius_mm) / p.rib_spacing_mm)) + 1


def _dwells_on(lengths_mm, step_mm: float) -> int:
    """Dwells every ``step_mm`` along catheters of the given arc lengths (as
    ``FlapApplicator.dwells``)."""
    from iortopt.cases.catheters import ARC_TOLERANCE_MM

    return int(sum(math.floor((length + ARC_TOLERANCE_MM) / step_mm) + 1 for length in lengths_mm))


def _polyline_length_mm(points) -> float:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or len(pts) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


# ----------------------------------------------------------------------------------------------
# Estimate and check
# ----------------------------------------------------------------------------------------------


def estimate_case_size(cfg) -> CaseSize:
    """The case ``cfg`` (a ``PlanConfig``) would build, from the config alone.

    Raises:
        ConfigError: invalid phantom parameters (naming ``case.<section>.<field>``).
    """
    from iortopt.config import case_params

    kind = cfg.case.kind
    step = cfg.applicator.step_mm
    n_structures = N_STRUCTURES.get(kind, 0)
    if kind == "builtin_flap":
        from iortopt.cases.flap import FlapCaseParams

        p = case_params(FlapCaseParams, cfg.case.flap, "flap")
        samples = _flap_geometry_samples(p)
        if samples > MAX_GEOMETRY_SAMPLES:
            # Counted before the grid: its arithmetic is cheap, but the build would not be.
            return CaseSize(kind, None, p.spacing_mm, p.supersampling, n_structures, None, samples)
        n_dwells = _dwells_on([p.catheter_length_mm] * p.n_catheters, step)
        shape = flap_grid_shape(p)
        return CaseSize(kind, shape, p.spacing_mm, p.supersampling, n_structures, n_dwells, samples)
    if kind == "builtin_breast":
        from iortopt.cases.breast import BreastCaseParams

        p = case_params(BreastCaseParams, cfg.case.breast, "breast")
        diameters = cfg.xray.catalogue_diameters_cm or []
        radius = max([p.cavity_radius_mm] + [5.0 * d for d in diameters])
        shape = breast_grid_shape(p, radius)
        return CaseSize(
            kind, shape, p.spacing_mm, p.supersampling, n_structures, None, _breast_ribs(p)
        )
    if kind == "builtin_eliot":
        from iortopt.cases.eliot import EliotCaseParams

        p = case_params(EliotCaseParams, cfg.case.eliot, "eliot")
        shape = eliot_grid_shape(p)
        return CaseSize(
            kind, shape, p.spacing_mm, p.supersampling, n_structures, None, _eliot_ribs(p)
        )
    catheters = cfg.applicator.catheters_mm or []
    n_dwells = _dwells_on([_polyline_length_mm(c) for c in catheters], step) if catheters else None
    supersample = cfg.case.dicom.supersample if cfg.case.dicom is not None else 1
    return CaseSize(kind, None, None, supersample, len(cfg.case.dicom.structures), n_dwells)


def plan_lower_bound_bytes(size: CaseSize, dtype=np.float32) -> int:
    """Peak bytes of the plan on this grid with the fewest points and dwells it can have (one):
    its per-voxel arrays (occupancies, full-grid dose, outputs). A plan over this does not fit
    whatever the built case turns out to hold."""
    v = max(size.n_voxels, 1)
    if size.kind == "builtin_flap":
        est = memory.hdr_plan_estimate(
            v, 1, 1, size.n_structures, dtype, memory.MIN_CHUNK, "matrix_free"
        )
    elif size.kind == "builtin_breast":
        est = memory.xray_plan_estimate(v, v, 1, supersampling=size.supersampling, dtype=dtype)
    elif size.kind == "builtin_eliot":
        est = memory.electron_plan_estimate(
            v, 1, 1, 1, size.n_structures, size.supersampling, dtype
        )
    else:
        return 0
    return est.peak_bytes


def _grid_problems(size: CaseSize, usable_bytes: int | None, budget_text: str, dtype) -> list:
    sec, s = size.section, size.supersampling
    problems = []
    if size.build_samples > MAX_BUILD_SAMPLES:
        ratio = size.build_samples / MAX_BUILD_SAMPLES
        fit_s = math.floor((MAX_BUILD_SAMPLES / (size.n_voxels * size.n_structures)) ** (1 / 3))
        lines = [
            f"{sec}.spacing_mm / {sec}.supersampling: building the case evaluates "
            f"{size.build_samples:.3g} structure sub-samples ({size.n_voxels:.3g} voxels x "
            f"{size.n_structures} structures x {s}^3), over the limit of {MAX_BUILD_SAMPLES:.0e} "
            "(minutes to hours of work)",
            f"  what fits: {sec}.spacing_mm >= about {size.spacing_mm * ratio ** (1 / 3):.3g} "
            f"at supersampling {s}",
        ]
        if fit_s >= 1:
            lines.append(f"  or {sec}.supersampling <= {fit_s} at {size.spacing_mm:g} mm")
        problems.append("\n".join(lines))
    if usable_bytes is None:
        return problems
    need = max(size.build_bytes, plan_lower_bound_bytes(size, dtype))
    if need > usable_bytes:
        fit_mm = size.spacing_mm * (need / max(usable_bytes, 1)) ** (1 / 3)
        problems.append(
            f"{sec}.spacing_mm: a grid of {size.n_voxels:.3g} voxels ({size.shape_zyx} at "
            f"{size.spacing_mm:g} mm) needs about {_mib(need)} or more (case build and per-voxel "
            f"arrays of the plan) but the budget is {budget_text}\n"
            f"  what fits: {sec}.spacing_mm >= about {fit_mm:.3g}, or raise "
            "compute.memory_limit_mb / compute.safety_fraction if more memory is free"
        )
    return problems


def case_size_problems(cfg, size: CaseSize, budget: memory.Budget | None, dtype) -> list[str]:
    """Each limit ``size`` exceeds, as a message naming the config field(s) and what fits."""
    problems = []
    if size.geometry_samples > MAX_GEOMETRY_SAMPLES:
        fields = {
            "builtin_flap": "case.flap.n_catheters / case.flap.catheter_length_mm / "
            "case.flap.surface_radius_mm",
            "builtin_breast": "case.breast.rib_spacing_mm / case.breast.breast_half_width_mm",
            "builtin_eliot": "case.eliot.rib_spacing_mm / case.eliot.half_width_mm",
        }[size.kind]
        problems.append(
            f"{fields}: the phantom would make {size.geometry_samples:.3g} geometry samples "
            f"(catheter vertices, ureter samples or ribs), over the limit of "
            f"{MAX_GEOMETRY_SAMPLES:.0e}"
        )
        return problems
    if size.n_dwells is not None and size.n_dwells > MAX_DWELLS:
        step = cfg.applicator.step_mm
        fit_step = step * size.n_dwells / MAX_DWELLS
        problems.append(
            f"applicator.step_mm: {step:g} mm gives {size.n_dwells} dwell positions, over the "
            f"limit of {MAX_DWELLS}\n  what fits: applicator.step_mm >= {fit_step:.3g} "
            "(afterloaders step 1 to 10 mm)"
        )
    if size.shape_zyx is not None:
        usable = None if budget is None else budget.usable_bytes
        text = "" if budget is None else budget.describe()
        problems += _grid_problems(size, usable, text, dtype)
    return problems


def check_case_size(
    cfg, dtype=np.float32, free_bytes: int | None = None, budget: memory.Budget | None = None
) -> CaseSize:
    """Refuse a case too large to build, before building it; return its size otherwise.

    ``budget``: the memory budget (default: from ``cfg.compute`` and the free memory, or
    ``free_bytes`` if given).

    Raises:
        ConfigError: naming the field(s) responsible, the estimate, the limit or budget, and
            what would fit.
    """
    size = estimate_case_size(cfg)
    if budget is None and size.shape_zyx is not None:
        budget = memory.memory_budget(
            cfg.compute.memory_limit_mb, cfg.compute.safety_fraction, None, free_bytes
        )
    problems = case_size_problems(cfg, size, budget, dtype)
    if problems:
        raise ConfigError(
            f"the case is too large to build ({size.describe()}):\n" + "\n".join(problems)
        )
    return size


def check_dose_grid(
    positions_mm, margin_mm: float, spacing_mm: float, n_dwells: int, dtype, chunk_size, origin
) -> tuple[int, int, int]:
    """Shape (nz, ny, nx) of the ``iortopt dose`` grid (dwell bounds plus ``margin_mm``), refused
    before it is allocated when its dose does not fit the memory budget.

    Raises:
        IortoptError: naming --spacing-mm / --margin-mm and the dwells file ``origin``.
    """
    pts = np.asarray(positions_mm, dtype=np.float64)
    lower, upper = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    try:
        shape = _counts(lower.tolist(), upper.tolist(), spacing_mm, "--spacing-mm")
    except ConfigError as exc:
        raise IortoptError(f"{origin}: {exc}") from None
    n_voxels = math.prod(shape)
    budget = memory.memory_budget()
    if budget.usable_bytes is None:
        return shape
    est = memory.tg43_dose_estimate(n_voxels, n_dwells, chunk_size, dtype, grid_points=True)
    need = est.peak_bytes + memory.OUTPUT_BYTES_PER_VOXEL * n_voxels
    if need > budget.usable_bytes:
        extent = (upper - lower).tolist()
        fit_mm = spacing_mm * (need / max(budget.usable_bytes, 1)) ** (1 / 3)
        raise IortoptError(
            f"{origin}: the dwells span {max(extent) - 2 * margin_mm:.4g} mm; with "
            f"--margin-mm {margin_mm:g} and --spacing-mm {spacing_mm:g} the dose grid is "
            f"{shape} = {n_voxels:.3g} voxels, which needs about {_mib(need)} but the budget is "
            f"{budget.describe()}\n  what fits: --spacing-mm >= about {fit_mm:.3g}"
            ", a smaller --margin-mm, or dwells closer together (one plan per applicator)"
        )
    return shape
