"""Plan electron IORT of the breast (ELIOT type): choose energy, cone, bevel; place cone and disc.

Inputs: an ELIOT-type breast case with a flat gland surface and a disc space below the gland
(:class:`ElectronSetting`: the ELIOT phantom's from :func:`iortopt.phantoms.eliot.eliot_setting`),
a beam (:mod:`iortopt.physics.electron`), a disc material from the beam file, the disc radius and
a prescription. :func:`optimise_electron` does four things.

Prescription and normalisation
------------------------------
The prescription Rx (21 Gy by default, ELIOT) is given to the ``isodose_percent`` (90 %) isodose.
The 100 % level is D100 = Rx / 0.90 = 23.3 Gy: the open-beam dose on the beam's central axis at
the depth of maximum below the tissue surface (:func:`iortopt.physics.electron.reference_point_mm`;
backscatter from the disc is not part of it). MU = D100 / (open-beam dose per MU there), so an air
gap's inverse square is compensated. A point lies inside the 90 % isodose when its dose is at
least 0.90 x D100 = Rx, so target coverage is the percentage of the PTV_gland volume receiving at
least Rx.

1. Catalogue comparison. Every (energy, cone diameter, bevel) in the catalogue gets a nominal
   placement: the cone laid flush on the gland surface at the tumour bed axis
   (:func:`iortopt.physics.electron.flush_pose`; a bevel's toe points along ``toe_direction``
   projected onto the surface, so the beam axis is oblique by the bevel angle) and the disc's
   upstream face on the bottom of the gland, centred where the beam's central axis crosses it,
   parallel to the surface. All rows are evaluated in one batched pass
   (:func:`iortopt.physics.electron.catalogue_dose_gy`) on the structures' sample points (one
   point per voxel and structure: the centroid of the structure's part of the voxel, weighted by
   its volume). Reported per row:

   - ``mu`` (MU for Rx at the 90 % isodose) and ``d100_gy``;
   - ``target_coverage_percent`` (PTV_gland volume % at >= Rx), ``target_min_gy``;
   - ``max_dose_gy`` (any tissue, backscatter included), ``beyond_disc_max_gy`` (the highest dose
     beyond the disc: chest wall, ribs, lung), ``lung_mean_gy``, ``rib_D2cc_gy``,
     ``chest_wall_D2cc_gy``, ``skin_max_gy``;
   - ``field_radius_at_disc_mm`` (the diverging field's radius where the central axis crosses the
     disc), ``disc_margin_mm`` = disc radius - distance of that crossing from the disc centre -
     field radius, and ``disc_covers_field`` = margin >= the required ``disc_margin_mm`` (a disc
     smaller than the field plus margin is flagged);
   - ``axis_tilt_deg`` (beam axis to the vertical, -z) and ``axis_tilt_ok`` (at most
     ``max_axis_tilt_deg``, what the machine's head can reach);
   - ``score`` = coverage % - 100 ``oar_weight`` (beyond_disc_max + rib_D2cc + lung_mean +
     skin_max) / Rx: coverage first, then the dose that the disc and the cone choice should keep
     away from the organs below and the skin.

2. Choice (documented rule): among the rows whose disc covers the field and whose axis tilt is
   reachable, the highest score; if none, the best row whose disc covers the field (then any),
   with a warning. ``chosen["reason"]`` says which rule decided and names the runner-up.

3. Joint optimisation of the chosen row (``optimise_pose``): cone position (shift in the surface
   plane within ``max_shift_mm``, air gap 0 to ``max_air_gap_mm``), cone tilt (two angles within
   ``max_tilt_deg``), MU, and the disc's centre (within ``max_disc_shift_mm`` in its plane; in
   depth anywhere in the disc space, its upstream face from the bottom of the gland down by the
   space's slack, ``disc_gap_mm`` - thickness) and tilt (two angles within
   ``max_disc_tilt_deg``), with optax Adam on a smooth version of the score (soft coverage, plus
   a quadratic under-dose term) and penalties: the normalisation (100 (MU x dose per MU / D100 -
   1)^2, which ties MU to the pose), the disc covering the field with its margin, the reachable
   axis tilt, and the tilted disc's rim staying inside the disc space (1 per mm^2 or degree^2 of
   violation). The result is evaluated exactly (MU renormalised exactly) and kept if its disc
   covers the field and either it brings the beam axis within reach where the nominal placement
   did not, or it keeps the axis status and does not lower the score. Robust (``robust_pose``,
   ``[robust] optimise = true``): then the pose and the MU against uncertainty scenarios
   (:func:`robust_pose_stage`).

4. The final :class:`~iortopt.cases.case.Case` (rigid anatomy: it does not depend on the plan) and
the
   full-grid dose. In voxels cut by a tissue boundary (the surface, the disc space, the bottom of
   the lung) the dose is the mean over the voxel's tissue sub-samples, so their tissue fraction
   gets its dose rather than that of an air or metal voxel centre.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iortopt.cases.case import Case
from iortopt.evaluation.dvh import dose_at_volume_cm3, volume_at_dose
from iortopt.grid import sub_offsets_mm
from iortopt.optimisation.objectives import dose_at_volume
from iortopt.physics.disc import Disc, ray_plane_crossing_mm, unit
from iortopt.physics.electron import (
    DISC_EDGE_MM,
    Cone,
    ElectronBeam,
    PlaneSurface,
    catalogue_dose_gy,
    cone_dose_gy,
    field_radius_mm,
    flush_pose,
    load_electron_beam,
    reference_dose_per_mu_gy,
)

D2CC_CM3 = 2.0
#: Plans evaluated per call of the compiled batch (the catalogue is padded to a multiple).
CHUNK = 16
OAR_GROUPS = ("chest_wall", "rib", "lung")
TISSUE_GROUPS = ("PTV_gland", "gland", "skin", "chest_wall", "rib", "lung")
#: The groups whose doses the joint optimiser's objective uses (target, beyond the disc, skin).
OBJECTIVE_GROUPS = ("PTV_gland", "skin", "chest_wall", "rib", "lung")
#: Soft-coverage width (fraction of Rx) and the weight of the quadratic under-dose term.
SOFT_DOSE_FRACTION = 0.02
UNDERDOSE_WEIGHT = 1.0
PRESCRIPTION_PENALTY = 100.0
CONSTRAINT_PENALTY = 1.0
LEARNING_RATE = 0.05
#: Adam's learning rate decays by this factor over the iterations.
LEARNING_RATE_DECAY = 0.1
ILLUSTRATIVE_NOTE = (
    "ILLUSTRATIVE beam data, NOT FOR CLINICAL USE: PDDs, penumbrae, output factors and the disc's "
    "transmission and backscatter come from smooth models and textbook rules, not measurements."
)


@dataclass(frozen=True)
class ElectronSetting:
    """The case side of :func:`optimise_electron`: a case with a flat tissue surface over the
    gland and a disc space below it (the ELIOT phantom's, built by
    :func:`iortopt.phantoms.eliot.eliot_setting`).

    ``geometry`` (mm, unit vectors) provides ``surface_point_mm`` and ``surface_normal`` (the
    gland surface), ``rotation`` (3, 3: columns the tissue frame's axes), ``disc_plane_point_mm``
    (the bottom of the gland), ``to_tissue_frame(points)``, ``is_tissue(points)`` and the
    tissue-frame depths ``gland_bottom_w_mm``, ``muscle_front_w_mm``, ``lung_back_w_mm``.
    ``samples``: structure name -> (points (N, 3) mm, weights (N,) cm^3), one point per voxel and
    structure. ``disc_space_mm``: the depth of the disc space (``disc_space_field``: the config
    field that sets it, for messages); ``supersampling``: sub-samples per axis of a voxel cut by
    a tissue boundary in the full-grid dose.
    """

    case: Case
    geometry: object
    samples: dict
    disc_space_mm: float
    supersampling: int
    disc_space_field: str = "disc_space_mm"


@dataclass
class ElectronPlanResult:
    """Outcome of :func:`optimise_electron` (doses Gy, lengths mm, angles degrees)."""

    case: Case
    dose_gy: np.ndarray  # (nz, ny, nx) float32 on case.grid
    chosen: dict
    disc: dict
    comparison: list[dict]
    optimisation: dict
    timings: dict
    notes: list[str] = field(default_factory=list)
    beam_name: str = ""
    geometry: object = None  # ElectronSetting.geometry
    #: (context, Cone, Disc) of the final plan, for re-evaluating it on moved geometry (robust)
    final_pose: tuple | None = None
    #: the nominal plan's (context, Cone, Disc) when the pose and MU were made robust
    nominal_pose: tuple | None = None


@dataclass(frozen=True)
class EvalPoints:
    """Sample points (P, 3) mm, weights (P,) cm^3 and, per structure, its (contiguous) slice of
    them: slices rather than index arrays keep gathers (and their slow-to-compile transposes) out
    of the optimiser."""

    points_mm: np.ndarray
    weights_cm3: np.ndarray
    groups: dict


@dataclass(frozen=True)
class _Context:
    """What every evaluation of a plan needs."""

    ev: EvalPoints
    geometry: object  # ElectronSetting.geometry
    beam: ElectronBeam
    surface: PlaneSurface
    prescription_gy: float
    d100_gy: float
    disc_index: int
    disc_radius_mm: float
    disc_thickness_mm: float
    disc_space_mm: float
    disc_margin_mm: float
    disc_edge_mm: float
    max_axis_tilt_deg: float
    oar_weight: float
    dtype: object


def _objective_points(ev: EvalPoints) -> EvalPoints:
    """The sample points of the groups that the joint optimiser's objective reads
    (:data:`OBJECTIVE_GROUPS`: the gland outside the target is left out, a third of the points),
    with their slices re-based; each point's dose is that of the full set."""
    points, weights, groups, n = [], [], {}, 0
    for name in OBJECTIVE_GROUPS:
        part = ev.groups[name]
        points.append(ev.points_mm[part])
        weights.append(ev.weights_cm3[part])
        groups[name] = slice(n, n + len(points[-1]))
        n += len(points[-1])
    return EvalPoints(np.concatenate(points), np.concatenate(weights), groups)


def _eval_points(samples: dict) -> EvalPoints:
    points, weights, groups, n = [], [], {}, 0
    for name in TISSUE_GROUPS:
        pts, w = samples[name]
        points.append(pts)
        weights.append(w)
        groups[name] = slice(n, n + len(pts))
        n += len(pts)
    return EvalPoints(np.concatenate(points), np.concatenate(weights), groups)


# ----------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------


def _surface_frame(g) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors e1, e2 (in the surface plane: the tissue frame's x and y) and the normal."""
    return g.rotation[:, 0], g.rotation[:, 1], g.surface_normal


def _axis_crossing_mm(end_mm, axis, plane_point_mm, normal) -> np.ndarray:
    """(3,) where the central axis (through ``end_mm`` along ``axis``) crosses a plane (numpy)."""
    end, axis = np.asarray(end_mm, np.float64), np.asarray(axis, np.float64)
    normal = np.asarray(normal, np.float64)
    return end - ((end - plane_point_mm) @ normal) / (axis @ normal) * axis


def _nominal_disc_centre(g, end_mm, axis) -> np.ndarray:
    """Where the central axis crosses the disc plane (the bottom of the gland)."""
    return _axis_crossing_mm(end_mm, axis, g.disc_plane_point_mm, g.surface_normal)


def _axis_tilt_deg(axis) -> float:
    return float(np.degrees(np.arccos(np.clip(-np.asarray(axis)[2], -1.0, 1.0))))


# ----------------------------------------------------------------------------------------------
# Metrics of one plan on the sample points
# ----------------------------------------------------------------------------------------------


def disc_fit(ctx: _Context, cone: dict, disc: dict) -> dict:
    """Field radius where the central axis crosses the disc, the margin left, covers or not
    (``ctx``: any context with ``beam``, ``disc_radius_mm`` and ``disc_margin_mm``; the DICOM
    case's too)."""
    beam = ctx.beam
    end, axis = np.asarray(cone["end_mm"]), np.asarray(cone["axis"])
    centre, normal = np.asarray(disc["centre_mm"]), np.asarray(disc["normal"])
    crossing = _axis_crossing_mm(end, axis, centre, normal)
    z = float((crossing - end) @ axis)
    vsd = float(beam.vsd_mm[cone["energy_index"]])
    radius = float(field_radius_mm(cone["diameter_mm"], vsd, z))
    margin = ctx.disc_radius_mm - float(np.linalg.norm(crossing - centre)) - radius
    return {
        "field_radius_at_disc_mm": radius,
        "disc_margin_mm": margin,
        "disc_covers_field": bool(margin >= ctx.disc_margin_mm - 1e-9),
    }


def _metrics(ctx: _Context, dose: np.ndarray) -> dict:
    """Coverage and OAR metrics from the dose (P,) on the sample points."""
    ev, rx = ctx.ev, ctx.prescription_gy

    def part(name):
        idx = ev.groups[name]
        return dose[idx], ev.weights_cm3[idx]

    d_t, w_t = part("PTV_gland")
    beyond = np.concatenate([part(name)[0] for name in OAR_GROUPS])
    lung_d, lung_w = part("lung")

    def d2cc(name):
        d, w = part(name)
        return float(dose_at_volume_cm3(d, w, 1.0, D2CC_CM3)) if w.sum() > D2CC_CM3 else np.nan

    every = np.concatenate([part(name)[0] for name in TISSUE_GROUPS])
    return {
        "target_coverage_percent": 100.0 * float(w_t[d_t >= rx].sum() / w_t.sum()),
        "target_min_gy": float(d_t.min()),
        "max_dose_gy": float(every.max()),
        "beyond_disc_max_gy": float(beyond.max()),
        "lung_mean_gy": float((lung_d * lung_w).sum() / lung_w.sum()),
        "rib_D2cc_gy": d2cc("rib"),
        "chest_wall_D2cc_gy": d2cc("chest_wall"),
        "skin_max_gy": float(part("skin")[0].max()),
    }


def row_score(row: dict, rx: float, oar_weight: float) -> float:
    oar = sum(
        float(np.nan_to_num(row[k]))
        for k in ("beyond_disc_max_gy", "rib_D2cc_gy", "lung_mean_gy", "skin_max_gy")
    )
    return row["target_coverage_percent"] - 100.0 * oar_weight * oar / rx


def _row(ctx: _Context, dose, cone: dict, disc: dict, mu: float, d_per_mu: float) -> dict:
    beam = ctx.beam
    row = {
        "energy_MeV": beam.energies_mev[cone["energy_index"]],
        "diameter_cm": float(cone["diameter_mm"]) / 10.0,
        "bevel_deg": beam.bevels[cone["bevel_index"]],
        "mu": float(mu),
        "d100_gy": float(mu * d_per_mu),
    }
    row |= _metrics(ctx, np.asarray(dose, np.float64))
    row |= disc_fit(ctx, cone, disc)
    tilt = _axis_tilt_deg(cone["axis"])
    row["axis_tilt_deg"] = tilt
    row["axis_tilt_ok"] = bool(tilt <= ctx.max_axis_tilt_deg + 1e-9)
    row["score"] = row_score(row, ctx.prescription_gy, ctx.oar_weight)
    return row


def choose_row(rows: list[dict], ctx: _Context, key: str = "score") -> tuple[int, str, list[str]]:
    """Index of the chosen row, the reason and warnings (rule in the module docstring; ``ctx``:
    any context with ``disc_margin_mm``, ``max_axis_tilt_deg``, ``disc_radius_mm`` and
    ``prescription_gy``; ``key``: the score ranked, ``"score_robust"`` for a robust choice)."""
    warnings = []
    pool = [k for k, r in enumerate(rows) if r["disc_covers_field"] and r["axis_tilt_ok"]]
    rule = (
        f"whose disc covers the field with {ctx.disc_margin_mm:g} mm margin and whose beam axis "
        f"is within {ctx.max_axis_tilt_deg:g} deg of vertical"
    )
    if not pool:
        pool = [k for k, r in enumerate(rows) if r["disc_covers_field"]]
        rule = f"whose disc covers the field (none within {ctx.max_axis_tilt_deg:g} deg of tilt)"
        warnings.append(
            f"no catalogue row keeps the beam axis within {ctx.max_axis_tilt_deg:g} deg of "
            "vertical: the chosen plan needs a larger head tilt"
        )
    if not pool:
        pool = list(range(len(rows)))
        rule = "in the catalogue; none has a disc that covers the field"
        warnings.append(
            f"the {ctx.disc_radius_mm:g} mm disc covers no catalogue field with "
            f"{ctx.disc_margin_mm:g} mm margin: use a larger disc"
        )
    ranked = sorted(pool, key=lambda k: -rows[k][key])
    best = ranked[0]
    r = rows[best]
    what = "score" if key == "score" else "robust score"
    reason = (
        f"{_label(r)}: highest {what} ({r[key]:.1f}) of the {len(pool)} of {len(rows)} rows "
        f"{rule}; coverage {r['target_coverage_percent']:.1f} % at {ctx.prescription_gy:g} Gy, "
        f"beyond-disc max {r['beyond_disc_max_gy']:.2f} Gy, skin max {r['skin_max_gy']:.2f} Gy, "
        f"disc margin {r['disc_margin_mm']:.1f} mm"
    )
    if len(ranked) > 1:
        nxt = rows[ranked[1]]
        reason += f"; next best {_label(nxt)} ({what} {nxt[key]:.1f})"
    return best, reason, warnings


def _label(row: dict) -> str:
    return (
        f"{row['energy_MeV']:g} MeV, {row['diameter_cm']:g} cm cone, bevel {row['bevel_deg']:g} deg"
    )


# ----------------------------------------------------------------------------------------------
# Batched evaluation
# ----------------------------------------------------------------------------------------------


def on_device(values, dtype) -> jax.Array:
    """``values`` as a device array of ``dtype`` (as JAX canonicalises it), converted by numpy
    on the host and put on the device as they are: ``jnp.asarray`` lowers and loads a small
    copy or conversion program per shape in every process (the same numbers, rounded to nearest
    either way)."""
    return jax.device_put(np.asarray(values, dtype=jax.dtypes.canonicalize_dtype(dtype)))


def _cone_leaves(cones: list[dict], mus, dtype) -> list[np.ndarray]:
    """The leaves of :func:`stack_cones` as host arrays (``Cone``'s field order)."""
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    return [
        np.asarray([c["energy_index"] for c in cones], np.int32),
        np.asarray([c["bevel_index"] for c in cones], np.int32),
        np.asarray([c["diameter_mm"] for c in cones], dtype),
        np.stack([c["end_mm"] for c in cones]).astype(dtype),
        np.stack([c["axis"] for c in cones]).astype(dtype),
        np.stack([c["toe"] for c in cones]).astype(dtype),
        np.asarray(mus, dtype),
    ]


def _disc_leaves(ctx: _Context, discs: list[dict], dtype) -> list[np.ndarray]:
    """The leaves of :func:`stack_discs` as host arrays (``Disc``'s field order)."""
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    k = len(discs)
    return [
        np.stack([d["centre_mm"] for d in discs]).astype(dtype),
        np.stack([d["normal"] for d in discs]).astype(dtype),
        np.full(k, ctx.disc_radius_mm, dtype),
        np.full(k, ctx.disc_thickness_mm, dtype),
    ]


def stack_cones(cones: list[dict], mus, dtype) -> Cone:
    return Cone(*(jax.device_put(leaf) for leaf in _cone_leaves(cones, mus, dtype)))


def stack_discs(ctx: _Context, discs: list[dict], dtype) -> Disc:
    return Disc(*(jax.device_put(leaf) for leaf in _disc_leaves(ctx, discs, dtype)))


def single_pose(ctx: _Context, cone: dict, disc: dict, mu: float, dtype) -> tuple[Cone, Disc]:
    """One plan's (Cone, Disc) without the leading axis of :func:`stack_cones` (indexed on the
    host: indexing device arrays is one more small program each)."""
    c = Cone(*(jax.device_put(leaf[0]) for leaf in _cone_leaves([cone], [mu], dtype)))
    d = Disc(*(jax.device_put(leaf[0]) for leaf in _disc_leaves(ctx, [disc], dtype)))
    return c, d


def _batch_function(ctx: _Context):
    """Jitted (points, cones, discs) -> (dose (K, P) Gy, open-beam dose per MU at the
    normalisation point (K,)) for cones with MU = D100 / that dose (MU for Rx)."""
    beam, surface = ctx.beam, ctx.surface

    def batch(points, cones, discs):
        per_mu = jax.vmap(lambda c: reference_dose_per_mu_gy(c, beam, surface))(cones)
        cones = cones._replace(mu=ctx.d100_gy / per_mu)
        dose = catalogue_dose_gy(
            points, cones, beam, surface, discs, ctx.disc_index, ctx.disc_edge_mm, batch_size=8
        )
        return dose, per_mu

    return jax.jit(batch)


def _evaluate(ctx: _Context, batch, cones: list[dict], discs: list[dict]) -> list[dict]:
    """Rows of plans with MU for Rx, in chunks of ``CHUNK`` (padded) so that ``batch`` is
    compiled once whatever the number of plans."""
    dtype = ctx.dtype
    points = on_device(ctx.ev.points_mm, dtype)
    rows = []
    for start in range(0, len(cones), CHUNK):
        part_c, part_d = cones[start : start + CHUNK], discs[start : start + CHUNK]
        n = len(part_c)
        pad_c, pad_d = part_c + [part_c[-1]] * (CHUNK - n), part_d + [part_d[-1]] * (CHUNK - n)
        dose, per_mu = batch(
            points, stack_cones(pad_c, np.ones(CHUNK), dtype), stack_discs(ctx, pad_d, dtype)
        )
        dose, per_mu = np.asarray(dose, np.float64), np.asarray(per_mu, np.float64)
        for k in range(n):
            mu = ctx.d100_gy / per_mu[k]
            rows.append(_row(ctx, dose[k], part_c[k], part_d[k], mu, per_mu[k]))
    return rows


def _robust_scores(ctx: _Context, batch, cones, discs, rows, robust) -> None:
    """Add ``score_robust`` and ``scores_per_scenario`` to each catalogue row (in place): each
    row's score in every scenario of ``robust`` with its planned MU (the batch normalises MU to
    Rx for the moved cone; its dose is rescaled to the row's MU)."""
    moves, reduce = robust
    per_row = [moves(c, d) for c, d in zip(cones, discs, strict=True)]
    for k, row in enumerate(rows):
        moved_c = [m[0] for m in per_row[k]]
        moved_d = [m[1] for m in per_row[k]]
        scores = []
        for start in range(0, len(moved_c), CHUNK):
            part_c, part_d = moved_c[start : start + CHUNK], moved_d[start : start + CHUNK]
            n = len(part_c)
            pad_c = part_c + [part_c[-1]] * (CHUNK - n)
            pad_d = part_d + [part_d[-1]] * (CHUNK - n)
            dose, per_mu = batch(
                on_device(ctx.ev.points_mm, ctx.dtype),
                stack_cones(pad_c, np.ones(CHUNK), ctx.dtype),
                stack_discs(ctx, pad_d, ctx.dtype),
            )
            dose, per_mu = np.asarray(dose, np.float64), np.asarray(per_mu, np.float64)
            for j in range(n):
                factor = per_row[k][start + j][2]
                fixed = dose[j] * per_mu[j] * row["mu"] / ctx.d100_gy * factor
                scores.append(_row(ctx, fixed, part_c[j], part_d[j], row["mu"], per_mu[j])["score"])
        scores = np.asarray(scores)
        row["score_robust"] = float(-reduce(jnp.asarray(-scores)))
        row["scores_per_scenario"] = scores.tolist()


# ----------------------------------------------------------------------------------------------
# Joint optimisation of one row
# ----------------------------------------------------------------------------------------------


def _joint_optimiser(
    ctx: _Context,
    cone0: dict,
    disc0: dict,
    mu_start: float,
    *,
    max_shift_mm: float,
    max_air_gap_mm: float,
    max_tilt_deg: float,
    max_disc_shift_mm: float,
    max_disc_tilt_deg: float,
    iterations: int,
    scenarios: dict | None = None,
):
    """Jitted optimiser of the 11 continuous variables u of one (energy, cone, bevel).

    ``scenarios`` (robust, :func:`robust_pose_stage`): None for the nominal objective, or the
    scenario deviations ``cone_shift_mm`` (S, 2), ``cone_tilt_deg`` (S, 2), ``disc_shift_mm``
    (S, 2), ``scale`` (S,), the in-plane directions ``e1``, ``e2`` (3,) and ``smooth_reduce``:
    the dose terms (score and under-dose) are then evaluated on every moved cone and disc (one
    vmap) and aggregated; the prescription and constraint penalties stay on the nominal pose.

    u[0:2] cone shift (e1, e2), u[2] air gap, u[3:5] cone tilt toward e1, e2, u[5] ln(MU / MU0),
    u[6:8] disc shift (e1, e2), u[8] disc depth (0 to the disc space's slack below the gland),
    u[9:11] disc tilt toward e1, e2. The cone's toe follows its axis (the engine uses only the
    toe's part perpendicular to the axis).

    Returns:
        run(u0) -> (u, objective history (iterations,)); decode(u) -> (Cone, Disc); u0.
    """
    dtype, beam, surface, ev = ctx.dtype, ctx.beam, ctx.surface, _objective_points(ctx.ev)
    e1, e2, n = (on_device(v, dtype) for v in _surface_frame(ctx.geometry))
    # Passed as arguments, not captured: large captured arrays become constants that slow down
    # XLA's compilation.
    data = {
        "points": on_device(ev.points_mm, dtype),
        "weights": on_device(ev.weights_cm3, dtype),
    }
    idx = ev.groups
    rx, d100 = ctx.prescription_gy, ctx.d100_gy
    cone_base = Cone(
        on_device(cone0["energy_index"], jnp.int32),
        on_device(cone0["bevel_index"], jnp.int32),
        on_device(cone0["diameter_mm"], dtype),
        on_device(cone0["end_mm"], dtype),
        on_device(cone0["axis"], dtype),
        on_device(cone0["toe"], dtype),
        on_device(1.0, dtype),
    )
    mu0 = float(mu_start)
    tilt, disc_tilt = (
        math.tan(math.radians(max_tilt_deg)),
        math.tan(math.radians(max_disc_tilt_deg)),
    )
    centre0 = on_device(disc0["centre_mm"], dtype)
    normal0 = on_device(disc0["normal"], dtype)
    cos_max = math.cos(math.radians(ctx.max_axis_tilt_deg))
    slack = ctx.disc_space_mm - ctx.disc_thickness_mm
    vsd = float(beam.vsd_mm[cone0["energy_index"]])

    def decode(u):
        # Tilts as offsets of the unit vectors along e1, e2 (|offset| <= tan(max tilt)), then
        # renormalised: no trigonometry, a small graph (XLA's CPU compile time grows with the
        # number of small scalar operations).
        axis = unit(cone_base.axis + tilt * (jnp.tanh(u[3]) * e1 + jnp.tanh(u[4]) * e2))
        end = (
            cone_base.end_mm
            + max_shift_mm * (jnp.tanh(u[0]) * e1 + jnp.tanh(u[1]) * e2)
            + max_air_gap_mm * jax.nn.sigmoid(u[2]) * n
        )
        cone = cone_base._replace(end_mm=end, axis=axis, mu=mu0 * jnp.exp(u[5]))
        normal = unit(normal0 + disc_tilt * (jnp.tanh(u[9]) * e1 + jnp.tanh(u[10]) * e2))
        centre = (
            centre0
            + max_disc_shift_mm * (jnp.tanh(u[6]) * e1 + jnp.tanh(u[7]) * e2)
            - slack * jax.nn.sigmoid(u[8]) * n
        )
        disc = Disc(
            centre,
            normal,
            jnp.asarray(ctx.disc_radius_mm, dtype),
            jnp.asarray(ctx.disc_thickness_mm, dtype),
        )
        return cone, disc

    # Dose per MU at the normalisation point as a function of the central-axis air gap only
    # (energy, bevel and diameter are fixed here): the engine's formula on the axis
    # (:func:`iortopt.physics.electron.reference_dose_per_mu_gy`) with its constants folded.
    e = cone0["energy_index"]
    dmax = float(beam.dmax_mm[e])
    sigma_dmax = float(np.interp(dmax, beam.tables[e].depth_mm, beam.tables[e].penumbra_sigma_mm))
    radius_mm = 0.5 * float(cone0["diameter_mm"])
    output = float(
        np.interp(2 * radius_mm, beam.diameters_mm, beam.output_gy_per_mu[e, cone0["bevel_index"]])
    )
    scale = 1.0 / (math.sqrt(2.0) * sigma_dmax)
    lateral_ref = math.erf(radius_mm * (vsd + dmax) / vsd * scale)

    def per_mu_at(gap):
        z = gap + dmax
        lateral = jax.scipy.special.erf(radius_mm * (vsd + z) / vsd * scale)
        return output * jnp.square((vsd + dmax) / (vsd + z)) * lateral / lateral_ref

    def dose_terms(dose, w):
        t = idx["PTV_gland"]
        wt = w[t] / jnp.sum(w[t])
        covered = jax.nn.sigmoid((dose[t] - rx) / (SOFT_DOSE_FRACTION * rx))
        coverage = jnp.sum(wt * covered)
        under = jnp.sum(wt * jnp.square(jax.nn.relu(rx - dose[t]) / rx))
        beyond = jnp.concatenate([dose[idx[k]] for k in OAR_GROUPS])
        lung = idx["lung"]
        oar = (
            jnp.max(beyond)
            + dose_at_volume(dose[idx["rib"]], w[idx["rib"]], D2CC_CM3)
            + jnp.sum(dose[lung] * w[lung]) / jnp.sum(w[lung])
            + jnp.max(dose[idx["skin"]])
        )
        score = coverage - ctx.oar_weight * oar / rx
        return -score + UNDERDOSE_WEIGHT * under

    def moved_terms(cone, disc, pts, w):
        s = scenarios
        sh, ti, ds = (
            jnp.asarray(s[k], dtype) for k in ("cone_shift_mm", "cone_tilt_deg", "disc_shift_mm")
        )
        f = jnp.asarray(s["scale"], dtype)
        a1, a2 = jnp.asarray(s["e1"], dtype), jnp.asarray(s["e2"], dtype)

        def one(sh, ti, ds, f):
            rotvec = jnp.deg2rad(ti[0]) * a1 + jnp.deg2rad(ti[1]) * a2
            c = cone._replace(
                end_mm=cone.end_mm + sh[0] * a1 + sh[1] * a2,
                axis=rotate(cone.axis, rotvec),
                toe=rotate(cone.toe, rotvec),
            )
            ip = [unit(v - jnp.dot(v, disc.normal) * disc.normal) for v in (a1, a2)]
            d = disc._replace(centre_mm=disc.centre_mm + ds[0] * ip[0] + ds[1] * ip[1])
            dose = f * cone_dose_gy(pts, c, beam, surface, d, ctx.disc_index, ctx.disc_edge_mm)
            return dose_terms(dose, w)

        return s["smooth_reduce"](jax.vmap(one)(sh, ti, ds, f))

    def objective(u, data):
        pts, w = data["points"], data["weights"]
        cone, disc = decode(u)
        if scenarios is None:
            dose = cone_dose_gy(pts, cone, beam, surface, disc, ctx.disc_index, ctx.disc_edge_mm)
            terms = dose_terms(dose, w)
        else:
            terms = moved_terms(cone, disc, pts, w)
        gap = jnp.maximum(jnp.dot(cone.end_mm - surface.point_mm, surface.normal), 0.0)
        per_mu = per_mu_at(gap / jnp.maximum(-jnp.dot(cone.axis, surface.normal), 0.05))
        # Disc coverage: field radius where the central axis crosses the disc, plus margin.
        crossing = ray_plane_crossing_mm(cone.end_mm[None], cone.axis, disc.centre_mm, disc.normal)[
            0
        ]
        z = jnp.dot(crossing - cone.end_mm, cone.axis)
        offset = jnp.sqrt(jnp.sum(jnp.square(crossing - disc.centre_mm)) + 1e-6)
        short = field_radius_mm(cone.diameter_mm, vsd, z) + ctx.disc_margin_mm + offset
        # The disc stays in its space: its rim (up to R sin(tilt) above or below the centre)
        # neither rises into the gland nor sinks into the muscle.
        sin_tilt = jnp.sqrt(jnp.maximum(1.0 - jnp.square(jnp.dot(disc.normal, n)), 0.0) + 1e-12)
        rim = ctx.disc_radius_mm * sin_tilt
        top = jnp.dot(disc.centre_mm - centre0, n)  # <= 0: below the bottom of the gland
        penalty = (
            PRESCRIPTION_PENALTY * jnp.square(cone.mu * per_mu / d100 - 1.0)
            + CONSTRAINT_PENALTY * jnp.square(jax.nn.relu(short - ctx.disc_radius_mm))
            + CONSTRAINT_PENALTY
            * jnp.square(jnp.degrees(jax.nn.relu(cos_max + cone.axis[2])))  # -axis_z >= cos_max
            + CONSTRAINT_PENALTY * jnp.square(jax.nn.relu(top + rim))
            + CONSTRAINT_PENALTY * jnp.square(jax.nn.relu(rim - top - slack))
        )
        return (terms + penalty).astype(dtype)

    opt = optax.adam(optax.exponential_decay(LEARNING_RATE, iterations, LEARNING_RATE_DECAY))
    value_and_grad = jax.value_and_grad(objective)

    @jax.jit
    def step(u, state, data):
        value, grad = value_and_grad(u, data)
        updates, state = opt.update(grad, state, u)
        return optax.apply_updates(u, updates), state, value

    def run(u0):
        # A Python loop over one jitted step: compiles faster than a lax.scan of the same step
        # on CPU, and the per-step dispatch is negligible next to the step itself.
        u, state, history = u0, opt.init(u0), []
        for _ in range(iterations):
            u, state, value = step(u, state, data)
            history.append(value)
        # Gathered on the host: a jnp.stack of the scalars would be one more program (of
        # ``iterations`` arguments) to lower and load in every process.
        return u, np.asarray([np.asarray(v) for v in history])

    u0 = on_device([0.0, 0.0, -6.0] + [0.0] * 8, dtype)  # air gap ~0 to start with
    return run, jax.jit(decode), u0


def rotate(v, rotvec):
    """``v`` (3,) rotated by the rotation vector ``rotvec`` (3,) rad (Rodrigues; traceable, and
    exactly ``v`` for a zero rotation)."""
    angle = jnp.sqrt(jnp.sum(jnp.square(rotvec)))
    k = rotvec / jnp.maximum(angle, 1e-12)
    return (
        v * jnp.cos(angle)
        + jnp.cross(k, v) * jnp.sin(angle)
        + k * jnp.dot(k, v) * (1.0 - jnp.cos(angle))
    )


def robust_mu(per_mu_gy, scale, d100_gy: float, reduce) -> float:
    """The robust MU: the dose is linear in MU, so ``d100 / (-reduce(-scale x per_mu))`` makes
    the aggregate (``reduce``, larger = worse, on the negated doses) of the scenario doses at the
    normalisation point (dmax on the moved cone's axis) equal to D100 exactly; with one
    scenario of scale 1 it is ``d100 / per_mu``, the nominal MU."""
    rates = np.asarray(scale, np.float64) * np.asarray(per_mu_gy, np.float64)
    return float(d100_gy / float(-reduce(jnp.asarray(-rates))))


def _scenario_per_mu(ctx: _Context, batch, moves, cone: dict, disc: dict):
    """Dose per MU at the normalisation point (S,) of every moved cone, and the scales (S,)."""
    sets = moves(cone, disc)
    per = []
    for start in range(0, len(sets), CHUNK):
        part = sets[start : start + CHUNK]
        pad = part + [part[-1]] * (CHUNK - len(part))
        _, per_mu = batch(
            on_device(ctx.ev.points_mm, ctx.dtype),
            stack_cones([m[0] for m in pad], np.ones(CHUNK), ctx.dtype),
            stack_discs(ctx, [m[1] for m in pad], ctx.dtype),
        )
        per += np.asarray(per_mu, np.float64)[: len(part)].tolist()
    return np.asarray(per), np.array([m[2] for m in sets], np.float64)


def _with_mu(ctx: _Context, batch, cone: dict, disc: dict, mu: float) -> dict:
    """The row of ``cone``/``disc`` at ``mu`` MU (the batch gives it at the MU for Rx)."""
    dose, per_mu = batch(
        on_device(ctx.ev.points_mm, ctx.dtype),
        stack_cones([cone] * CHUNK, np.ones(CHUNK), ctx.dtype),
        stack_discs(ctx, [disc] * CHUNK, ctx.dtype),
    )
    dose, per_mu = np.asarray(dose, np.float64)[0], float(np.asarray(per_mu, np.float64)[0])
    return _row(ctx, dose * mu * per_mu / ctx.d100_gy, cone, disc, mu, per_mu)


def robust_pose_stage(ctx: _Context, batch, robust, spec: dict, row: dict, cone: dict,
                      disc: dict, optimise_pose: bool, bounds: dict, iterations: int):  # fmt: skip
    """Robust pose and MU of the chosen row, started from the nominal plan (``row``, ``cone``,
    ``disc``: after the nominal joint optimisation).

    1. Pose (with ``optimise_pose``): the joint optimiser (same variables, bounds and Adam) on
       the scenario-aggregated objective (``spec``, see :func:`_joint_optimiser`); the result is
       kept if the disc covers the field, the axis tilt stays allowed (or was not) and its exact
       robust score at its MU for Rx (-reduce(-scenario scores)) is at least the nominal one's.
    2. MU: :func:`robust_mu` on the kept pose's moved cones.

    With one scenario (zero magnitudes) nothing moves: the nominal pose and MU.
    Returns (row, cone, disc, report).
    """
    moves, reduce = robust
    report = {"nominal": _placement(row, cone, disc, ctx.geometry)}
    if len(spec["scale"]) == 1:
        report["robust"] = report["nominal"]
        report["rule"] = "one scenario (zero magnitudes): the nominal pose and MU"
        return row, cone, disc, report
    base = dict(row)
    _robust_scores(ctx, batch, [cone], [disc], [base], robust)
    report["robust_score_nominal_pose"] = base["score_robust"]
    kept = False
    if optimise_pose:
        run, decode, u0 = _joint_optimiser(
            ctx, cone, disc, row["mu"], **bounds, iterations=iterations, scenarios=spec
        )
        u, history = run(u0)
        history = np.asarray(history, np.float64)
        cone_u, disc_u = decode(u)
        cone_o, disc_o = _cone_dict(cone_u), _disc_dict(disc_u)
        trial = _evaluate(ctx, batch, [cone_o], [disc_o])[0]
        _robust_scores(ctx, batch, [cone_o], [disc_o], [trial], robust)
        kept = bool(
            trial["disc_covers_field"]
            and (trial["axis_tilt_ok"] or not row["axis_tilt_ok"])
            and trial["score_robust"] >= base["score_robust"]
        )
        report |= {
            "objective_first": float(history[0]),
            "objective_last": float(history[-1]),
            "objective_min": float(history.min()),
            "robust_score_optimised_pose": trial["score_robust"],
        }
        if kept:
            cone, disc = cone_o, disc_o
    per_mu, scale = _scenario_per_mu(ctx, batch, moves, cone, disc)
    mu = robust_mu(per_mu, scale, ctx.d100_gy, reduce)
    out = _with_mu(ctx, batch, cone, disc, mu)
    report |= {
        "pose_optimised": bool(optimise_pose),
        "pose_kept": kept,
        "mu_rule": "MU = D100 / (aggregate over the scenarios of the dose per MU at dmax on the "
        "moved cone's axis times the dose scale; worst = the lowest)",
        "dose_per_mu_gy_per_scenario": (per_mu * scale).tolist(),
        "robust": _placement(out, cone, disc, ctx.geometry),
    }
    return out, cone, disc, report


def _cone_dict(cone: Cone) -> dict:
    return {
        "energy_index": int(cone.energy_index),
        "bevel_index": int(cone.bevel_index),
        "diameter_mm": float(cone.diameter_mm),
        "end_mm": np.asarray(cone.end_mm, np.float64),
        "axis": np.asarray(cone.axis, np.float64),
        "toe": np.asarray(cone.toe, np.float64),
    }


def _disc_dict(disc: Disc) -> dict:
    normal = np.asarray(disc.normal, np.float64)
    return {
        "centre_mm": np.asarray(disc.centre_mm, np.float64),
        "normal": normal / np.linalg.norm(normal),
    }


# ----------------------------------------------------------------------------------------------
# Full-grid dose
# ----------------------------------------------------------------------------------------------


def full_grid_dose_gy(
    ctx: _Context, case: Case, cone: Cone, disc: Disc, supersampling: int = 3
) -> np.ndarray:
    """Dose (nz, ny, nx) float32 on ``case.grid``: voxel centres, and the mean over the tissue
    sub-samples in voxels cut by a tissue boundary (module docstring)."""
    g, grid, dtype = ctx.geometry, case.grid, ctx.dtype
    pts = grid.points_mm()
    w = g.to_tissue_frame(pts)[:, 2]
    half_diagonal = 0.5 * float(np.linalg.norm(grid.spacing_xyz_mm))
    planes = (0.0, g.gland_bottom_w_mm, g.muscle_front_w_mm, g.lung_back_w_mm)
    near = np.min(np.abs(w[:, None] - np.asarray(planes)), axis=1) <= half_diagonal
    band = np.flatnonzero(near)
    sub = sub_offsets_mm(grid, supersampling)
    sub_pts = (pts[band][:, None, :] + sub[None]).reshape(-1, 3)
    tissue = g.is_tissue(sub_pts).reshape(band.size, -1)
    n = tissue.sum(axis=1)
    mixed = (n > 0) & (n < tissue.shape[1])
    band, tissue, n = band[mixed], tissue[mixed], n[mixed]
    sub_pts = (pts[band][:, None, :] + sub[None]).reshape(-1, 3)
    both = cone_dose_gy(
        on_device(np.concatenate([pts, sub_pts]), dtype),
        cone,
        ctx.beam,
        ctx.surface,
        disc,
        ctx.disc_index,
        ctx.disc_edge_mm,
    )
    both = np.array(both, np.float64)
    dose = both[: len(pts)]
    if band.size:
        sub_dose = both[len(pts) :].reshape(band.size, -1)
        dose[band] = (sub_dose * tissue).sum(axis=1) / n
    return dose.reshape(grid.shape_zyx).astype(np.float32)


def _grid_metrics(case: Case, dose: np.ndarray, rx: float) -> dict:
    """Cross-check metrics from the full grid and the fractional occupancies."""
    v = case.grid.voxel_volume_cm3

    def occ(name):
        return case.structure(name).occupancy

    beyond = occ("chest_wall") + occ("rib") + occ("lung")
    return {
        "target_coverage_percent": 100.0 * volume_at_dose(dose, occ("PTV_gland"), rx),
        "PTV_gland_cm3": case.structure("PTV_gland").volume_cm3(case.grid),
        "beyond_disc_max_gy": float(dose[beyond > 0].max()),
        "skin_max_gy": float(dose[occ("skin") > 0].max()),
        "rib_D2cc_gy": float(dose_at_volume_cm3(dose, occ("rib"), v, D2CC_CM3)),
        "lung_mean_gy": float((dose * occ("lung")).sum() / occ("lung").sum()),
    }


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def nominal_rows(
    beam: ElectronBeam,
    e_idx,
    c_idx,
    b_idx,
    surface_point_mm,
    surface_normal,
    toe_direction,
    disc_at,
) -> tuple[list[dict], list[dict]]:
    """Cone and disc placements of every (energy, cone, bevel) row: each cone laid flush on the
    surface at ``surface_point_mm`` (:func:`iortopt.physics.electron.flush_pose`), its disc
    ``disc_at(end_mm, axis)`` (a dict with ``centre_mm`` and ``normal``)."""
    cones, discs = [], []
    for ke in e_idx:
        for kc in c_idx:
            for kb in b_idx:
                end, axis, toe = flush_pose(
                    surface_point_mm, surface_normal, beam.bevels[kb], toe_direction
                )
                cones.append(
                    {
                        "energy_index": ke,
                        "bevel_index": kb,
                        "diameter_mm": float(beam.diameters_mm[kc]),
                        "end_mm": end,
                        "axis": axis,
                        "toe": toe,
                    }
                )
                discs.append(disc_at(end, axis))
    return cones, discs


def plan_notes(
    notes: list[str], beam: ElectronBeam, warnings: list[str], chosen_row: dict, margin_mm: float
) -> list[str]:
    """A plan's notes: the beam-data warning first (illustrative data), then ``notes``, the
    choice's ``warnings`` and a flag when the chosen row's disc does not cover the field."""
    out = ([ILLUSTRATIVE_NOTE] if beam.illustrative else []) + list(notes) + list(warnings)
    if not chosen_row["disc_covers_field"]:
        out.append(
            f"FLAG: the disc does not cover the field plus {margin_mm:g} mm "
            f"(margin {chosen_row['disc_margin_mm']:.1f} mm)"
        )
    return out


def optimise_electron(
    setting: ElectronSetting,
    beam: ElectronBeam | str | Path = "generic_IOERT",
    prescription_gy: float = 21.0,
    isodose_percent: float = 90.0,
    energies_mev=None,
    diameters_cm=None,
    bevels_deg=None,
    disc: str = "Al2_Pb4",
    disc_radius_mm: float = 45.0,
    disc_margin_mm: float = 5.0,
    optimise_pose: bool = True,
    dtype=jnp.float32,
    *,
    toe_direction=(0.0, -1.0, 0.0),
    max_axis_tilt_deg: float = 30.0,
    oar_weight: float = 0.1,
    disc_edge_mm: float = DISC_EDGE_MM,
    max_shift_mm: float = 5.0,
    max_air_gap_mm: float = 5.0,
    max_tilt_deg: float = 10.0,
    max_disc_shift_mm: float = 5.0,
    max_disc_tilt_deg: float = 10.0,
    iterations: int = 100,
    robust=None,
    robust_pose=None,
) -> ElectronPlanResult:
    """Choose energy, cone and bevel, then place cone and disc (see the module docstring).

    ``robust``: None, or (``moves``, ``reduce``) for a robust row choice: ``moves(cone, disc)``
    -> [(cone, disc, dose factor)] per uncertainty scenario (catalogue dicts), ``reduce(values
    (S,))`` -> their aggregate (larger = worse). Every row is then scored in every scenario at its
    planned MU, ``score_robust`` = -reduce(-scores), and the row chosen by it.
    ``robust_pose`` (with ``robust``): the scenario deviations of :func:`robust_pose_stage`,
    which then makes the pose and the MU of the nominal plan robust
    (``optimisation["robust"]``: nominal against robust; ``nominal_pose`` keeps the nominal).

    Args:
        setting: the case side (:class:`ElectronSetting`).
        beam: an :class:`ElectronBeam`, or a packaged beam name / TOML path.
        prescription_gy: Rx, Gy, given to the ``isodose_percent`` isodose.
        energies_mev, diameters_cm, bevels_deg: the catalogue to compare (default: the beam's).
        disc: disc material name in the beam file; ``disc_radius_mm`` its radius;
            ``disc_margin_mm`` the margin by which it must exceed the field.
        optimise_pose: run the joint optimisation (3.) of the chosen row.
        dtype: float dtype of the dose computations.
        toe_direction: (3,) direction of a bevelled cone's toe (projected onto the surface).
        max_axis_tilt_deg: largest angle between the beam axis and the vertical (-z).
        oar_weight: weight of the OAR doses in the score.
        disc_edge_mm: width of the disc's soft edges.
        max_shift_mm, max_air_gap_mm, max_tilt_deg, max_disc_shift_mm, max_disc_tilt_deg: bounds
            of the joint optimisation; ``iterations`` its Adam steps.
    Returns:
        :class:`ElectronPlanResult`.
    """
    t_start = time.perf_counter()
    if not isinstance(beam, ElectronBeam):
        beam = load_electron_beam(beam)
    if not prescription_gy > 0:
        raise ValueError(f"prescription_gy must be > 0, got {prescription_gy}")
    if not 0 < isodose_percent <= 100:
        raise ValueError(f"isodose_percent must lie in (0, 100], got {isodose_percent}")
    e_idx = [beam.index_of_energy(e) for e in (energies_mev or beam.energies_mev)]
    c_idx = [beam.index_of_diameter(d) for d in (diameters_cm or beam.diameters_cm)]
    b_idx = [beam.index_of_bevel(b) for b in (bevels_deg or beam.bevels)]
    disc_index = beam.index_of_disc(disc)
    toe = np.asarray(toe_direction, np.float64)
    if toe.shape != (3,) or not np.all(np.isfinite(toe)):
        raise ValueError(f"toe_direction must be three finite numbers, got {toe_direction}")
    if beam.disc_thickness_mm[disc_index] > setting.disc_space_mm + 1e-9:
        raise ValueError(
            f"disc {disc!r} is {beam.disc_thickness_mm[disc_index]:g} mm thick: it does not fit "
            f"the {setting.disc_space_mm:g} mm disc space ({setting.disc_space_field})"
        )
    case, g, samples = setting.case, setting.geometry, setting.samples
    if np.linalg.norm(toe - (toe @ g.surface_normal) * g.surface_normal) < 1e-6:
        raise ValueError("toe_direction must not be parallel to the gland surface's normal")
    ctx = _Context(
        ev=_eval_points(samples),
        geometry=g,
        beam=beam,
        surface=PlaneSurface(
            on_device(g.surface_point_mm, dtype), on_device(g.surface_normal, dtype)
        ),
        prescription_gy=float(prescription_gy),
        d100_gy=float(prescription_gy) / (isodose_percent / 100.0),
        disc_index=disc_index,
        disc_radius_mm=float(disc_radius_mm),
        disc_thickness_mm=float(beam.disc_thickness_mm[disc_index]),
        disc_space_mm=float(setting.disc_space_mm),
        disc_margin_mm=float(disc_margin_mm),
        disc_edge_mm=float(disc_edge_mm),
        max_axis_tilt_deg=float(max_axis_tilt_deg),
        oar_weight=float(oar_weight),
        dtype=dtype,
    )
    setup_s = time.perf_counter() - t_start

    # 1. catalogue: nominal placements, one batched pass.
    t0 = time.perf_counter()
    cones, discs = nominal_rows(
        beam,
        e_idx,
        c_idx,
        b_idx,
        g.surface_point_mm,
        g.surface_normal,
        toe_direction,
        lambda end, axis: {
            "centre_mm": _nominal_disc_centre(g, end, axis),
            "normal": g.surface_normal,
        },
    )
    batch = _batch_function(ctx)
    rows = _evaluate(ctx, batch, cones, discs)
    key = "score"
    if robust is not None:
        _robust_scores(ctx, batch, cones, discs, rows, robust)
        key = "score_robust"
    best, reason, warnings = choose_row(rows, ctx, key)
    catalogue_s = time.perf_counter() - t0

    # 3. joint optimisation of the chosen row.
    t0 = time.perf_counter()
    chosen_row, chosen_cone, chosen_disc = rows[best], cones[best], discs[best]
    optimisation = {"run": bool(optimise_pose), "accepted": False}
    if optimise_pose:
        run, decode, u0 = _joint_optimiser(
            ctx,
            chosen_cone,
            chosen_disc,
            chosen_row["mu"],
            max_shift_mm=max_shift_mm,
            max_air_gap_mm=max_air_gap_mm,
            max_tilt_deg=max_tilt_deg,
            max_disc_shift_mm=max_disc_shift_mm,
            max_disc_tilt_deg=max_disc_tilt_deg,
            iterations=iterations,
        )
        u, history = run(u0)
        cone_u, disc_u = decode(u)
        cone_o, disc_o = _cone_dict(cone_u), _disc_dict(disc_u)
        optimised = _evaluate(ctx, batch, [cone_o], [disc_o])[0]
        fixes_tilt = optimised["axis_tilt_ok"] and not chosen_row["axis_tilt_ok"]
        same_tilt = optimised["axis_tilt_ok"] == chosen_row["axis_tilt_ok"]
        accepted = optimised["disc_covers_field"] and (
            fixes_tilt or (same_tilt and optimised["score"] >= chosen_row["score"])
        )
        history = np.asarray(history, np.float64)
        optimisation |= {
            "accepted": bool(accepted),
            "iterations": int(iterations),
            "objective_first": float(history[0]),
            "objective_last": float(history[-1]),
            "score_nominal": chosen_row["score"],
            "score_optimised": optimised["score"],
            "mu_optimiser": float(cone_u.mu),
            "optimised": _placement(optimised, cone_o, disc_o, g),
        }
        if accepted:
            chosen_row, chosen_cone, chosen_disc = optimised, cone_o, disc_o
    nominal_pose = None
    if robust_pose is not None:
        nominal_pose = (chosen_cone, chosen_disc, chosen_row["mu"])
        bounds = {
            "max_shift_mm": max_shift_mm,
            "max_air_gap_mm": max_air_gap_mm,
            "max_tilt_deg": max_tilt_deg,
            "max_disc_shift_mm": max_disc_shift_mm,
            "max_disc_tilt_deg": max_disc_tilt_deg,
        }
        e1, e2 = robust_pose["across"](chosen_cone["axis"])
        chosen_row, chosen_cone, chosen_disc, optimisation["robust"] = robust_pose_stage(
            ctx, batch, robust, robust_pose | {"e1": e1, "e2": e2}, chosen_row, chosen_cone,
            chosen_disc, optimise_pose, bounds, iterations,
        )  # fmt: skip
    optimise_s = time.perf_counter() - t0

    # 4. full-grid dose.
    t0 = time.perf_counter()
    cone_final, disc_final = single_pose(ctx, chosen_cone, chosen_disc, chosen_row["mu"], dtype)
    dose = full_grid_dose_gy(ctx, case, cone_final, disc_final, setting.supersampling)
    full_dose_s = time.perf_counter() - t0

    if optimisation["accepted"]:
        reason += "; cone and disc placement then optimised jointly"
    if "robust" in optimisation and "mu" in optimisation["robust"]["robust"]:
        rob = optimisation["robust"]
        reason += (
            f"; robust MU {rob['robust']['mu']:.1f} (nominal {rob['nominal']['mu']:.1f}), "
            f"{'robust' if rob.get('pose_kept') else 'nominal'} pose"
        )
    chosen = _placement(chosen_row, chosen_cone, chosen_disc, g) | {
        "reason": reason,
        "full_grid": _grid_metrics(case, dose, ctx.prescription_gy),
    }
    disc_info = {
        "material": beam.discs[disc_index].name,
        "description": beam.discs[disc_index].description,
        "radius_mm": ctx.disc_radius_mm,
        "thickness_mm": ctx.disc_thickness_mm,
        "required_margin_mm": ctx.disc_margin_mm,
        "edge_width_mm": ctx.disc_edge_mm,
        "centre_mm": chosen["disc_centre_mm"],
        "normal": chosen["disc_normal"],
        "depth_below_surface_mm": chosen["disc_depth_mm"],
        "covers_field": chosen_row["disc_covers_field"],
        "margin_mm": chosen_row["disc_margin_mm"],
        "transmission": beam.discs[disc_index].transmission[chosen_cone["energy_index"]],
        "backscatter_percent": beam.discs[disc_index].backscatter_percent[
            chosen_cone["energy_index"]
        ],
    }
    notes = [
        f"beam {beam.name!r} ({beam.machine or 'machine not named'})",
        f"prescription {prescription_gy:g} Gy to the {isodose_percent:g} % isodose: 100 % = "
        f"{ctx.d100_gy:.2f} Gy at dmax on the central axis (open beam); coverage = % of PTV_gland "
        f"volume receiving >= {prescription_gy:g} Gy",
        f"disc {disc_info['material']} ({disc_info['description']}), radius {disc_radius_mm:g} mm, "
        f"required margin over the field {disc_margin_mm:g} mm",
        "tissue model: rigid anatomy, flat gland surface; depth measured along the beam axis",
    ]
    notes = plan_notes(notes, beam, warnings, chosen_row, disc_margin_mm)
    timings = {
        "setup_s": setup_s,
        "catalogue_s": catalogue_s,
        "optimise_s": optimise_s,
        "full_dose_s": full_dose_s,
        "total_s": time.perf_counter() - t_start,
    }
    return ElectronPlanResult(
        case=case,
        dose_gy=dose,
        chosen=chosen,
        disc=disc_info,
        comparison=rows,
        optimisation=optimisation,
        timings=timings,
        notes=notes,
        beam_name=beam.name,
        geometry=g,
        final_pose=(ctx, cone_final, disc_final),
        nominal_pose=None if nominal_pose is None else _pose_pytrees(ctx, *nominal_pose),
    )


def _pose_pytrees(ctx: _Context, cone: dict, disc: dict, mu: float) -> tuple:
    """(context, Cone, Disc) of one plan, as ``ElectronPlanResult.final_pose``."""
    return ctx, *single_pose(ctx, cone, disc, mu, ctx.dtype)


def _placement(row: dict, cone: dict, disc: dict, g) -> dict:
    """A row plus where the cone and the disc are (JSON-friendly); the disc depth is that of its
    upstream face's centre below the gland surface, along the surface normal."""
    centre = np.asarray(disc["centre_mm"], np.float64)
    return dict(row) | {
        "cone_end_mm": np.asarray(cone["end_mm"]).tolist(),
        "cone_axis": np.asarray(cone["axis"]).tolist(),
        "cone_toe": np.asarray(cone["toe"]).tolist(),
        "disc_centre_mm": centre.tolist(),
        "disc_normal": np.asarray(disc["normal"]).tolist(),
        "disc_depth_mm": float(-(centre - g.surface_point_mm) @ g.surface_normal),
    }
