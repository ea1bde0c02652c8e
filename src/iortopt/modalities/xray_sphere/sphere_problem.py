"""A 50 kV sphere plan on a generic Case (CT + RTSTRUCT): cavity, fit, target, skin, doses.

    sphere_setting(case, options)  -> iortopt.modalities.xray_sphere.choice.SphereSetting

The case is :class:`iortopt.cases.case.Case` (structures with roles, HU, ``body_mask()``), in
its own coordinates (patient LPS mm for an imported study). Rules, for an applicator of radius a
centred at c:

- Cavity: the structure(s) with role ``cavity`` (their union), or, when there is none, the
  sphere of ``cavity_radius_mm`` about ``centre_mm``. The applicator centre is ``centre_mm`` if
  given, else the centroid of the cavity occupancy (its voxel centres weighted by occupancy).
- Cavity wall: along :data:`N_WALL_DIRECTIONS` nearly uniform directions u from the centre, the
  first radius at which the cavity occupancy, interpolated trilinearly between voxel centres,
  falls below 0.5 (sampled every quarter of the smallest voxel spacing, the crossing
  interpolated linearly), i.e. the occupancy's 0.5-isosurface seen from the centre. A ray that
  leaves the grid first, or a centre outside the cavity, is an error.
- Fit (as :mod:`iortopt.cases.breast` documents for the phantom): the tissue conforms to the
  applicator while every wall point lies within ``fit_tolerance_mm`` of its surface radially
  from c, ``wall_gap = max over the wall of | |w - c| - a | <= fit_tolerance_mm``.
- Tissue: the body (``Case.body_mask()``: a ``body`` ROI, else the HU threshold) outside the
  ball |p - c| <= a. The cavity outside the ball counts as tissue (conformed onto the sphere).
- Target: the prescription structure when it is a mapped ROI with role ``target`` (minus the
  ball); otherwise ``PTV_shell``-like, named as the prescription structure and rebuilt per
  applicator: the tissue with 0 < |p - c| - a <= ``target_thickness_mm``, clipped to the body
  (occupancy = shell fraction of the voxel's sub-samples x body fraction).
- Other structures: the mapped ROIs minus the ball, min(occupancy, 1 - ball fraction) per voxel
  (a structure and the ball do not overlap, so a voxel half in the ball keeps at most half);
  the cavity is kept as drawn. Skin, chest wall, ribs and lung for the comparison table are the
  structures named ``skin``, ``chest_wall``, ``rib`` and ``lung``; a missing one gets None in the
  table and adds nothing to the score.
- Skin distance: the smallest |s - c| - a over the body surface s, the 0.5-isosurface of the
  body fraction (crossings between neighbouring voxels, interpolated linearly); negative when the
  sphere crosses it. With no body surface on the grid it is measured to the grid's outer faces
  (a lower bound; noted).
- Evaluation points (catalogue comparison and relaxation): voxel centres. The tissue group: body
  voxels within reach of the cavity (max radius + target thickness + max shift + one voxel
  diagonal), weighted by body fraction x voxel volume (or the target ROI's voxels, weighted by
  its occupancy), less those within 1 mm of the centre (inside every sphere); each OAR: its
  voxels weighted by occupancy x voxel volume.
- Dose: the sphere engine on the voxel centres (tissue sub-sample mean in voxels cut by the
  applicator surface, as for the phantom), 0 in the ball and 0 where the body fraction is 0 (air
  outside the patient). Partly-tissue voxels at the skin keep the full dose: their tissue part is
  what their structures' occupancies weigh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from iortopt.cases.case import Case, Structure
from iortopt.errors import ConfigError
from iortopt.evaluation.dvh import dose_at_volume_cm3, volume_at_dose
from iortopt.modalities.xray_sphere.choice import (
    OAR_NAMES,
    EvalPoints,
    SphereSetting,
    full_grid_dose_gy,
)
from iortopt.modalities.xray_sphere.scoring import D2CC_CM3

#: Directions sampled on the cavity wall (Fibonacci sphere).
N_WALL_DIRECTIONS = 2000
#: Occupancy level of the cavity wall and of the body surface.
SURFACE_LEVEL = 0.5
#: Body surface points further than this beyond the reach of the cavity are left out of the
#: traced (relaxation) skin distance; the catalogue's skin distance uses every point.
SKIN_SEARCH_MARGIN_MM = 30.0
#: Tissue evaluation points this close to the cavity centre are left out (see
#: :func:`evaluation_points`); every catalogue sphere is larger.
CENTRE_EXCLUSION_MM = 1.0


@dataclass(frozen=True)
class SphereOptions:
    """The ``[xray]`` settings of a plan on a generic case (lengths in mm)."""

    target_name: str = "PTV_shell"
    target_thickness_mm: float = 10.0
    fit_tolerance_mm: float = 5.0
    centre_mm: tuple[float, float, float] | None = None
    cavity_radius_mm: float | None = None
    supersampling: int = 3  # sub-samples per axis: shell, ball and surface-band dose


def sphere_directions(n: int) -> np.ndarray:
    """(n, 3) nearly uniform unit vectors (golden-angle spiral)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


@dataclass(frozen=True, eq=False)
class CavityGeometry:
    """Cavity, body surface and fit rule of a generic case (the geometry of a SphereSetting)."""

    cavity_centre_mm: np.ndarray  # (3,) the default applicator centre
    cavity_wall_mm: np.ndarray  # (N, 3)
    target_thickness_mm: float  # inf when the target is a mapped ROI (no shell)
    fit_tolerance_mm: float
    body_surface_mm: np.ndarray  # (S, 3) points of the body surface
    near_surface_mm: np.ndarray  # (S', 3) those near the cavity (relaxation)
    grid_low_mm: np.ndarray  # (3,) outer faces of the grid
    grid_high_mm: np.ndarray

    def skin_distance_mm(self, radius_mm, centre_mm) -> float:
        """Applicator surface to the body surface (mm; negative: the sphere crosses it)."""
        c = np.asarray(centre_mm, np.float64)
        if len(self.body_surface_mm):
            return float(np.linalg.norm(self.body_surface_mm - c, axis=-1).min() - radius_mm)
        faces = np.concatenate([c - self.grid_low_mm, self.grid_high_mm - c])
        return float(faces.min() - radius_mm)

    def traced_skin_distance_mm(self, centre, radius):
        """:meth:`skin_distance_mm` in jax (the relaxation's constraint)."""
        if not len(self.near_surface_mm):
            return jnp.asarray(1e3, centre.dtype)
        s = jnp.asarray(self.near_surface_mm, centre.dtype)
        return jnp.min(jnp.sqrt(jnp.sum(jnp.square(s - centre), axis=-1) + 1e-9)) - radius

    def wall_gap_mm(self, radius_mm, centre_mm) -> float:
        """Largest radial distance (mm) between the cavity wall and the applicator surface."""
        distance = np.linalg.norm(self.cavity_wall_mm - np.asarray(centre_mm, float), axis=-1)
        return float(np.abs(distance - radius_mm).max())


def _occupancy_centroid_mm(case: Case, occupancy: np.ndarray) -> np.ndarray:
    w = occupancy.reshape(-1).astype(np.float64)
    return (case.grid.points_mm() * w[:, None]).sum(axis=0) / w.sum()


def wall_from_occupancy(case: Case, occupancy: np.ndarray, centre_mm, where: str) -> np.ndarray:
    """(N, 3) cavity wall points seen from ``centre_mm`` (module docstring).

    Raises:
        ConfigError: the centre is not inside the cavity, or the cavity reaches the grid edge.
    """
    grid = case.grid
    centre = np.asarray(centre_mm, np.float64)
    step = 0.25 * float(min(grid.spacing_xyz_mm))
    # Rays need reach no further than the farthest corner of the cavity's bounding box.
    k, j, i = np.nonzero(occupancy > 0)
    corners = grid.index_to_mm(np.array([[k.min(), j.min(), i.min()], [k.max(), j.max(), i.max()]]))
    reach = np.linalg.norm(np.abs(corners - centre).max(axis=0)) + 2.0 * max(grid.spacing_xyz_mm)
    radii = np.arange(0.0, float(reach) + step, step)
    directions = sphere_directions(N_WALL_DIRECTIONS)
    points = centre + directions[:, None, :] * radii[None, :, None]  # (N, R, 3)
    index = grid.mm_to_index(points.reshape(-1, 3))
    values = ndimage.map_coordinates(occupancy, index.T, order=1, mode="constant", cval=-1.0)
    values = values.reshape(len(directions), len(radii))
    if values[0, 0] < SURFACE_LEVEL:
        raise ConfigError(
            f"{where}: the applicator centre {np.round(centre, 1).tolist()} mm is not inside the "
            "cavity (occupancy < 0.5 there); give xray.centre_mm inside it"
        )
    below = values < SURFACE_LEVEL
    first = np.argmax(below, axis=1)
    if np.any(values[np.arange(len(directions)), first] < 0.0):
        raise ConfigError(
            f"{where}: the cavity reaches the edge of the dose grid (crop margin or CT too "
            "small); its wall cannot be measured"
        )
    v0 = values[np.arange(len(directions)), first - 1]
    v1 = values[np.arange(len(directions)), first]
    radius = radii[first - 1] + step * (v0 - SURFACE_LEVEL) / np.maximum(v0 - v1, 1e-9)
    return centre + directions * radius[:, None]


def body_surface_mm(case: Case, body: np.ndarray) -> np.ndarray:
    """(S, 3) points where the body fraction crosses 0.5 between neighbouring voxel centres."""
    points = case.grid.points_mm().reshape(*case.grid.shape_zyx, 3)
    found = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ba, bb = body[tuple(a)], body[tuple(b)]
        cross = (ba >= SURFACE_LEVEL) != (bb >= SURFACE_LEVEL)
        if not cross.any():
            continue
        fa, fb = ba[cross], bb[cross]
        t = (fa - SURFACE_LEVEL) / (fa - fb)
        pa, pb = points[tuple(a)][cross], points[tuple(b)][cross]
        found.append(pa + t[:, None] * (pb - pa))
    return np.concatenate(found) if found else np.zeros((0, 3))


@dataclass(frozen=True, eq=False)
class SphereProblem:
    """A generic case prepared for sphere plans (see the module docstring)."""

    case: Case
    options: SphereOptions
    geometry: CavityGeometry
    body: np.ndarray  # (nz, ny, nx) body fraction
    target_is_roi: bool
    notes: tuple[str, ...]

    def structures_for(self, radius_mm: float, centre_mm) -> tuple[Structure, ...]:
        """The case's structures for an applicator (target first; module docstring)."""
        ball, shell = self._ball_and_shell(radius_mm, centre_mm)
        keep = 1.0 - ball
        out = []
        if not self.target_is_roi:
            occupancy = (shell * self.body).astype(np.float32)
            out.append(Structure(self.options.target_name, "target", occupancy))
        for s in self.case.structures:
            if s.role == "cavity":
                out.append(s)
            else:
                occupancy = np.minimum(s.occupancy, keep).astype(np.float32)
                out.append(Structure(s.name, s.role, occupancy))
        if self.target_is_roi:
            out.sort(key=lambda s: s.name != self.options.target_name)
        return tuple(out)

    def case_for(self, radius_mm: float, centre_mm) -> Case:
        c = np.asarray(centre_mm, float)
        info = dict(self.case.info)
        info["applicator"] = {
            "radius_mm": float(radius_mm),
            "centre_mm": c.tolist(),
            "skin_distance_mm": self.geometry.skin_distance_mm(radius_mm, c),
            "wall_gap_mm": self.geometry.wall_gap_mm(radius_mm, c),
        }
        return Case(
            self.case.name,
            self.case.grid,
            self.structures_for(radius_mm, c),
            info,
            hu=self.case.hu,
            hu_calibration=self.case.hu_calibration,
        )

    def _ball_and_shell(self, radius_mm: float, centre_mm) -> tuple[np.ndarray, np.ndarray]:
        """Fractions (nz, ny, nx) of each voxel's sub-samples in the ball and in the shell
        0 < depth <= target thickness (computed in the box around the sphere only)."""
        grid = self.case.grid
        c = np.asarray(centre_mm, np.float64)
        thickness = 0.0 if self.target_is_roi else self.options.target_thickness_mm
        reach = float(radius_mm) + thickness + float(max(grid.spacing_xyz_mm))
        lo = np.floor(grid.mm_to_index((c - reach)[None])[0]).astype(int)
        hi = np.ceil(grid.mm_to_index((c + reach)[None])[0]).astype(int) + 1
        shape = np.asarray(grid.shape_zyx)
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)  # (k, j, i) order
        ball = np.zeros(grid.shape_zyx, np.float32)
        shell = np.zeros(grid.shape_zyx, np.float32)
        if np.any(hi <= lo):
            return ball, shell
        n = self.options.supersampling
        offsets = (np.arange(n) + 0.5) / n - 0.5
        axes = [grid.axis_mm(a) for a in "xyz"]
        sx, sy, sz = grid.spacing_xyz_mm
        z0 = axes[2][lo[0] : hi[0]][:, None, None]
        y0 = axes[1][lo[1] : hi[1]][None, :, None]
        x0 = axes[0][lo[2] : hi[2]][None, None, :]
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        b = np.zeros(tuple(hi - lo), np.float32)
        t = np.zeros(tuple(hi - lo), np.float32)
        for oz in offsets:
            for oy in offsets:
                for ox in offsets:
                    d = np.sqrt(
                        (x0 + ox * sx - c[0]) ** 2
                        + (y0 + oy * sy - c[1]) ** 2
                        + (z0 + oz * sz - c[2]) ** 2
                    )
                    depth = d - radius_mm
                    b += depth <= 0
                    t += (depth > 0) & (depth <= thickness)
        ball[box] = b / n**3
        shell[box] = t / n**3
        return ball, shell


def _cavity(case: Case, options: SphereOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """(centre (3,), wall (N, 3), description) of the case's cavity."""
    cavities = case.cavities
    if cavities:
        if options.cavity_radius_mm is not None:
            raise ConfigError(
                f"xray.cavity_radius_mm: the cavity is the ROI {cavities[0].name!r} (role "
                '"cavity"); remove cavity_radius_mm (or the ROI\'s cavity role)'
            )
        occupancy = np.maximum.reduce([s.occupancy for s in cavities]).astype(np.float32)
        names = "+".join(s.name for s in cavities)
        where = "xray.centre_mm" if options.centre_mm is not None else f"cavity ROI {names!r}"
        if options.centre_mm is not None:
            centre = np.asarray(options.centre_mm, float)
        else:
            centre = _occupancy_centroid_mm(case, occupancy)
        if not case.grid.contains_mm(centre, margin_voxels=0.5):
            raise ConfigError(f"{where}: the centre {centre.tolist()} mm is outside the dose grid")
        wall = wall_from_occupancy(case, occupancy, centre, where)
        return centre, wall, f"cavity ROI {names!r} (wall: its 0.5-isosurface)"
    if options.centre_mm is None or options.cavity_radius_mm is None:
        raise ConfigError(
            'xray: no ROI has role "cavity"; give one (case.dicom.structures) or xray.centre_mm '
            "and xray.cavity_radius_mm"
        )
    centre = np.asarray(options.centre_mm, float)
    radius = float(options.cavity_radius_mm)
    grid = case.grid
    low = np.asarray(grid.origin_xyz_mm) - 0.5 * np.asarray(grid.spacing_xyz_mm)
    high = low + np.asarray(grid.shape_zyx[::-1]) * np.asarray(grid.spacing_xyz_mm)
    if np.any(centre - radius < low) or np.any(centre + radius > high):
        raise ConfigError(
            f"xray.centre_mm / xray.cavity_radius_mm: the cavity (centre {centre.tolist()} mm, "
            f"radius {radius:g} mm) is not inside the dose grid / CT "
            f"({np.round(low, 1).tolist()} to {np.round(high, 1).tolist()} mm)"
        )
    wall = centre + radius * sphere_directions(N_WALL_DIRECTIONS)
    return centre, wall, f"spherical cavity of radius {radius:g} mm (xray.cavity_radius_mm)"


def sphere_problem(case: Case, options: SphereOptions) -> SphereProblem:
    """The cavity, body surface and target rule of ``case`` (module docstring).

    Raises:
        ConfigError: no cavity, a centre outside the cavity or the grid, a cavity outside the
            grid, a target named like a non-target structure.
    """
    centre, wall, cavity_note = _cavity(case, options)
    names = {s.name: s for s in case.structures}
    target = names.get(options.target_name)
    if target is not None and target.role != "target":
        raise ConfigError(
            f"prescription.structure {options.target_name!r} is the ROI of role {target.role!r}; "
            'map it with role "target" or name the tissue-shell target differently'
        )
    target_is_roi = target is not None
    body = case.body_mask()
    surface = body_surface_mm(case, body)
    grid = case.grid
    low = np.asarray(grid.origin_xyz_mm) - 0.5 * np.asarray(grid.spacing_xyz_mm)
    high = low + np.asarray(grid.shape_zyx[::-1]) * np.asarray(grid.spacing_xyz_mm)
    cavity_reach = float(np.linalg.norm(wall - centre, axis=-1).max())
    near = surface[
        np.linalg.norm(surface - centre, axis=-1)
        <= cavity_reach + options.fit_tolerance_mm + SKIN_SEARCH_MARGIN_MM
    ]
    geometry = CavityGeometry(
        cavity_centre_mm=centre,
        cavity_wall_mm=wall,
        target_thickness_mm=math.inf if target_is_roi else float(options.target_thickness_mm),
        fit_tolerance_mm=float(options.fit_tolerance_mm),
        body_surface_mm=surface,
        near_surface_mm=near,
        grid_low_mm=low,
        grid_high_mm=high,
    )
    body_from = "the body ROI" if any(s.role == "body" for s in case.structures) else "the HU"
    notes = [
        f"tissue model: rigid anatomy, tissue conforming to the applicator; {cavity_note}; body "
        f"from {body_from}",
        (
            f"target: the ROI {options.target_name!r}"
            if target_is_roi
            else f"target {options.target_name!r}: {options.target_thickness_mm:g} mm tissue shell "
            "around the applicator, clipped to the body"
        ),
    ]
    if not len(surface):
        notes.append(
            "no body surface on the dose grid: skin distance measured to the grid's outer faces "
            "(a lower bound)"
        )
    missing = [n for n in OAR_NAMES if n not in names]
    if missing:
        notes.append(f"no structure {', '.join(missing)}: those comparison metrics are null")
    return SphereProblem(case, options, geometry, body, target_is_roi, tuple(notes))


def evaluation_points(problem: SphereProblem, max_radius_mm: float, max_shift_mm: float):
    """Voxel-centre evaluation points (module docstring)."""
    case, g = problem.case, problem.geometry
    grid = case.grid
    pts = grid.points_mm()
    voxel_cm3 = grid.voxel_volume_cm3
    distance = np.linalg.norm(pts - g.cavity_centre_mm, axis=-1)
    # Points next to the centre are inside every sphere, and the relaxation's soft target
    # membership (a distance to the centre) has no gradient at the centre itself.
    off_centre = distance > CENTRE_EXCLUSION_MM
    if problem.target_is_roi:
        w = case.structure(problem.options.target_name).occupancy.reshape(-1)
        tissue = np.flatnonzero((w > 0) & off_centre)
    else:
        w = problem.body.reshape(-1)
        reach = (
            max_radius_mm
            + problem.options.target_thickness_mm
            + max_shift_mm
            + float(np.linalg.norm(grid.spacing_xyz_mm))
        )
        tissue = np.flatnonzero((w > 0) & (distance <= reach) & off_centre)
    points, weights = [pts[tissue]], [w[tissue] * voxel_cm3]
    groups = {"breast": np.arange(len(tissue))}
    n = len(tissue)
    names = {s.name: s for s in case.structures}
    for name in OAR_NAMES:
        idx = np.zeros(0, int)
        if name in names:
            occ = names[name].occupancy.reshape(-1)
            idx = np.flatnonzero(occ > 0)
            points.append(pts[idx])
            weights.append(occ[idx] * voxel_cm3)
        groups[name] = n + np.arange(len(idx))
        n += len(idx)
    absent = frozenset(name for name in OAR_NAMES if name not in names)
    return EvalPoints(
        np.concatenate(points).astype(np.float64),
        np.concatenate(weights).astype(np.float64),
        groups,
        absent,
    )


def grid_metrics(problem: SphereProblem, case: Case, dose: np.ndarray, coverage_dose: float):
    """Full-grid cross-check metrics; None for an absent structure."""
    v = case.grid.voxel_volume_cm3
    names = {s.name: s for s in case.structures}
    target = names[problem.options.target_name]

    def occ(name):
        return names[name].occupancy if name in names else None

    def d2cc(name):
        o = occ(name)
        return None if o is None else float(dose_at_volume_cm3(dose, o, v, D2CC_CM3))

    skin, lung = occ("skin"), occ("lung")
    return {
        "target_coverage_percent": 100.0 * volume_at_dose(dose, target.occupancy, coverage_dose),
        f"{target.name}_cm3": target.volume_cm3(case.grid),
        "skin_max_gy": None if skin is None else float(dose[skin > 0].max()),
        "chest_wall_D2cc_gy": d2cc("chest_wall"),
        "rib_D2cc_gy": d2cc("rib"),
        "lung_mean_gy": None if lung is None else float((dose * lung).sum() / lung.sum()),
    }


def sphere_setting(problem: SphereProblem) -> SphereSetting:
    """``problem`` as the case side of
    :func:`iortopt.modalities.xray_sphere.choice.plan_spheres`."""

    def final_case(radius_mm, centre_mm, time_min, beam, shaft_axis, anisotropy, dtype):
        case = problem.case_for(radius_mm, centre_mm)
        dose = full_grid_dose_gy(
            case, centre_mm, radius_mm, time_min, beam, problem.options.supersampling,
            shaft_axis, anisotropy, dtype,
        )  # fmt: skip
        dose = np.where(problem.body > 0, dose, 0.0).astype(np.float32)
        return case, dose, problem.geometry

    return SphereSetting(
        geometry=problem.geometry,
        evaluation_points=lambda r, shift: evaluation_points(problem, r, shift),
        final_case=final_case,
        grid_metrics=lambda case, dose, cov: grid_metrics(problem, case, dose, cov),
        tissue_note="; ".join(problem.notes),
        memory_sizes=lambda max_radius_mm: memory_sizes(problem, max_radius_mm),
    )


def memory_sizes(problem: SphereProblem, max_radius_mm: float) -> dict:
    """The memory-estimate sizes of a plan on ``problem`` whose largest applicator has radius
    ``max_radius_mm``: the case grid and the evaluation points (3 mm shift)."""
    grid = problem.case.grid
    points = evaluation_points(problem, max_radius_mm, 3.0)
    return {
        "n_voxels": grid.n_voxels,
        "n_points": len(points.points_mm),
        "supersampling": problem.options.supersampling,
        "spacing_mm": float(min(grid.spacing_xyz_mm)),
    }
