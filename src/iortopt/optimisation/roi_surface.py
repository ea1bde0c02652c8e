"""A plane or cylinder fitted to the part of a structure's surface that faces the applicator.

Used for shields with ``surface = "roi"`` (:mod:`iortopt.optimisation.shield_placement`): any
case kind, phantom or DICOM, as long as the structure is on the dose grid.

1. **Visible face** (:func:`visible_face_mm`): rays from each applicator point (at most
   :data:`MAX_RAY_ORIGINS` of them, evenly chosen) in :data:`N_RAY_DIRECTIONS` directions; on
   each ray the structure's occupancy is sampled (trilinear) every :data:`RAY_STEP_VOXELS` voxel
   and the first crossing of the 0.5 level is the ray's face point (linear between samples: the
   nearest point of the structure along that ray). A point is kept if the structure's outward
   normal there (minus the occupancy gradient) faces the ray's origin, cosine >=
   :data:`MIN_FACING_COS` (grazing hits at the rim of the visible part are dropped). An
   applicator point inside the structure casts no rays.
2. **Neighbourhood**: only face points within ``fit_radius_mm`` of the face point nearest to the
   applicator centre (the mean of the applicator points) are fitted, so a curved or large
   structure is fitted where the shield can lie.
3. **Fit** (least squares, one trimmed refit without points farther than
   :data:`TRIM_MAD` robust sigmas, at least half a voxel, from the first fit): a plane (PCA: the
   normal is the direction of least spread) or a cylinder (axis, point on the axis and radius,
   :func:`fit_cylinder`).

The result (:class:`FaceFit`) is the fitted face itself, oriented toward the applicator centre:
the plane's normal points to it, the cylinder's reference radial direction points from the axis
toward it, and the origin is the foot of the centre on the face (plane) or on the axis
(cylinder). Where a shield's slab goes relative to this face is the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from iortopt.cases.case import Case
from iortopt.errors import ConfigError
from iortopt.grid import Grid

FITS = ("plane", "cylinder")
#: Ray directions per applicator point (a Fibonacci sphere).
N_RAY_DIRECTIONS = 2000
#: At most this many applicator points cast rays (evenly spaced along the given list).
MAX_RAY_ORIGINS = 8
#: Ray sampling step in voxels (of the smallest spacing).
RAY_STEP_VOXELS = 0.5
#: A face point is kept if its outward normal and the direction to the ray origin make an angle
#: whose cosine is at least this (about 73 degrees).
MIN_FACING_COS = 0.3
#: Fewest face points a fit accepts.
MIN_FACE_POINTS = {"plane": 12, "cylinder": 30}
#: Trimming of the refit: residuals beyond this many robust sigmas (1.4826 MAD) are dropped.
TRIM_MAD = 3.0
#: A fitted cylinder wider than this (mm) is a plane: refused, with that advice.
MAX_CYLINDER_RADIUS_MM = 5000.0
#: The occupancy level of the structure's surface.
SURFACE_LEVEL = 0.5


@dataclass(frozen=True)
class FaceFit:
    """A fitted face in case mm.

    ``kind`` "plane": ``origin_mm`` the foot of the applicator centre on the plane, ``normal``
    the unit normal toward the centre, ``axis_u`` a unit in-plane axis, ``radius_mm`` 0.
    ``kind`` "cylinder": ``origin_mm`` the foot of the centre on the axis, ``axis_u`` the unit
    axis direction, ``normal`` the unit radial direction from the axis toward the centre,
    ``radius_mm`` the face's radius; ``applicator_outside`` whether the centre is farther from
    the axis than the face (a convex face seen from the applicator).
    ``rms_mm``: root-mean-square distance of the fitted points from the face; ``n_points``.
    """

    kind: str
    origin_mm: np.ndarray
    normal: np.ndarray
    axis_u: np.ndarray
    radius_mm: float
    applicator_outside: bool
    rms_mm: float
    n_points: int


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (golden-angle spiral)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def _cropped(occupancy: np.ndarray, grid: Grid):
    """The occupancy cropped to its bounding box plus two voxels, and the crop's origin (x, y,
    z mm); None if the structure is empty."""
    nonzero = np.argwhere(occupancy > 0)
    if nonzero.size == 0:
        return None
    lo = np.maximum(nonzero.min(0) - 2, 0)
    hi = np.minimum(nonzero.max(0) + 3, occupancy.shape)
    crop = occupancy[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    origin = np.asarray(grid.origin_xyz_mm, np.float64) + lo[::-1] * np.asarray(
        grid.spacing_xyz_mm, np.float64
    )
    return crop, origin


def _sample(values: np.ndarray, origin_xyz, spacing_xyz, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear sample of a (nz, ny, nx) map at points (..., 3) mm; 0 outside."""
    idx = (points_mm - origin_xyz) / spacing_xyz
    coords = [idx[..., 2].ravel(), idx[..., 1].ravel(), idx[..., 0].ravel()]
    out = ndimage.map_coordinates(values, coords, order=1, mode="constant", cval=0.0)
    return out.reshape(points_mm.shape[:-1])


def _gradient(values, origin_xyz, spacing_xyz, points_mm) -> np.ndarray:
    """(K, 3) gradient (per mm) of the trilinear map at points (K, 3), central differences of
    half a voxel (only at the points: no gradient volume is built)."""
    columns = []
    for k in range(3):
        h = np.zeros(3)
        h[k] = 0.5 * spacing_xyz[k]
        ahead = _sample(values, origin_xyz, spacing_xyz, points_mm + h)
        behind = _sample(values, origin_xyz, spacing_xyz, points_mm - h)
        columns.append((ahead - behind) / (2.0 * h[k]))
    return np.stack(columns, axis=1).astype(np.float64)


def visible_face_mm(
    occupancy: np.ndarray, grid: Grid, origins_mm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points (K, 3) mm of the structure's surface seen from the ray origins (module
    docstring, step 1) and the unit outward normals (K, 3) there. Empty arrays if none."""
    cropped = _cropped(occupancy, grid)
    if cropped is None:
        return np.zeros((0, 3)), np.zeros((0, 3))
    occ, crop_origin = cropped
    spacing = np.asarray(grid.spacing_xyz_mm, np.float64)
    step = RAY_STEP_VOXELS * float(spacing.min())
    corners = (
        crop_origin
        + np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        * (np.asarray(occ.shape[::-1]) - 1)
        * spacing
    )
    directions = fibonacci_sphere(N_RAY_DIRECTIONS)
    points, normals = [], []
    for origin in np.asarray(origins_mm, np.float64).reshape(-1, 3):
        if _sample(occ, crop_origin, spacing, origin[None])[0] >= SURFACE_LEVEL:
            continue  # inside the structure: sees no face
        reach = float(np.linalg.norm(corners - origin, axis=1).max()) + step
        t = np.arange(0.0, reach + step, step)
        samples = _sample(
            occ, crop_origin, spacing, origin + t[None, :, None] * directions[:, None]
        )
        inside = samples >= SURFACE_LEVEL
        hit = inside.any(axis=1)
        first = np.argmax(inside, axis=1)[hit]
        before, after = samples[hit, first - 1], samples[hit, first]
        frac = (SURFACE_LEVEL - before) / np.maximum(after - before, 1e-12)
        dist = t[first - 1] + frac * step
        p = origin + dist[:, None] * directions[hit]
        g = _gradient(occ, crop_origin, spacing, p)
        g_norm = np.linalg.norm(g, axis=1)
        outward = -g / np.maximum(g_norm, 1e-12)[:, None]
        facing = np.einsum("ij,ij->i", outward, -directions[hit])
        keep = (g_norm > 0) & (facing >= MIN_FACING_COS)
        points.append(p[keep])
        normals.append(outward[keep])
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(points), np.concatenate(normals)


def fit_plane(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane through points (K, 3): (centroid, unit normal; sign arbitrary)."""
    centroid = points_mm.mean(axis=0)
    _, _, vt = np.linalg.svd(points_mm - centroid, full_matrices=False)
    return centroid, vt[-1]


def _plane_residuals(points_mm, centroid, normal) -> np.ndarray:
    return (points_mm - centroid) @ normal


def _circle_fit(xy: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic (Kasa) circle through 2-D points (K, 2): (centre, radius)."""
    a = np.column_stack([2 * xy, np.ones(len(xy))])
    b = (xy * xy).sum(axis=1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:2]
    return centre, float(np.sqrt(max(sol[2] + centre @ centre, 0.0)))


def _cylinder_residuals(params, points_mm) -> np.ndarray:
    point, axis, radius = params[:3], params[3:6], params[6]
    axis = axis / np.linalg.norm(axis)
    rel = points_mm - point
    perp = rel - np.outer(rel @ axis, axis)
    return np.linalg.norm(perp, axis=1) - radius


def fit_cylinder(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares cylinder through points (K, 3): (a point on the axis, unit axis, radius).

    Start: each of the two in-plane principal directions of the points as the axis, a circle fit
    to the points projected across it; both refined (all seven parameters, Gauss-Newton /
    trust region) and the one with the smaller residual kept.
    """
    centroid = points_mm.mean(axis=0)
    _, _, vt = np.linalg.svd(points_mm - centroid, full_matrices=False)
    best = None
    for axis in (vt[0], vt[1]):
        e1 = vt[2]
        e2 = np.cross(axis, e1)
        rel = points_mm - centroid
        centre2, radius = _circle_fit(np.column_stack([rel @ e1, rel @ e2]))
        start = np.concatenate([centroid + centre2[0] * e1 + centre2[1] * e2, axis, [radius]])
        sol = optimize.least_squares(_cylinder_residuals, start, args=(points_mm,), method="lm")
        cost = float(np.mean(sol.fun**2))
        if best is None or cost < best[0]:
            best = (cost, sol.x)
    params = best[1]
    axis = params[3:6] / np.linalg.norm(params[3:6])
    point = params[:3] - ((params[:3] - centroid) @ axis) * axis  # the foot of the centroid
    return point, axis, abs(float(params[6]))


def _trim(residuals: np.ndarray, min_spacing_mm: float) -> np.ndarray:
    """Inliers: |residual| within TRIM_MAD robust sigmas (at least half a voxel)."""
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    limit = max(TRIM_MAD * 1.4826 * mad, 0.5 * min_spacing_mm)
    return np.abs(residuals) <= limit


def _in_plane_axis(normal: np.ndarray, hint) -> np.ndarray:
    """``hint`` (default patient x) projected into the plane, else the first of x, y, z that is
    not within 25 degrees of the normal."""
    candidates = [] if hint is None else [np.asarray(hint, np.float64)]
    candidates += list(np.eye(3))
    for c in candidates:
        c = c / np.linalg.norm(c)
        if abs(float(c @ normal)) < 0.9:
            u = c - (c @ normal) * normal
            return u / np.linalg.norm(u)
    raise AssertionError("no in-plane axis")  # x, y, z cannot all be near one normal


def fit_face(
    case: Case,
    roi: str,
    applicator_points_mm,
    fit: str = "plane",
    *,
    fit_radius_mm: float | None = None,
    axis_hint=None,
    where: str = "roi",
) -> FaceFit:
    """Fit a plane or cylinder to the face of structure ``roi`` that the applicator sees.

    Args:
        case: any case; ``roi`` is one of its structures (planning name).
        applicator_points_mm: (3,) or (K, 3) applicator points (dwell positions, a sphere's
            centre) in case mm; their mean is the applicator centre.
        fit: "plane" or "cylinder".
        fit_radius_mm: fit only face points within this distance of the face point nearest the
            centre (None: every visible point).
        axis_hint: preferred u direction: projected into a plane; a cylinder's axis is turned
            to point along it (default patient x).
        where: prefix of error messages (the config field).
    Raises:
        ConfigError: the structure is missing or empty, no part of it faces the applicator, too
            few points to fit, or the applicator centre lies on the fitted cylinder's axis.
    """
    if fit not in FITS:
        raise ConfigError(f"{where}: fit must be one of {FITS}, got {fit!r}")
    names = [s.name for s in case.structures]
    if roi not in names:
        raise ConfigError(f"{where}: no structure {roi!r} in the case; have {sorted(names)}")
    occupancy = case.structure(roi).occupancy
    if not np.any(occupancy >= SURFACE_LEVEL):
        raise ConfigError(f"{where}: structure {roi!r} is empty on the dose grid")
    points = np.asarray(applicator_points_mm, np.float64).reshape(-1, 3)
    if len(points) == 0 or not np.all(np.isfinite(points)):
        raise ConfigError(f"{where}: no (finite) applicator point to fit {roi!r} from")
    centre = points.mean(axis=0)
    if len(points) > MAX_RAY_ORIGINS:
        points = points[np.linspace(0, len(points) - 1, MAX_RAY_ORIGINS).round().astype(int)]
    face, _ = visible_face_mm(occupancy, case.grid, points)
    if fit_radius_mm is not None and len(face):
        nearest = face[np.argmin(np.linalg.norm(face - centre, axis=1))]
        face = face[np.linalg.norm(face - nearest, axis=1) <= fit_radius_mm]
    if len(face) < MIN_FACE_POINTS[fit]:
        raise ConfigError(
            f"{where}: no part of structure {roi!r} faces the applicator ({len(face)} surface "
            f"points seen from it, a {fit} fit needs {MIN_FACE_POINTS[fit]}): is the applicator "
            f"inside it or on its far side, or fit_radius_mm too small?"
        )
    min_spacing = float(min(case.grid.spacing_xyz_mm))
    if fit == "plane":
        return _plane_face(face, centre, min_spacing, axis_hint, where, roi)
    return _cylinder_face(face, centre, min_spacing, axis_hint, where, roi)


def _plane_face(face, centre, min_spacing, axis_hint, where, roi) -> FaceFit:
    centroid, normal = fit_plane(face)
    keep = _trim(_plane_residuals(face, centroid, normal), min_spacing)
    if keep.sum() >= MIN_FACE_POINTS["plane"]:
        face = face[keep]
        centroid, normal = fit_plane(face)
    height = float((centre - centroid) @ normal)
    if height < 0:
        normal, height = -normal, -height
    if height < 1e-6:
        raise ConfigError(f"{where}: the applicator centre lies on the plane fitted to {roi!r}")
    rms = float(np.sqrt(np.mean(_plane_residuals(face, centroid, normal) ** 2)))
    return FaceFit(
        "plane",
        centre - height * normal,
        normal,
        _in_plane_axis(normal, axis_hint),
        0.0,
        True,
        rms,
        len(face),
    )


def _cylinder_face(face, centre, min_spacing, axis_hint, where, roi) -> FaceFit:
    point, axis, radius = fit_cylinder(face)
    if radius > MAX_CYLINDER_RADIUS_MM:
        raise ConfigError(
            f"{where}: the face of {roi!r} is flat (fitted cylinder radius {radius:.0f} mm): "
            "use fit = 'plane'"
        )
    keep = _trim(_cylinder_residuals(np.concatenate([point, axis, [radius]]), face), min_spacing)
    if keep.sum() >= MIN_FACE_POINTS["cylinder"]:
        face = face[keep]
        point, axis, radius = fit_cylinder(face)
    hint = np.array([1.0, 0.0, 0.0]) if axis_hint is None else np.asarray(axis_hint, np.float64)
    if float(axis @ hint) < 0:
        axis = -axis
    foot = point + float((centre - point) @ axis) * axis
    radial = centre - foot
    rho = float(np.linalg.norm(radial))
    if rho < 1e-3 * max(radius, 1.0):
        raise ConfigError(
            f"{where}: the applicator centre lies on the axis of the cylinder fitted to {roi!r}; "
            "no side to put the shield on"
        )
    residuals = _cylinder_residuals(np.concatenate([point, axis, [radius]]), face)
    return FaceFit(
        "cylinder",
        foot,
        radial / rho,
        axis,
        radius,
        rho > radius,
        float(np.sqrt(np.mean(residuals**2))),
        len(face),
    )
