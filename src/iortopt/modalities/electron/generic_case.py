"""Electron IORT on any Case with HU (``[case] kind = "dicom"``): the cone in patient mm, the tissue
surface and the water-equivalent depth from the CT.

    build_problem(case, ...)      -> GenericElectronProblem   cone, disc plane, evaluation points
    plan_generic_case(problem, ...) -> ElectronPlanResult     catalogue comparison, choice,
                                                              full-grid dose

Geometry (all in the case's frame, patient LPS mm for an imported CT):

- ``cone_end_mm`` is the centre of the flat (0 degree) cone's end face and ``cone_axis`` (unit,
  into the patient) its beam axis: the end face lies in the plane through ``cone_end_mm``
  perpendicular to ``cone_axis``. A bevelled cone is laid flush on that same plane with its toe
  toward ``toe_direction`` (:func:`iortopt.physics.electron.flush_pose` with normal
  ``-cone_axis``): its axis is tilted by the bevel angle, as on the phantom's flat gland surface.
- The tissue surface and density are the case's (:meth:`Case.body_mask`: the body ROI, else the
  HU threshold; :meth:`Case.relative_electron_density`) as a
  :class:`iortopt.physics.electron.VoxelMedium`: every ray has its real entry point and air gap,
  and the depth of the PDD and penumbra is the water-equivalent one.
- The protective disc lies in a plane: through ``disc_centre_mm`` with normal ``disc_normal``
  when given (default normal ``-cone_axis``), else (documented rule) perpendicular to
  ``cone_axis`` through the point where the flat cone's central axis leaves the target for the
  last time (the deepest target boundary on the axis: the target's occupancy, trilinear, crossing
  0.5 going deeper, sampled every tenth of a voxel). Each catalogue row's disc is centred where
  that row's central axis crosses the plane (for the flat cone: ``disc_centre_mm`` when it is on
  the axis). The disc is not in the CT: its volume (the disc of the flat cone, centre test per
  voxel) counts as tissue of water density in the depth integral, since the disc's transmission
  data are relative to the open dose at the same depth in water; the dose inside it is reported
  as 0 where the CT has no tissue.
- OARs by planning name (the ``[case.dicom.structures]`` keys): ``skin`` (max), ``chest_wall``
  and ``rib`` (D2cc), ``lung`` (mean); a name the case lacks gives a null metric (0 in the
  score). ``beyond_disc_max_gy`` is the highest dose of any OAR voxel beyond the disc plane. The
  axis tilt is the angle to the vertical of the patient's position (the IEC gantry-0 beam).
- Scores, the choice rule, MU for the prescription and the disc fit are those of
  :mod:`iortopt.modalities.electron.choice`. The joint cone/disc pose optimisation is not run
  on these cases (the catalogue rows keep their nominal placement): the pipeline refuses
  ``optimise_pose = true`` for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.cases.case import Case
from iortopt.dicom.beam_geometry import axis_from_angles
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.evaluation.dvh import dose_at_volume_cm3, volume_at_dose
from iortopt.modalities.electron.choice import (
    D2CC_CM3,
    ElectronPlanResult,
    EvalPoints,
    choose_row,
    disc_fit,
    nominal_rows,
    plan_notes,
    row_score,
    stack_cones,
    stack_discs,
)
from iortopt.physics.disc import Disc
from iortopt.physics.electron import (
    Cone,
    ElectronBeam,
    VoxelMedium,
    catalogue_dose_gy,
    cone_dose_gy,
    longest_ray_mm,
    ray_depths,
    reference_dose_per_mu_gy,
    voxel_medium,
)

#: Plans evaluated per call of the compiled batch (at most; the catalogue is padded to a
#: multiple).
CHUNK = 8
#: Roles whose voxels are evaluation points (cavity and body are not tissue to score).
SCORED_ROLES = ("target", "oar", "other")
#: Target boundary search step along the axis, as a fraction of the smallest voxel spacing.
BOUNDARY_STEP_FRACTION = 0.1


@dataclass(frozen=True, eq=False)
class GenericElectronProblem:
    """The case and the geometry of a plan on it (mm, unit vectors; module docstring)."""

    case: Case
    target: str
    cone_end_mm: np.ndarray
    cone_axis: np.ndarray
    toe_direction: np.ndarray
    disc_point_mm: np.ndarray
    disc_normal: np.ndarray
    disc_rule: str
    vertical: np.ndarray  # the gantry-0 beam direction in the case frame
    ev: EvalPoints
    beyond_disc: np.ndarray  # (P,) bool: OAR points beyond the disc plane
    tissue_fraction: np.ndarray  # (nz, ny, nx) the case's body mask
    density: np.ndarray  # (nz, ny, nx) relative electron density


@dataclass(frozen=True)
class _Context:
    """What every evaluation of a plan needs (the fields :mod:`choice`'s helpers read)."""

    ev: EvalPoints
    beam: ElectronBeam
    surface: VoxelMedium
    prescription_gy: float
    d100_gy: float
    disc_index: int
    disc_radius_mm: float
    disc_thickness_mm: float
    disc_margin_mm: float
    disc_edge_mm: float
    max_axis_tilt_deg: float
    oar_weight: float
    dtype: object
    target: str
    vertical: np.ndarray
    beyond_disc: np.ndarray


def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = float(np.linalg.norm(v))
    if v.shape != (3,) or not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"{what}: {v.tolist()} is not a non-zero 3-vector")
    return v / n


def _sample(case: Case, volume: np.ndarray, points_mm) -> np.ndarray:
    from scipy import ndimage

    index = case.grid.mm_to_index(points_mm)
    return ndimage.map_coordinates(volume, index.T, order=1, mode="nearest")


def deepest_boundary_mm(case: Case, occupancy, start_mm, axis) -> float | None:
    """Distance (mm) along ``axis`` from ``start_mm`` to where the occupancy (trilinear) last
    falls below 0.5 going deeper (None if that does not happen inside the grid, more than half
    a voxel from the start)."""
    grid = case.grid
    step = BOUNDARY_STEP_FRACTION * min(grid.spacing_xyz_mm)
    extent = np.asarray(grid.spacing_xyz_mm) * np.asarray(grid.shape_zyx[::-1])
    s = np.arange(0.0, float(np.linalg.norm(extent)) + step, step)
    points = start_mm[None, :] + s[:, None] * axis[None, :]
    lo = np.asarray(grid.origin_xyz_mm) - 0.5 * np.asarray(grid.spacing_xyz_mm)
    hi = lo + extent
    inside_grid = np.all((points >= lo) & (points <= hi), axis=1)
    occ = np.where(inside_grid, _sample(case, occupancy, points), 0.0)
    leaving = np.flatnonzero((occ[:-1] >= 0.5) & (occ[1:] < 0.5))
    # a crossing within half a voxel of the start is the start touching the target's edge
    leaving = leaving[s[leaving] >= 0.5 * min(grid.spacing_xyz_mm)]
    if leaving.size == 0:
        return None
    k = leaving[-1]
    f = (occ[k] - 0.5) / (occ[k] - occ[k + 1])
    return float(s[k] + f * step)


def _eval_points(case: Case) -> EvalPoints:
    """One point per voxel of each scored structure (its centre), weighted by its volume."""
    points, weights, groups, n = [], [], {}, 0
    centres = case.grid.points_mm()
    v = case.grid.voxel_volume_cm3
    for s in case.structures:
        if s.role not in SCORED_ROLES:
            continue
        occ = s.occupancy.ravel()
        has = np.flatnonzero(occ > 0)
        points.append(centres[has])
        weights.append(occ[has].astype(np.float64) * v)
        groups[s.name] = slice(n, n + has.size)
        n += has.size
    return EvalPoints(np.concatenate(points), np.concatenate(weights), groups)


def build_problem(
    case: Case,
    target: str,
    cone_end_mm,
    cone_axis,
    toe_direction,
    disc_centre_mm=None,
    disc_normal=None,
) -> GenericElectronProblem:
    """Validate the cone and disc geometry on ``case`` and gather the evaluation points.

    Raises:
        ValueError: naming the ``electron.*`` field at fault (the cone end outside the CT grid,
            a zero axis, a toe along the axis, a central axis that misses the target).
    """
    end = np.asarray(cone_end_mm, np.float64)
    axis = _unit(cone_axis, "electron.cone_axis")
    if not case.grid.contains_mm(end):
        grid = case.grid
        lo = np.asarray(grid.origin_xyz_mm)
        hi = lo + np.asarray(grid.spacing_xyz_mm) * (np.asarray(grid.shape_zyx[::-1]) - 1)
        raise ValueError(
            f"electron.cone_end_mm: {end.tolist()} lies outside the CT volume on the dose grid "
            f"({np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm)"
        )
    toe = np.asarray(toe_direction, np.float64)
    if np.linalg.norm(toe - (toe @ axis) * axis) < 1e-6:
        raise ValueError(
            f"electron.toe_direction: {toe.tolist()} is parallel to electron.cone_axis (it must "
            "have a component across the beam)"
        )
    if disc_centre_mm is not None:
        point = np.asarray(disc_centre_mm, np.float64)
        normal = -axis if disc_normal is None else _unit(disc_normal, "electron.disc_normal")
        rule = "electron.disc_centre_mm"
    else:
        depth = deepest_boundary_mm(case, case.structure(target).occupancy, end, axis)
        if depth is None:
            raise ValueError(
                f"electron.cone_axis: the central axis from electron.cone_end_mm does not cross "
                f"the target {target!r}; give electron.disc_centre_mm"
            )
        point = end + depth * axis
        normal = -axis if disc_normal is None else _unit(disc_normal, "electron.disc_normal")
        rule = f"the deepest boundary of {target!r} on the central axis ({depth:.1f} mm deep)"
    if abs(float(normal @ axis)) < 0.1:
        raise ValueError("electron.disc_normal: nearly perpendicular to the beam axis")
    frame = PatientFrame.from_info(case.info)
    vertical = frame.rotation.T @ axis_from_angles(0.0, 0.0, frame.patient_position)
    ev = _eval_points(case)
    roles = {s.name: s.role for s in case.structures}
    beyond = np.zeros(len(ev.points_mm), bool)
    for name, part in ev.groups.items():
        if roles[name] == "oar":
            beyond[part] = (ev.points_mm[part] - point) @ normal < 0
    return GenericElectronProblem(
        case=case,
        target=target,
        cone_end_mm=end,
        cone_axis=axis,
        toe_direction=toe,
        disc_point_mm=point,
        disc_normal=normal,
        disc_rule=rule,
        vertical=vertical,
        ev=ev,
        beyond_disc=beyond,
        tissue_fraction=case.body_mask(),
        density=case.relative_electron_density(),
    )


def disc_volume_mask(problem: GenericElectronProblem, radius_mm: float, thickness_mm: float):
    """(nz, ny, nx) bool: voxel centres inside the flat cone's disc (module docstring)."""
    pts = problem.case.grid.points_mm()
    centre = _axis_crossing(problem.cone_end_mm, problem.cone_axis, problem)
    rel = pts - centre
    h = rel @ problem.disc_normal
    lateral = rel - h[:, None] * problem.disc_normal
    inside = (h <= 0) & (h >= -thickness_mm) & (np.linalg.norm(lateral, axis=1) <= radius_mm)
    return inside.reshape(problem.case.grid.shape_zyx)


def grid_corners_mm(case: Case) -> np.ndarray:
    """(8, 3) the outer voxel centres' corners of the case grid (mm)."""
    lo = np.asarray(case.grid.origin_xyz_mm)
    hi = lo + np.asarray(case.grid.spacing_xyz_mm) * (np.asarray(case.grid.shape_zyx[::-1]) - 1)
    return np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )


def medium_of(
    problem: GenericElectronProblem, radius_mm: float, thickness_mm: float, max_ray_mm=None
):
    """The case's :class:`VoxelMedium`, the disc's volume counted as water (module docstring);
    ``max_ray_mm``: the longest ray of the cones it will serve (default: the grid's diagonal)."""
    body = problem.tissue_fraction.astype(np.float64)
    rho = problem.density.astype(np.float64)
    disc = disc_volume_mask(problem, radius_mm, thickness_mm)
    body, rho = np.where(disc, 1.0, body), np.where(disc, 1.0, rho)
    grid = problem.case.grid
    return voxel_medium(grid.origin_xyz_mm, grid.spacing_xyz_mm, body, rho, max_ray_mm=max_ray_mm)


def _axis_crossing(end_mm, axis, problem: GenericElectronProblem) -> np.ndarray:
    n = problem.disc_normal
    return end_mm - ((end_mm - problem.disc_point_mm) @ n) / (axis @ n) * axis


def _nan_if_absent(ev: EvalPoints, name: str, fn) -> float:
    part = ev.groups.get(name)
    return float("nan") if part is None else fn(part)


def _metrics(ctx: _Context, dose: np.ndarray) -> dict:
    """Coverage and OAR metrics (absent structures: nan, reported as null)."""
    ev, rx = ctx.ev, ctx.prescription_gy
    t = ev.groups[ctx.target]
    d_t, w_t = dose[t], ev.weights_cm3[t]

    def d2cc(part):
        w = ev.weights_cm3[part]
        return (
            float(dose_at_volume_cm3(dose[part], w, 1.0, D2CC_CM3))
            if w.sum() > D2CC_CM3
            else np.nan
        )

    def mean(part):
        return float((dose[part] * ev.weights_cm3[part]).sum() / ev.weights_cm3[part].sum())

    beyond = dose[ctx.beyond_disc]
    return {
        "target_coverage_percent": 100.0 * float(w_t[d_t >= rx].sum() / w_t.sum()),
        "target_min_gy": float(d_t.min()),
        "max_dose_gy": float(dose.max()),
        "beyond_disc_max_gy": float(beyond.max()) if beyond.size else float("nan"),
        "lung_mean_gy": _nan_if_absent(ev, "lung", mean),
        "rib_D2cc_gy": _nan_if_absent(ev, "rib", d2cc),
        "chest_wall_D2cc_gy": _nan_if_absent(ev, "chest_wall", d2cc),
        "skin_max_gy": _nan_if_absent(ev, "skin", lambda part: float(dose[part].max())),
    }


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
    cos = float(np.clip(np.asarray(cone["axis"]) @ ctx.vertical, -1.0, 1.0))
    tilt = float(np.degrees(np.arccos(cos)))
    row["axis_tilt_deg"] = tilt
    row["axis_tilt_ok"] = bool(tilt <= ctx.max_axis_tilt_deg + 1e-9)
    row["score"] = row_score(row, ctx.prescription_gy, ctx.oar_weight)
    return row


def _batch_function(ctx: _Context):
    """Jitted (points, cones, discs, depths) -> (dose (K, P) Gy, open-beam dose per MU at the
    normalisation point (K,)) for cones sharing one pose (``depths``: its
    :class:`~iortopt.physics.electron.RayDepths`), with MU = D100 / that dose."""
    beam, medium = ctx.beam, ctx.surface

    def batch(points, cones, discs, depths):
        per_mu = jax.vmap(lambda c: reference_dose_per_mu_gy(c, beam, medium))(cones)
        cones = cones._replace(mu=ctx.d100_gy / per_mu)
        dose = catalogue_dose_gy(
            points, cones, beam, depths, discs, ctx.disc_index, ctx.disc_edge_mm, batch_size=8
        )
        return dose, per_mu

    return jax.jit(batch)


def _evaluate(ctx: _Context, cones: list[dict], discs: list[dict]) -> list[dict]:
    """Rows of the nominal placements, in input order: the rays are marched once per pose (per
    bevel), then every energy and diameter of that pose is evaluated on those depths."""
    points = jnp.asarray(ctx.ev.points_mm, ctx.dtype)
    batch = _batch_function(ctx)
    depths_of = jax.jit(lambda pts, cone: ray_depths(pts, cone, ctx.beam, ctx.surface))
    poses: dict[int, list[int]] = {}
    for k, c in enumerate(cones):
        poses.setdefault(c["bevel_index"], []).append(k)
    rows: list[dict | None] = [None] * len(cones)
    for members in poses.values():
        first = stack_cones([cones[members[0]]], [1.0], ctx.dtype)
        depths = depths_of(points, Cone(*(leaf[0] for leaf in first)))
        chunk = min(CHUNK, len(members))
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            n = len(part)
            pad = part + [part[-1]] * (chunk - n)
            dose, per_mu = batch(
                points,
                stack_cones([cones[k] for k in pad], np.ones(chunk), ctx.dtype),
                stack_discs(ctx, [discs[k] for k in pad], ctx.dtype),
                depths,
            )
            dose, per_mu = np.asarray(dose, np.float64), np.asarray(per_mu, np.float64)
            for j, k in enumerate(part):
                mu = ctx.d100_gy / per_mu[j]
                rows[k] = _row(ctx, dose[j], cones[k], discs[k], mu, per_mu[j])
    return rows


def full_grid_dose_gy(ctx: _Context, problem: GenericElectronProblem, cone: Cone, disc: Disc):
    """Dose (nz, ny, nx) float32 at the voxel centres; 0 where the case has no tissue."""
    grid = problem.case.grid
    dose = cone_dose_gy(
        jnp.asarray(grid.points_mm(), ctx.dtype),
        cone,
        ctx.beam,
        ctx.surface,
        disc,
        ctx.disc_index,
        ctx.disc_edge_mm,
    )
    dose = np.asarray(dose, np.float32).reshape(grid.shape_zyx)
    return np.where(problem.tissue_fraction > 0, dose, 0.0).astype(np.float32)


def _grid_metrics(problem: GenericElectronProblem, dose: np.ndarray, rx: float) -> dict:
    """Cross-check metrics from the full grid and the occupancies (absent structures: nan)."""
    case = problem.case
    names = {s.name for s in case.structures}
    v = case.grid.voxel_volume_cm3

    def occ(name):
        return case.structure(name).occupancy

    def have(name, fn):
        return fn(occ(name)) if name in names else float("nan")

    target = occ(problem.target)
    return {
        "target_coverage_percent": 100.0 * volume_at_dose(dose, target, rx),
        f"{problem.target}_cm3": case.structure(problem.target).volume_cm3(case.grid),
        "skin_max_gy": have("skin", lambda o: float(dose[o > 0].max())),
        "rib_D2cc_gy": have("rib", lambda o: float(dose_at_volume_cm3(dose, o, v, D2CC_CM3))),
        "lung_mean_gy": have("lung", lambda o: float((dose * o).sum() / o.sum())),
    }


def _nominal_rows(problem: GenericElectronProblem, beam: ElectronBeam, e_idx, c_idx, b_idx):
    """Cone and disc placements of every catalogue row (module docstring)."""
    return nominal_rows(
        beam,
        e_idx,
        c_idx,
        b_idx,
        problem.cone_end_mm,
        -problem.cone_axis,
        problem.toe_direction,
        lambda end, axis: {
            "centre_mm": _axis_crossing(end, axis, problem),
            "normal": problem.disc_normal,
        },
    )


def plan_generic_case(
    problem: GenericElectronProblem,
    beam: ElectronBeam,
    prescription_gy: float,
    isodose_percent: float,
    energies_mev=None,
    diameters_cm=None,
    bevels_deg=None,
    disc: str = "Al2_Pb4",
    disc_radius_mm: float = 45.0,
    disc_margin_mm: float = 5.0,
    dtype=jnp.float32,
    *,
    max_axis_tilt_deg: float = 30.0,
    oar_weight: float = 0.1,
    disc_edge_mm: float = 0.5,
) -> ElectronPlanResult:
    """Compare the catalogue at its nominal placements, choose (rule of
    :mod:`iortopt.modalities.electron.choice`), and compute the full-grid dose."""
    t_start = time.perf_counter()
    e_idx = [beam.index_of_energy(e) for e in (energies_mev or beam.energies_mev)]
    c_idx = [beam.index_of_diameter(d) for d in (diameters_cm or beam.diameters_cm)]
    b_idx = [beam.index_of_bevel(b) for b in (bevels_deg or beam.bevels)]
    disc_index = beam.index_of_disc(disc)
    thickness = float(beam.disc_thickness_mm[disc_index])
    cones, discs = _nominal_rows(problem, beam, e_idx, c_idx, b_idx)
    corners = grid_corners_mm(problem.case)
    longest = max(
        longest_ray_mm(corners, c["end_mm"], c["axis"], c["toe"], beam.bevels[c["bevel_index"]])
        for c in cones
    )
    ctx = _Context(
        ev=problem.ev,
        beam=beam,
        surface=medium_of(problem, disc_radius_mm, thickness, longest),
        prescription_gy=float(prescription_gy),
        d100_gy=float(prescription_gy) / (isodose_percent / 100.0),
        disc_index=disc_index,
        disc_radius_mm=float(disc_radius_mm),
        disc_thickness_mm=thickness,
        disc_margin_mm=float(disc_margin_mm),
        disc_edge_mm=float(disc_edge_mm),
        max_axis_tilt_deg=float(max_axis_tilt_deg),
        oar_weight=float(oar_weight),
        dtype=dtype,
        target=problem.target,
        vertical=problem.vertical,
        beyond_disc=problem.beyond_disc,
    )
    setup_s = time.perf_counter() - t_start

    t0 = time.perf_counter()
    rows = _evaluate(ctx, cones, discs)
    best, reason, warnings = choose_row(rows, ctx)
    catalogue_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    chosen_row, chosen_cone, chosen_disc = rows[best], cones[best], discs[best]
    cone_final = Cone(*(leaf[0] for leaf in stack_cones([chosen_cone], [chosen_row["mu"]], dtype)))
    disc_final = Disc(*(leaf[0] for leaf in stack_discs(ctx, [chosen_disc], dtype)))
    dose = full_grid_dose_gy(ctx, problem, cone_final, disc_final)
    full_dose_s = time.perf_counter() - t0

    centre = np.asarray(chosen_disc["centre_mm"], np.float64)
    chosen = dict(chosen_row) | {
        "cone_end_mm": np.asarray(chosen_cone["end_mm"]).tolist(),
        "cone_axis": np.asarray(chosen_cone["axis"]).tolist(),
        "cone_toe": np.asarray(chosen_cone["toe"]).tolist(),
        "disc_centre_mm": centre.tolist(),
        "disc_normal": np.asarray(chosen_disc["normal"]).tolist(),
        "disc_depth_mm": float((centre - problem.cone_end_mm) @ problem.cone_axis),
        "reason": reason,
        "full_grid": _grid_metrics(problem, dose, ctx.prescription_gy),
    }
    material = beam.discs[disc_index]
    disc_info = {
        "material": material.name,
        "description": material.description,
        "radius_mm": ctx.disc_radius_mm,
        "thickness_mm": thickness,
        "required_margin_mm": ctx.disc_margin_mm,
        "edge_width_mm": ctx.disc_edge_mm,
        "centre_mm": chosen["disc_centre_mm"],
        "normal": chosen["disc_normal"],
        "depth_below_surface_mm": chosen["disc_depth_mm"],
        "placement_rule": problem.disc_rule,
        "covers_field": chosen_row["disc_covers_field"],
        "margin_mm": chosen_row["disc_margin_mm"],
        "transmission": material.transmission[chosen_cone["energy_index"]],
        "backscatter_percent": material.backscatter_percent[chosen_cone["energy_index"]],
    }
    notes = [
        f"beam {beam.name!r} ({beam.machine or 'machine not named'})",
        f"prescription {prescription_gy:g} Gy to the {isodose_percent:g} % isodose: 100 % = "
        f"{ctx.d100_gy:.2f} Gy at dmax on the central axis (open beam); coverage = % of "
        f"{problem.target} volume receiving >= {prescription_gy:g} Gy",
        f"disc {material.name} ({material.description}), radius {disc_radius_mm:g} mm, in the "
        f"plane of {problem.disc_rule}; required margin over the field {disc_margin_mm:g} mm",
        "tissue model: the CT's body mask and relative electron density; real entry point and "
        "air gap on every ray, water-equivalent depth along the beam axis; the disc's volume "
        "counted as water; cone placement nominal (no joint pose optimisation on this case kind)",
    ]
    notes = plan_notes(notes, beam, warnings, chosen_row, disc_margin_mm)
    timings = {
        "setup_s": setup_s,
        "catalogue_s": catalogue_s,
        "optimise_s": 0.0,
        "full_dose_s": full_dose_s,
        "total_s": time.perf_counter() - t_start,
    }
    return ElectronPlanResult(
        case=problem.case,
        dose_gy=dose,
        chosen=chosen,
        disc=disc_info,
        comparison=rows,
        optimisation={"run": False, "accepted": False},
        timings=timings,
        notes=notes,
        beam_name=beam.name,
        geometry=None,
    )
