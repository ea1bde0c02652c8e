"""Plan 50 kV X-ray IORT of the breast with a spherical applicator: choose size, position, time.

Inputs: the case side of the plan (:class:`SphereSetting`: the breast phantom's from
:func:`iortopt.phantoms.breast.breast_setting`, a CT + RTSTRUCT case's from
:mod:`iortopt.modalities.xray_sphere.sphere_problem`), a beam (:mod:`iortopt.physics.xray`) and a
prescription. :func:`plan_spheres` does four things (described here for the breast phantom).

1. Catalogue comparison. Every catalogue size, centred in the cavity, gets the time that meets
   the prescription (``"surface"``: Rx at the applicator surface, time = Rx / surface rate;
   ``"depth"``: Rx at ``prescription_depth_mm``). All sizes are evaluated in one vmapped pass
   (:func:`iortopt.physics.xray.catalogue_dose_gy`) on one common set of evaluation points,
   built on a lattice of cells (spacing ``eval_spacing_mm``, offset half a spacing from the dose
   grid): the centres of the breast-tissue cells near the cavity (per size, those 0 to T mm from
   the applicator surface are the PTV_shell), and for each OAR the centroid of the part of each
   cell inside it, weighted by that part's volume (from sub-samples), so that thin layers and cut
   cells keep their volume and depth; plus a 1 mm sample of the deepest skin layer (the plane
   z = skin surface - skin thickness) for the skin maximum. Per size the structures follow the
   applicator as in :mod:`iortopt.cases.breast` (rigid anatomy, tissue conforming to the
   sphere; points in the ball are not tissue). Reported:

   - ``target_coverage_percent``: percentage of the PTV_shell volume receiving at least
     ``coverage_fraction`` x Rx. Default fraction: 0.25 in surface mode (5 Gy for 20 Gy, the low
     end of TARGIT's "5-7 Gy at 1 cm"), 1.0 in depth mode;
   - ``skin_distance_mm`` (applicator surface to skin surface) and ``skin_flag`` (< the minimum,
     5 mm by default: TARGIT's constraint), ``skin_max_gy`` (maximum on the deepest skin layer);
   - ``chest_wall_D2cc_gy``, ``rib_D2cc_gy``, ``lung_mean_gy``;
   - ``fits_cavity`` (cavity wall within ``fit_tolerance_mm`` of the surface), ``wall_gap_mm``;
   - ``score`` = 100 [coverage - oar_weight (skin_max + chest_wall_D2cc + rib_D2cc + lung_mean)/Rx
     - fit_weight (wall_gap / fit_tolerance)^2]: coverage against OAR dose, and a preference for
     the size closest to the cavity (conformance is assumed, not simulated, so the less the
     tissue has to move the more the model is worth).

2. Choice (documented rule): among the sizes that fit the cavity and keep the skin distance
   >= the minimum, the highest score. If none qualifies, the best-scoring size that fits (then
   any size), with a warning in ``notes``. ``chosen["reason"]`` says which rule decided.

3. Continuous relaxation: radius (within the beam's range of radii), centre (within
   ``max_shift_mm`` of the cavity centre per axis, if ``optimise_position``) and time, optimised
   with optax (Adam) on a smooth version of the score (soft PTV membership and soft coverage)
   plus penalties: prescription (100 (D_Rx / Rx - 1)^2), skin distance and fit (1 per mm^2 of
   violation). Reported next to the catalogue choice with its exact (catalogue-style) metrics and
   score; it shows where the trade-off would sit if any size could be made. With
   ``optimise_position`` the chosen size's centre is then optimised the same way (radius fixed;
   kept only if its exact score is at least the centred one's and the constraints still hold).
   Robust (``robust_pose``, ``[robust] optimise = true``): then the time and the centre of the
   chosen size against uncertainty scenarios (:func:`robust_time_and_centre`).

4. The final :class:`~iortopt.cases.case.Case` for the chosen applicator and its full-grid dose. In
   voxels cut by the applicator surface the dose is the mean over the voxel's tissue sub-samples
   (the occupancy supersampling), so their tissue fraction gets its dose rather than the 0 of an
   applicator voxel centre; elsewhere it is the voxel-centre dose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iortopt.cases.case import Case
from iortopt.evaluation.dvh import dose_at_volume_cm3
from iortopt.modalities.xray_sphere.scoring import D2CC_CM3, smooth_coverage_and_oar
from iortopt.physics.xray import (
    XrayBeam,
    catalogue_dose_gy,
    depth_dose_gy,
    load_xray_beam,
    sphere_dose_gy,
    surface_dose_rate_gy_min,
)

PRESCRIPTION_MODES = ("surface", "depth")
#: Default coverage level as a fraction of Rx, per prescription mode (see the module docstring).
DEFAULT_COVERAGE_FRACTION = {"surface": 0.25, "depth": 1.0}
PRESCRIPTION_PENALTY = 100.0
CONSTRAINT_PENALTY_PER_MM2 = 1.0
#: Adam's learning rate decays from 0.1 by this factor over the iterations (settles the result).
LEARNING_RATE_DECAY = 0.05
ILLUSTRATIVE_NOTE = (
    "ILLUSTRATIVE beam data, NOT FOR CLINICAL USE: depth doses and most surface dose rates come "
    "from a smooth model, not measurements."
)


class SphereGeometry(Protocol):
    """What the planner reads of a case's cavity and skin (mm): the breast phantom's
    ``BreastGeometry``, a DICOM case's ``sphere_problem.SphereGeometry``."""

    cavity_centre_mm: np.ndarray  # (3,)
    cavity_wall_mm: np.ndarray  # (N, 3) wall samples
    target_thickness_mm: float
    fit_tolerance_mm: float

    def skin_distance_mm(self, radius_mm=None, centre_mm=None) -> float: ...

    def wall_gap_mm(self, radius_mm=None, centre_mm=None) -> float: ...


@dataclass
class XrayPlanResult:
    """Outcome of :func:`optimise_xray` (doses in Gy, lengths in mm, times in minutes)."""

    case: Case
    dose_gy: np.ndarray  # (nz, ny, nx) float32 on case.grid
    chosen: dict
    comparison: list[dict]
    continuous: dict
    timings: dict
    notes: list[str] = field(default_factory=list)
    beam_name: str = ""
    formalism: str = ""
    geometry: SphereGeometry | None = None
    shields: list = field(default_factory=list)  # placed Shield pytrees (with shield_specs)
    shield_size_index: np.ndarray | None = None
    shield_trials: list = field(default_factory=list)
    dose_without_shields_gy: np.ndarray | None = None  # same applicator and time, no shields
    robust_pose: dict | None = None  # nominal vs robust time and centre (robust_pose argument)


@dataclass(frozen=True)
class EvalPoints:
    """Common evaluation points (mm), their volumes (cm^3) and structure groups.

    ``groups`` maps "breast", "skin", "chest_wall", "rib", "lung" to index arrays into
    ``points_mm``; the groups are disjoint. Breast points are lattice-cell centres (per size, the
    PTV is the subset at depth 0..T). An OAR point is the centroid of the part of one lattice cell
    that lies in that OAR, weighted by that part's volume, so thin layers and cut cells keep their
    volume and depth. The 1 mm skin sample (weight 0) is in the "skin" group for the maximum.
    ``absent``: OARs of :data:`OAR_NAMES` the case does not have (their groups are empty and
    their metrics None).
    """

    points_mm: np.ndarray  # (P, 3)
    weights_cm3: np.ndarray  # (P,)
    groups: dict
    absent: frozenset = frozenset()


@dataclass(frozen=True)
class _Context:
    """What every evaluation of a plan needs (points, anatomy, beam, prescription, weights)."""

    ev: EvalPoints
    geometry: SphereGeometry
    beam: XrayBeam
    prescription_gy: float
    coverage_dose_gy: float
    min_skin_mm: float
    oar_weight: float
    fit_weight: float
    dtype: object

    def batch_args(self, centres_mm, radii_mm, times_min) -> tuple:
        """Arguments of the batched catalogue dose, in the working dtype."""
        return tuple(
            jnp.asarray(np.asarray(v, np.float64), self.dtype)
            for v in (self.ev.points_mm, centres_mm, radii_mm, times_min)
        )


OAR_NAMES = ("skin", "chest_wall", "rib", "lung")


def _prescription_dose_per_min(radius_mm: float, mode: str, depth_mm: float, beam) -> float:
    """Dose rate (Gy/min) at the prescription point of a sphere (isotropic)."""
    if mode == "surface":
        return float(surface_dose_rate_gy_min(float(radius_mm), beam))
    return float(depth_dose_gy(jnp.asarray(float(depth_mm)), float(radius_mm), 1.0, beam))


_METRIC_KEYS = (
    "target_coverage_percent",
    "skin_max_gy",
    "chest_wall_D2cc_gy",
    "rib_D2cc_gy",
    "lung_mean_gy",
    "wall_gap_mm",
)


def _row_metrics(
    dose: np.ndarray,
    ev: EvalPoints,
    g: SphereGeometry,
    radius_mm: float,
    centre_mm: np.ndarray,
    coverage_dose_gy: float,
) -> dict:
    """Coverage and OAR metrics of one applicator from its dose (P,) on the eval points."""
    depth = np.linalg.norm(ev.points_mm - centre_mm, axis=-1) - radius_mm
    w = np.where(depth > 0, ev.weights_cm3, 0.0)  # the ball is not tissue

    def part(name):
        idx = ev.groups[name]
        return dose[idx], w[idx]

    breast = ev.groups["breast"]
    ptv_w = np.where(depth[breast] <= g.target_thickness_mm, w[breast], 0.0)
    covered = dose[breast] >= coverage_dose_gy
    coverage = (ptv_w * covered).sum() / ptv_w.sum() if ptv_w.sum() > 0 else float("nan")
    skin_idx = ev.groups["skin"]
    skin_max = dose[skin_idx][depth[skin_idx] > 0]

    def d2cc(name):
        d, wt = part(name)
        if wt.sum() <= 0:
            return float("nan")
        return float(dose_at_volume_cm3(d, wt, 1.0, D2CC_CM3))

    lung_d, lung_w = part("lung")
    metrics = {
        "target_coverage_percent": 100.0 * float(coverage),
        "skin_max_gy": float(skin_max.max()) if skin_max.size else 0.0,
        "chest_wall_D2cc_gy": d2cc("chest_wall"),
        "rib_D2cc_gy": d2cc("rib"),
        "lung_mean_gy": float((lung_d * lung_w).sum() / lung_w.sum()) if lung_w.sum() else 0.0,
    }
    for key, name in OAR_METRIC_KEYS.items():
        if name in ev.absent:
            metrics[key] = None
    return metrics


#: The comparison metric of each OAR (None in a row when the case lacks that structure).
OAR_METRIC_KEYS = {
    "skin_max_gy": "skin",
    "chest_wall_D2cc_gy": "chest_wall",
    "rib_D2cc_gy": "rib",
    "lung_mean_gy": "lung",
}


def _score(row: dict, prescription_gy: float, oar_weight: float, fit_weight: float, tol: float):
    oar = sum(
        np.nan_to_num(row[k])
        for k in ("skin_max_gy", "chest_wall_D2cc_gy", "rib_D2cc_gy", "lung_mean_gy")
        if row[k] is not None
    )
    return 100.0 * (
        row["target_coverage_percent"] / 100.0
        - oar_weight * oar / prescription_gy
        - fit_weight * (row["wall_gap_mm"] / tol) ** 2
    )


def _gy(value) -> str:
    return "n/a (no skin structure)" if value is None else f"{value:.2f} Gy"


def _choose(
    rows: list[dict], min_skin_mm: float, tol: float, key: str = "score"
) -> tuple[int, str, list[str]]:
    """Index of the chosen row, the reason, and warnings (rule in the module docstring; ``key``:
    the score ranked, ``"score_robust"`` for a robust choice)."""
    warnings = []
    eligible = [k for k, r in enumerate(rows) if r["fits_cavity"] and not r["skin_flag"]]
    pool = eligible
    rule = (
        f"fit the cavity (wall gap <= {tol:g} mm) and keep the skin distance >= {min_skin_mm:g} mm"
    )
    if not pool:
        pool = [k for k, r in enumerate(rows) if r["fits_cavity"]]
        rule = f"fit the cavity (wall gap <= {tol:g} mm); none keeps the skin distance"
        warnings.append(
            f"no catalogue size keeps the skin distance >= {min_skin_mm:g} mm: the chosen plan "
            "violates the skin constraint"
        )
    if not pool:
        pool = list(range(len(rows)))
        rule = "are in the catalogue; none fits the cavity"
        warnings.append("no catalogue size fits the cavity: the chosen plan is outside the model")
    ranked = sorted(pool, key=lambda k: -rows[k][key])
    best = ranked[0]
    names = ", ".join(f"{rows[k]['diameter_cm']:g}" for k in sorted(pool))
    r = rows[best]
    what = "score" if key == "score" else "robust score"
    reason = (
        f"{r['diameter_cm']:g} cm: highest {what} ({r[key]:.1f}) among the sizes that {rule} "
        f"({names} cm); centred in the cavity: coverage {r['target_coverage_percent']:.1f} %, "
        f"skin distance {r['skin_distance_mm']:.1f} mm, skin max {_gy(r['skin_max_gy'])}, "
        f"wall gap {r['wall_gap_mm']:.1f} mm"
    )
    if len(ranked) > 1:
        nxt = rows[ranked[1]]
        reason += f"; next best {nxt['diameter_cm']:g} cm ({what} {nxt[key]:.1f})"
    return best, reason, warnings


# ----------------------------------------------------------------------------------------------
# Continuous relaxation
# ----------------------------------------------------------------------------------------------


def _relaxation(
    ctx: _Context,
    *,
    mode: str,
    depth_mm: float,
    radius_range_mm: tuple[float, float],
    max_shift_mm: float,
    shaft_axis,
    anisotropy: float,
    iterations: int,
):
    """The continuous optimiser, jitted.

    Variables u (5,): radius = lo + (hi - lo) sigmoid(u0), centre = cavity centre +
    max_shift tanh(u1..3) per axis, time = t_ref exp(u4).

    Returns:
        run(u0, lock, fixed_radius) -> (u, objective history (iterations,), final objective);
            with lock > 0 the radius is held at ``fixed_radius``.
        decode(u, lock, fixed_radius) -> (radius_mm, centre_mm (3,), time_min).
        t_ref: the time scale (min) of u4.
    """
    ev, g, beam, dtype = ctx.ev, ctx.geometry, ctx.beam, ctx.dtype
    prescription_gy, coverage_dose_gy = ctx.prescription_gy, ctx.coverage_dose_gy
    oar_weight, fit_weight, min_skin_mm = ctx.oar_weight, ctx.fit_weight, ctx.min_skin_mm
    pts = jnp.asarray(ev.points_mm, dtype)
    idx = ev.groups  # structures as index sets: sorts and sums run over their own points only
    weight = {name: jnp.asarray(ev.weights_cm3[i], dtype) for name, i in idx.items()}
    wall = jnp.asarray(g.cavity_wall_mm, dtype)
    c0 = jnp.asarray(g.cavity_centre_mm, dtype)
    a_lo, a_hi = radius_range_mm
    tol = g.fit_tolerance_mm
    t_ref = prescription_gy / _prescription_dose_per_min(0.5 * (a_lo + a_hi), mode, depth_mm, beam)
    shift = max_shift_mm
    traced_skin_distance = getattr(g, "traced_skin_distance_mm", None) or (
        lambda centre, radius: g.skin_surface_z_mm - centre[2] - radius
    )

    def decode(u, lock, fixed_radius):
        free_a = a_lo + (a_hi - a_lo) * jax.nn.sigmoid(u[0])
        radius = jnp.where(lock > 0, fixed_radius, free_a)
        centre = c0 + shift * jnp.tanh(u[1:4])
        return radius, centre, t_ref * jnp.exp(u[4])

    def objective(u, lock, fixed_radius):
        radius, centre, t = decode(u, lock, fixed_radius)
        dose = sphere_dose_gy(pts, centre, radius, t, beam, shaft_axis, anisotropy)
        coverage, oar = smooth_coverage_and_oar(
            dose, pts, idx, weight, centre, radius, g.target_thickness_mm, coverage_dose_gy
        )
        gap = jnp.max(jnp.sqrt(jnp.square(jnp.linalg.norm(wall - centre, axis=-1) - radius) + 1e-4))
        score = coverage - oar_weight * oar / prescription_gy - fit_weight * jnp.square(gap / tol)
        if mode == "surface":
            d_rx = surface_dose_rate_gy_min(radius, beam) * t
        else:
            d_rx = depth_dose_gy(jnp.asarray(depth_mm, dtype), radius, t, beam)
        skin_distance = traced_skin_distance(centre, radius)
        penalty = (
            PRESCRIPTION_PENALTY * jnp.square(d_rx / prescription_gy - 1.0)
            + CONSTRAINT_PENALTY_PER_MM2 * jnp.square(jax.nn.relu(min_skin_mm - skin_distance))
            + CONSTRAINT_PENALTY_PER_MM2 * jnp.square(jax.nn.relu(gap - tol))
        )
        return (-score + penalty).astype(dtype)

    opt = optax.adam(optax.exponential_decay(0.1, iterations, LEARNING_RATE_DECAY))
    value_and_grad = jax.value_and_grad(objective)

    def run(u0, lock, fixed_radius):
        def step(carry, _):
            u, state = carry
            value, grad = value_and_grad(u, lock, fixed_radius)
            updates, state = opt.update(grad, state, u)
            return (optax.apply_updates(u, updates), state), value

        (u, _), history = jax.lax.scan(step, (u0, opt.init(u0)), None, length=iterations)
        return u, history, objective(u, lock, fixed_radius)

    return jax.jit(run), jax.jit(decode), t_ref


def _encode(radius_mm, time_min, t_ref, radius_range_mm, dtype) -> jnp.ndarray:
    a_lo, a_hi = radius_range_mm
    frac = np.clip((radius_mm - a_lo) / (a_hi - a_lo), 1e-3, 1 - 1e-3)
    return jnp.asarray([np.log(frac / (1 - frac)), 0.0, 0.0, 0.0, np.log(time_min / t_ref)], dtype)


# ----------------------------------------------------------------------------------------------
# Full-grid dose
# ----------------------------------------------------------------------------------------------


def full_grid_dose_gy(
    case: Case,
    centre_mm,
    radius_mm: float,
    time_min: float,
    beam: XrayBeam,
    supersampling: int = 3,
    shaft_axis=None,
    anisotropy: float = 0.0,
    dtype=jnp.float32,
) -> np.ndarray:
    """Dose (nz, ny, nx) float32 on ``case.grid`` (voxel centres; tissue sub-sample mean in
    voxels cut by the applicator surface, see the module docstring)."""
    grid = case.grid
    pts = grid.points_mm()
    centre = np.asarray(centre_mm, float)
    half_diagonal = 0.5 * float(np.linalg.norm(grid.spacing_xyz_mm))
    band = np.flatnonzero(
        np.abs(np.linalg.norm(pts - centre, axis=-1) - radius_mm) <= half_diagonal
    )
    offsets = (np.arange(supersampling) + 0.5) / supersampling - 0.5
    oz, oy, ox = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    sub = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], -1) * np.asarray(grid.spacing_xyz_mm)
    sub_pts = (pts[band][:, None, :] + sub[None]).reshape(-1, 3)
    # One call for voxel centres and sub-samples: one compilation.
    both = sphere_dose_gy(
        jnp.asarray(np.concatenate([pts, sub_pts]), dtype),
        jnp.asarray(centre, dtype),
        jnp.asarray(radius_mm, dtype),
        jnp.asarray(time_min, dtype),
        beam,
        shaft_axis=None if shaft_axis is None else tuple(float(v) for v in shaft_axis),
        anisotropy=float(anisotropy),
    )
    both = np.array(both, np.float64)  # a writable copy
    dose, sub_dose = both[: len(pts)], both[len(pts) :].reshape(band.size, -1)
    if band.size:
        tissue = (np.linalg.norm(sub_pts - centre, axis=-1) > radius_mm).reshape(band.size, -1)
        n = tissue.sum(axis=1)
        dose[band] = np.where(n > 0, (sub_dose * tissue).sum(axis=1) / np.maximum(n, 1), 0.0)
    return dose.reshape(grid.shape_zyx).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SphereSetting:
    """The case side of a sphere plan, for :func:`plan_spheres` (the breast phantom's from
    :func:`iortopt.phantoms.breast.breast_setting`; a DICOM case's from
    :mod:`iortopt.modalities.xray_sphere.sphere_problem`).

    ``geometry`` (a :class:`SphereGeometry`) provides ``cavity_centre_mm`` (3,),
    ``cavity_wall_mm`` (N, 3) wall samples, ``target_thickness_mm``, ``fit_tolerance_mm``,
    ``skin_distance_mm(radius, centre)`` and ``wall_gap_mm(radius, centre)``, and optionally
    ``traced_skin_distance_mm(centre, radius)`` (jax-traceable; default: the phantom's skin
    plane, ``skin_surface_z_mm - c_z - a``).
    ``evaluation_points(max_radius_mm, max_shift_mm)`` -> :class:`EvalPoints`;
    ``final_case(radius_mm, centre_mm, time_min, beam, shaft_axis, anisotropy, dtype)`` ->
    (Case, full-grid dose (nz, ny, nx) Gy, geometry of that case);
    ``grid_metrics(case, dose, coverage_dose_gy)`` -> the full-grid cross-check dict;
    ``tissue_note``: the tissue model, for ``notes``;
    ``memory_sizes(max_radius_mm)`` -> ``n_voxels``, ``n_points``, ``supersampling`` and
    ``spacing_mm`` of the plan's largest applicator, for the memory estimate (nothing built).
    """

    geometry: SphereGeometry
    evaluation_points: Callable
    final_case: Callable
    grid_metrics: Callable
    tissue_note: str
    memory_sizes: Callable


def plan_spheres(
    setting: SphereSetting,
    beam: XrayBeam | str | Path = "generic_50kV_spheres",
    prescription_gy: float = 20.0,
    prescription_mode: str = "surface",
    prescription_depth_mm: float = 10.0,
    catalogue_diameters_cm=None,
    min_skin_distance_mm: float = 5.0,
    optimise_position: bool = True,
    dtype=jnp.float32,
    *,
    coverage_fraction: float | None = None,
    oar_weight: float = 0.1,
    fit_weight: float = 0.1,
    max_shift_mm: float = 3.0,
    shaft_axis=(0.0, 0.0, 1.0),
    anisotropy: float = 0.0,
    relaxation_iterations: int = 150,
    shield_specs=None,
    robust=None,
    robust_pose=None,
) -> XrayPlanResult:
    """:func:`optimise_xray` on any :class:`SphereSetting` (same arguments, the case side given by
    ``setting``; see the module docstring).

    ``robust``: None, or (``scenario_points``, ``reduce``) for a robust size choice:
    ``scenario_points(points_mm, centre_mm)`` -> [(moved points, dose factor)] per uncertainty
    scenario, ``reduce(values (S,))`` -> their aggregate (larger = worse). Every catalogue size is
    then scored in every scenario (the same batched pass on the moved points), its
    ``score_robust`` = -reduce(-scores), and the size chosen by that; the relaxation stays
    nominal.

    ``robust_pose``: None, or the scenario arrays of :func:`robust_time_and_centre` (with
    ``robust``): after the size choice and the nominal centre refinement, the time and the
    centre of the chosen size are made robust there (``chosen`` gets them;
    ``XrayPlanResult.robust_pose`` reports nominal against robust)."""
    t_start = time.perf_counter()
    if not isinstance(beam, XrayBeam):
        beam = load_xray_beam(beam)
    if prescription_mode not in PRESCRIPTION_MODES:
        raise ValueError(
            f"prescription_mode must be one of {PRESCRIPTION_MODES}, got {prescription_mode!r}"
        )
    if not prescription_gy > 0:
        raise ValueError(f"prescription_gy must be > 0, got {prescription_gy}")
    if catalogue_diameters_cm is None:
        catalogue_diameters_cm = beam.diameters_cm
    indices = [beam.index_of_diameter(float(d)) for d in catalogue_diameters_cm]
    diameters = np.array([beam.diameters_cm[k] for k in indices])
    radii = 5.0 * diameters
    if coverage_fraction is None:
        coverage_fraction = DEFAULT_COVERAGE_FRACTION[prescription_mode]
    anisotropy = float(anisotropy)
    axis = None if anisotropy == 0.0 else tuple(float(v) for v in shaft_axis)
    g = setting.geometry
    ctx = _Context(
        ev=setting.evaluation_points(float(radii.max()), float(max_shift_mm)),
        geometry=g,
        beam=beam,
        prescription_gy=float(prescription_gy),
        coverage_dose_gy=float(coverage_fraction * prescription_gy),
        min_skin_mm=float(min_skin_distance_mm),
        oar_weight=float(oar_weight),
        fit_weight=float(fit_weight),
        dtype=dtype,
    )
    times = np.array(
        [
            prescription_gy
            / _prescription_dose_per_min(a, prescription_mode, prescription_depth_mm, beam)
            for a in radii
        ]
    )
    c0 = g.cavity_centre_mm
    batch = jax.jit(lambda p, c, r, t: catalogue_dose_gy(p, c, r, t, beam, axis, anisotropy))
    setup_s = time.perf_counter() - t_start

    # 1. catalogue comparison: all sizes in one batched pass (compiled once, reused in 2b).
    t0 = time.perf_counter()
    args = ctx.batch_args(np.tile(c0, (len(radii), 1)), radii, times)
    batch = batch.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    doses = np.asarray(batch(*args), np.float64)
    rows = [
        _catalogue_row(ctx, doses[k], diameters[k], radii[k], c0, times[k])
        for k in range(len(radii))
    ]
    placer, placements = None, [None] * len(radii)
    if shield_specs:
        from iortopt.modalities.xray_sphere.shields import make_placer

        placer = make_placer(
            ctx.ev,
            shield_specs,
            prescription_gy=ctx.prescription_gy,
            coverage_dose_gy=ctx.coverage_dose_gy,
            oar_weight=ctx.oar_weight,
            target_thickness_mm=g.target_thickness_mm,
            dtype=dtype,
        )
        for k in range(len(radii)):
            placements[k] = placer(doses[k], c0, radii[k])
            open_row = rows[k]
            rows[k] = _catalogue_row(
                ctx, doses[k] * placements[k].factor, diameters[k], radii[k], c0, times[k]
            )
            rows[k]["without_shields"] = {
                key: open_row[key] for key in (*_METRIC_KEYS[:-1], "score")
            }
    key = "score"
    if robust is not None:
        _robust_scores(ctx, batch, args, rows, diameters, radii, times, c0, robust)
        key = "score_robust"
    best, reason, warnings = _choose(rows, ctx.min_skin_mm, g.fit_tolerance_mm, key)
    batch_s = time.perf_counter() - t0

    # 3. continuous relaxation, started from the chosen size (the objective is flat near its
    # optimum, and Adam started far away can stop in a shallow local minimum).
    t0 = time.perf_counter()
    radius_range = (float(beam.radii_mm.min()), float(beam.radii_mm.max()))
    run, decode, t_ref = _relaxation(
        ctx,
        mode=prescription_mode,
        depth_mm=prescription_depth_mm,
        radius_range_mm=radius_range,
        max_shift_mm=max_shift_mm if optimise_position else 0.0,
        shaft_axis=axis,
        anisotropy=anisotropy,
        iterations=relaxation_iterations,
    )
    free, locked = jnp.asarray(0.0, dtype), jnp.asarray(1.0, dtype)
    u0 = _encode(radii[best], times[best], t_ref, radius_range, dtype)
    run = run.lower(u0, free, jnp.asarray(radii[best], dtype)).compile()
    compile_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    u, _, objective = run(u0, free, jnp.asarray(radii[best], dtype))
    radius_c, centre_c, time_c = (np.asarray(v, np.float64) for v in decode(u, free, 0.0))
    # Exact metrics of the continuous optimum: the compiled batch with every row set to it.
    k = len(radii)
    doses = np.asarray(
        batch(*ctx.batch_args(np.tile(centre_c, (k, 1)), np.full(k, radius_c), np.full(k, time_c)))
    )
    exact = _catalogue_row(ctx, doses[0], radius_c / 5.0, radius_c, centre_c, time_c)
    continuous = {
        "radius_mm": float(radius_c),
        "diameter_cm": float(radius_c) / 5.0,
        "centre_mm": centre_c.tolist(),
        "time_min": float(time_c),
        "objective": float(objective),
        **{key: exact[key] for key in ("surface_dose_gy", "skin_distance_mm", "fits_cavity")},
        **{key: exact[key] for key in _METRIC_KEYS},
        "score": exact["score"],
        "iterations": relaxation_iterations,
        "nearest_catalogue_cm": float(diameters[np.argmin(np.abs(radii - radius_c))]),
    }

    # 2b. centre of the chosen size: same optimiser with the radius locked; the shift is kept
    # only if the exact (catalogue) score does not get worse and the constraints still hold.
    chosen_row, chosen_centre, placement = rows[best], c0.copy(), placements[best]
    if optimise_position:
        u0 = _encode(radii[best], times[best], t_ref, radius_range, dtype)
        u, _, _ = run(u0, locked, jnp.asarray(radii[best], dtype))
        centre_k = np.asarray(decode(u, locked, radii[best])[1], np.float64)
        doses = np.asarray(batch(*ctx.batch_args(np.tile(centre_k, (len(radii), 1)), radii, times)))
        shifted_placement, dose_k = None, doses[best]
        if placer is not None:
            shifted_placement = placer(doses[best], centre_k, radii[best])
            dose_k = doses[best] * shifted_placement.factor
        shifted = _catalogue_row(ctx, dose_k, diameters[best], radii[best], centre_k, times[best])
        if (
            shifted["score"] >= chosen_row["score"]
            and shifted["fits_cavity"]
            and (not shifted["skin_flag"] or chosen_row["skin_flag"])
        ):
            chosen_row, chosen_centre = shifted, centre_k
            placement = shifted_placement if placer is not None else placement
    pose_report, t_best = None, float(times[best])
    if robust_pose is not None:
        chosen_row, chosen_centre, t_best, pose_report = robust_time_and_centre(
            ctx,
            batch,
            robust_pose,
            robust[0],
            mode=prescription_mode,
            depth_mm=prescription_depth_mm,
            best=best,
            diameters=diameters,
            radii=radii,
            times=times,
            centre_mm=chosen_centre,
            nominal_row=chosen_row,
            max_shift_mm=max_shift_mm if optimise_position else 0.0,
            iterations=relaxation_iterations,
        )
    optimise_s = time.perf_counter() - t0 + batch_s

    # 4. final case and full-grid dose.
    t0 = time.perf_counter()
    a_best = float(radii[best])
    case, dose, geometry = setting.final_case(
        a_best, chosen_centre, t_best, beam, axis, anisotropy, dtype
    )
    dose_open = None
    if placement is not None:
        from iortopt.modalities.xray_sphere.shields import grid_factor

        dose_open = dose
        factor = grid_factor(case.grid.points_mm(np.float32), chosen_centre, placement.placed,
                             shield_specs)  # fmt: skip
        dose = (dose_open * factor.reshape(dose.shape)).astype(np.float32)
    full_dose_s = time.perf_counter() - t0

    moved = float(np.linalg.norm(chosen_centre - c0))
    if moved > 0:
        reason += f"; centre then optimised ({moved:.1f} mm from the cavity centre)"
    if pose_report is not None and t_best != float(times[best]):
        reason += (
            f"; robust time {t_best:.1f} min (nominal {float(times[best]):.1f} min), "
            f"{'robust' if pose_report.get('centre_kept') else 'nominal'} centre"
        )
    chosen = {
        "diameter_cm": float(diameters[best]),
        "radius_mm": a_best,
        "centre_mm": chosen_centre.tolist(),
        "time_min": t_best,
        "surface_dose_gy": chosen_row["surface_dose_gy"],
        "dose_at_10mm_gy": chosen_row["dose_at_10mm_gy"],
        "reason": reason,
        "skin_distance_mm": chosen_row["skin_distance_mm"],
        "skin_distance_ok": not chosen_row["skin_flag"],
        "fits_cavity": chosen_row["fits_cavity"],
        **{k: chosen_row[k] for k in _METRIC_KEYS},
        "score": chosen_row["score"],
        "full_grid": setting.grid_metrics(case, dose, ctx.coverage_dose_gy),
    }
    where = (
        "the applicator surface"
        if prescription_mode == "surface"
        else f"{prescription_depth_mm:g} mm depth"
    )
    notes = [
        f"beam {beam.name!r}, dosimetry formalism: {beam.formalism}",
        f"prescription {prescription_gy:g} Gy at {where}",
        f"coverage = % of PTV_shell volume receiving >= {ctx.coverage_dose_gy:g} Gy "
        f"({coverage_fraction:g} x Rx)",
        setting.tissue_note,
    ]
    if beam.illustrative:
        notes.insert(0, ILLUSTRATIVE_NOTE)
    if anisotropy:
        notes.append(f"shaft anisotropy {anisotropy:g} toward {axis} (illustrative model)")
    notes += warnings + list(case.info.get("warnings", []))
    timings = {
        "setup_s": setup_s,
        "compile_s": compile_s,
        "optimise_s": optimise_s,
        "full_dose_s": full_dose_s,
        "total_s": time.perf_counter() - t_start,
    }
    return XrayPlanResult(
        case=case,
        dose_gy=dose,
        chosen=chosen,
        comparison=rows,
        continuous=continuous,
        timings=timings,
        notes=notes,
        beam_name=beam.name,
        formalism=beam.formalism,
        geometry=geometry,
        shields=[] if placement is None else placement.placed,
        shield_size_index=None if placement is None else placement.size_index,
        shield_trials=[] if placement is None else placement.trials,
        dose_without_shields_gy=dose_open,
        robust_pose=pose_report,
    )


def _robust_scores(ctx, batch, args, rows, diameters, radii, times, c0, robust) -> None:
    """Add ``score_robust`` and ``scores_per_scenario`` to each catalogue row (in place)."""
    scenario_points, reduce = robust
    per = []
    for pts, factor in scenario_points(ctx.ev.points_mm, c0):
        moved = jnp.asarray(np.asarray(pts, np.float64), ctx.dtype)
        doses = np.asarray(batch(moved, *args[1:]), np.float64) * factor
        per.append(
            [
                _catalogue_row(ctx, doses[k], diameters[k], radii[k], c0, times[k])["score"]
                for k in range(len(radii))
            ]
        )
    per = np.asarray(per)
    for k, row in enumerate(rows):
        row["score_robust"] = float(-reduce(jnp.asarray(-per[:, k])))
        row["scores_per_scenario"] = per[:, k].tolist()


def robust_time_min(
    radius_mm: float,
    mode: str,
    depth_mm: float,
    beam,
    prescription_gy: float,
    gap_mm,
    scale,
    reduce,
) -> tuple[float, np.ndarray]:
    """The robust treatment time (min) and the prescription dose rate (Gy/min) per scenario.

    Rule: in scenario s the prescription point (the applicator surface, or ``depth_mm`` beyond
    it) moves with the applicator, so a centre shift leaves its dose unchanged; a tissue gap
    ``gap_mm[s]`` puts the tissue there ``gap_mm[s]`` further out, and the dose model is scaled by
    ``scale[s]``: rate_s = scale_s x (depth dose rate at depth + gap_s). The dose is linear in
    time, so the time ``Rx / (-reduce(-rate))`` makes the aggregate (``reduce``, larger = worse,
    applied to the negated doses) of the scenario prescription doses equal to Rx exactly. With
    zero gaps and unit scales it is the nominal time ``Rx / rate`` bit for bit.
    """
    nominal = _prescription_dose_per_min(radius_mm, mode, depth_mm, beam)
    base_mm = 0.0 if mode == "surface" else float(depth_mm)
    rates = np.array(
        [
            float(f)
            * (
                nominal
                if g == 0
                else float(depth_dose_gy(jnp.asarray(base_mm + float(g)), radius_mm, 1.0, beam))
            )
            for g, f in zip(np.asarray(gap_mm), np.asarray(scale), strict=True)
        ]
    )
    rate = float(-reduce(jnp.asarray(-rates)))
    return float(prescription_gy / rate), rates


def _robust_centre_objective(ctx: _Context, spec: dict, max_shift_mm: float):
    """``objective(v, centre0, radius, time)``, jitted: the aggregate (``spec["smooth_reduce"]``)
    over the scenarios of the negated smooth score (coverage - oar_weight x OAR sum / Rx) at the
    centre ``c_cavity + max_shift tanh(v)``, plus the nominal fit and skin-distance terms of the
    relaxation. The scenario doses are one vmap over the (shift, gap, scale) rows."""
    ev, g, beam, dtype = ctx.ev, ctx.geometry, ctx.beam, ctx.dtype
    pts = jnp.asarray(ev.points_mm, dtype)
    idx = ev.groups
    weight = {name: jnp.asarray(ev.weights_cm3[i], dtype) for name, i in idx.items()}
    wall = jnp.asarray(g.cavity_wall_mm, dtype)
    c0 = jnp.asarray(g.cavity_centre_mm, dtype)
    shifts = jnp.asarray(spec["shift_mm"], dtype)
    gaps = jnp.asarray(spec["gap_mm"], dtype)
    scales = jnp.asarray(spec["scale"], dtype)
    reduce, tol = spec["smooth_reduce"], g.fit_tolerance_mm
    traced_skin_distance = getattr(g, "traced_skin_distance_mm", None) or (
        lambda centre, radius: g.skin_surface_z_mm - centre[2] - radius
    )

    def loss_in(centre, radius, t, shift, gap, scale):
        # the tissue relative to the planned applicator (scenarios.moved_points, traced)
        offset = pts - (centre + shift)
        unit = offset / jnp.maximum(jnp.linalg.norm(offset, axis=-1, keepdims=True), 1e-9)
        moved = pts + gap * unit - shift
        dose = scale * sphere_dose_gy(moved, centre, radius, t, beam)
        coverage, oar = smooth_coverage_and_oar(
            dose, pts, idx, weight, centre, radius, g.target_thickness_mm, ctx.coverage_dose_gy
        )
        return -(coverage - ctx.oar_weight * oar / ctx.prescription_gy)

    def objective(v, radius, t):
        centre = c0 + max_shift_mm * jnp.tanh(v)
        per = jax.vmap(lambda s, q, f: loss_in(centre, radius, t, s, q, f))(shifts, gaps, scales)
        gap = jnp.max(jnp.sqrt(jnp.square(jnp.linalg.norm(wall - centre, axis=-1) - radius) + 1e-4))
        skin = traced_skin_distance(centre, radius)
        return (
            reduce(per)
            + ctx.fit_weight * jnp.square(gap / tol)
            + CONSTRAINT_PENALTY_PER_MM2 * jnp.square(jax.nn.relu(ctx.min_skin_mm - skin))
            + CONSTRAINT_PENALTY_PER_MM2 * jnp.square(jax.nn.relu(gap - tol))
        ).astype(dtype)

    return objective


def _robust_centre_run(objective, iterations: int):
    """Adam on ``objective(v, radius, t)`` from ``v0``, the relaxation's schedule; jitted.
    Returns the best iterate seen (its objective is at most ``objective(v0)``: Adam's last
    step can oscillate about a flat optimum)."""
    opt = optax.adam(optax.exponential_decay(0.1, iterations, LEARNING_RATE_DECAY))
    value_and_grad = jax.value_and_grad(objective)

    def run(v0, radius, t):
        def step(carry, _):
            v, state, best_v, best_f = carry
            value, grad = value_and_grad(v, radius, t)
            better = value < best_f
            best_v, best_f = jnp.where(better, v, best_v), jnp.where(better, value, best_f)
            updates, state = opt.update(grad, state, v)
            return (optax.apply_updates(v, updates), state, best_v, best_f), None

        inf = jnp.asarray(jnp.inf, v0.dtype)
        carry = (v0, opt.init(v0), v0, inf)
        (v, _, best_v, best_f), _ = jax.lax.scan(step, carry, None, length=iterations)
        return jnp.where(objective(v, radius, t) < best_f, v, best_v)

    return jax.jit(run)


def _robust_exact_score(ctx, batch, scenario_points, reduce, k, diameters, radii, times, centre):
    """The exact robust score -reduce(-score_s) of catalogue row ``k`` at ``centre`` and the
    times ``times``, and the per-scenario scores."""
    per = []
    n = len(radii)
    args = ctx.batch_args(np.tile(centre, (n, 1)), radii, times)
    for pts, factor in scenario_points(ctx.ev.points_mm, centre):
        moved = jnp.asarray(np.asarray(pts, np.float64), ctx.dtype)
        dose = np.asarray(batch(moved, *args[1:]), np.float64)[k] * factor
        per.append(_catalogue_row(ctx, dose, diameters[k], radii[k], centre, times[k])["score"])
    per = np.asarray(per)
    return float(-reduce(jnp.asarray(-per))), per


def robust_time_and_centre(
    ctx,
    batch,
    spec: dict,
    scenario_points,
    *,
    mode: str,
    depth_mm: float,
    best: int,
    diameters,
    radii,
    times,
    centre_mm,
    nominal_row: dict,
    max_shift_mm: float,
    iterations: int,
):
    """Robust time and centre of the chosen size ``best`` (documented in :func:`robust_time_min`
    and :func:`_robust_centre_objective`).

    ``spec``: ``shift_mm`` (S, 3), ``gap_mm`` (S,), ``scale`` (S,), ``reduce`` (exact aggregate,
    for the time rule and the exact score) and ``smooth_reduce`` (the config's, for the
    gradient). The centre starts at the nominal one (``centre_mm``) and is kept only if its exact
    robust score is at least the nominal centre's at the robust time and the constraints still
    hold. With one scenario (zero magnitudes) nothing moves: the nominal time and centre.

    Returns (row, centre (3,), time_min, report).
    """
    radius = float(radii[best])
    reduce = spec["reduce"]
    t_nominal = float(times[best])
    t_robust, rates = robust_time_min(
        radius, mode, depth_mm, ctx.beam, ctx.prescription_gy, spec["gap_mm"], spec["scale"], reduce
    )
    centre_nominal = np.asarray(centre_mm, np.float64)
    report = {
        "nominal": {"time_min": t_nominal, "centre_mm": centre_nominal.tolist()},
        "time_rule": "time = Rx / (aggregate over the scenarios of the prescription-point dose "
        "rate; worst = the lowest): the scenario rate is the depth dose rate at the prescription "
        "depth + the tissue gap, times the dose scale (a centre shift moves the prescription "
        "point with the applicator)",
        "prescription_rate_gy_min_per_scenario": rates.tolist(),
    }
    if len(rates) == 1:
        report["robust"] = dict(report["nominal"])
        report["centre_rule"] = "one scenario (zero magnitudes): the nominal centre and time"
        return nominal_row, centre_nominal, t_nominal, report
    times_r = np.array(times, np.float64)
    times_r[best] = t_robust
    args = (diameters, radii, times_r)
    score_nom, per_nom = _robust_exact_score(
        ctx, batch, scenario_points, reduce, best, *args, centre_nominal
    )
    centre, kept = centre_nominal, False
    objective_nominal = objective_robust = objective_trial = None
    score_rob, per_rob = score_nom, per_nom
    if max_shift_mm > 0:
        objective = _robust_centre_objective(ctx, spec, float(max_shift_mm))
        rel = (centre_nominal - ctx.geometry.cavity_centre_mm) / max_shift_mm
        v0 = jnp.asarray(np.arctanh(np.clip(rel, -0.999, 0.999)), ctx.dtype)
        a, t = jnp.asarray(radius, ctx.dtype), jnp.asarray(t_robust, ctx.dtype)
        v = _robust_centre_run(objective, iterations)(v0, a, t)
        f = jax.jit(objective)
        objective_nominal, objective_trial = float(f(v0, a, t)), float(f(v, a, t))
        trial = np.asarray(
            ctx.geometry.cavity_centre_mm + max_shift_mm * np.tanh(np.asarray(v, np.float64))
        )
        score_t, per_t = _robust_exact_score(
            ctx, batch, scenario_points, reduce, best, *args, trial
        )
        n = len(radii)
        dose_t = np.asarray(batch(*ctx.batch_args(np.tile(trial, (n, 1)), radii, times_r)))[best]
        row_t = _catalogue_row(ctx, dose_t, diameters[best], radius, trial, t_robust)
        if (
            score_t >= score_nom
            and row_t["fits_cavity"]
            and (not row_t["skin_flag"] or nominal_row["skin_flag"])
        ):
            centre, kept, score_rob, per_rob = trial, True, score_t, per_t
        objective_robust = objective_trial if kept else objective_nominal
    n = len(radii)
    dose = np.asarray(batch(*ctx.batch_args(np.tile(centre, (n, 1)), radii, times_r)))[best]
    row = _catalogue_row(ctx, dose, diameters[best], radius, centre, t_robust)
    report |= {
        "robust": {"time_min": t_robust, "centre_mm": centre.tolist()},
        "centre_rule": "Adam on the aggregate over the scenarios of the smooth score (coverage "
        "and OAR terms, scenario doses vmapped) plus the fit and skin terms, from the nominal "
        "centre; kept only if its exact robust score is at least the nominal centre's (both at "
        "the robust time) and the constraints hold",
        "centre_optimised": max_shift_mm > 0,
        "centre_kept": kept,
        "objective_at_nominal_centre": objective_nominal,
        "objective_at_robust_centre": objective_robust,
        "objective_at_optimised_centre": objective_trial if max_shift_mm > 0 else None,
        "robust_score_at_nominal_centre": score_nom,
        "robust_score_at_robust_centre": score_rob,
        "scores_per_scenario_nominal_centre": per_nom.tolist(),
        "scores_per_scenario_robust_centre": per_rob.tolist(),
    }
    return row, centre, t_robust, report


def _catalogue_row(ctx: _Context, dose, diameter_cm, radius_mm, centre_mm, time_min) -> dict:
    """One comparison row: plan data, constraints, metrics and score of one applicator."""
    g, beam = ctx.geometry, ctx.beam
    radius_mm, time_min = float(radius_mm), float(time_min)
    centre = np.asarray(centre_mm, np.float64)
    skin_distance = g.skin_distance_mm(radius_mm, centre)
    gap = g.wall_gap_mm(radius_mm, centre)
    row = {
        "diameter_cm": float(diameter_cm),
        "radius_mm": radius_mm,
        "fits_cavity": gap <= g.fit_tolerance_mm + 1e-9,
        "time_min": time_min,
        "surface_dose_gy": float(surface_dose_rate_gy_min(radius_mm, beam)) * time_min,
        "dose_at_10mm_gy": float(depth_dose_gy(jnp.asarray(10.0), radius_mm, time_min, beam)),
        "skin_distance_mm": skin_distance,
        "skin_flag": bool(skin_distance < ctx.min_skin_mm),
        "wall_gap_mm": gap,
    }
    row.update(
        _row_metrics(
            np.asarray(dose, np.float64), ctx.ev, g, radius_mm, centre, ctx.coverage_dose_gy
        )
    )
    row["score"] = _score(
        row, ctx.prescription_gy, ctx.oar_weight, ctx.fit_weight, g.fit_tolerance_mm
    )
    return row
