"""Built-in parametric breast case for 50 kV X-ray IORT with a spherical applicator.

Coordinate frame
----------------
Patient coordinates (x, y, z) in mm (arrays (z, y, x)); the lumpectomy cavity is centred at the
origin, the skin is toward +z and the chest wall toward -z. Every layer is a slab over the
modelled region |x|, |y| < ``breast_half_width_mm`` (half-open intervals, as in
:mod:`iortopt.cases.flap`), with R = ``cavity_radius_mm``:

- skin surface: the plane z = R + ``skin_distance_mm``; ``skin`` is the layer
  ``skin_thickness_mm`` beneath it;
- breast tissue: from the front of the pectoral muscle, z = -(R + ``chest_wall_distance_mm``),
  up to the skin;
- ``chest_wall`` (pectoral muscle): ``muscle_thickness_mm`` behind that;
- ``rib``: cylinders of radius ``rib_radius_mm`` running along x, centres every
  ``rib_spacing_mm`` in y (one directly behind the cavity, y = 0), touching the back of the
  muscle;
- ``lung``: ``lung_thickness_mm`` of lung behind the rib band (intercostal tissue between the ribs
  is left unlabelled).

The cavity wall is r(u) = R + A w(u) for directions u from the centre, where A =
``cavity_irregularity_mm`` and w is a random combination (``cavity_seed``) of the degree-2 and
degree-3 real spherical-harmonic polynomials scaled so that max |w| = 1: a smooth, low-order
wobble of +-A mm (degree 0 and 1 would only change the size and position).

The applicator and the tissue (rigid anatomy, conforming cavity)
----------------------------------------------------------------
The spherical applicator (radius a, centre c) sits in the cavity and the breast tissue is pulled
onto it (in practice with purse-string sutures): with the applicator in place, all breast tissue
outside the ball is tissue and the ball itself is applicator, not tissue. Skin, muscle, ribs and
lung stay where they are (no deformation is modelled). The tissue is assumed to conform to the
applicator while every point of the cavity wall lies within ``fit_tolerance_mm`` (5 mm) of the
applicator surface, measured radially from c: ``wall_gap = max over the wall of | |w - c| - a |``
<= tolerance. For a smooth cavity centred on the applicator this is the catalogue range R - 5 mm
to R + 5 mm; a wobble of A mm narrows it by A at each end. Larger gaps are flagged as "does not
fit" (the cavity would have to collapse or stretch by more than the tolerance).

Structures (fractional occupancies by supersampling), for a given applicator
--------------------------------------------------------------------------------
- ``PTV_shell`` (target): breast tissue (not skin) with 0 < |p - c| - a <= ``target_thickness_mm``,
  the shell of tissue around the applicator. Its exact volume, when it reaches neither the skin
  nor the muscle, is 4/3 pi ((a + T)^3 - a^3).
- ``skin``, ``chest_wall``, ``rib``, ``lung`` (oar) as above, minus the ball.
- ``breast`` (other): all breast tissue outside the ball, the PTV included (skin excluded).

HU (``case.hu``, ILLUSTRATIVE values of :data:`iortopt.cases.hu_calibration.MATERIAL_HU`,
averaged over a voxel's sub-samples; the layers run on beyond the modelled region): air beyond
the skin surface, ``soft_tissue`` skin, ``breast_tissue`` (an adipose-glandular mix) from the skin
to the muscle, ``muscle`` chest wall and intercostal tissue, ``bone`` ribs, ``lung`` behind the
ribs. The ball (the applicator in the cavity) is ``water``: the cavity is taken as filled with
fluid (seroma, saline), not air, so it is inside the body mask; no engine transports through it.

The skin distance is the distance from the applicator surface to the skin surface (the outer
surface of the skin layer), z_skin - (c_z + a): the TARGIT constraint is >= 5 mm.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np

from iortopt.cases.case import Case, Structure
from iortopt.cases.hu_calibration import MATERIAL_HU
from iortopt.cases.params import check_fields, invalid
from iortopt.grid import Grid

STRUCTURE_ORDER = ("PTV_shell", "skin", "chest_wall", "rib", "lung", "breast")
STRUCTURE_ROLES = {
    "PTV_shell": "target",
    "skin": "oar",
    "chest_wall": "oar",
    "rib": "oar",
    "lung": "oar",
    "breast": "other",
}
#: Directions sampled on the cavity wall (Fibonacci sphere), for its shape, volume and fit.
N_WALL_DIRECTIONS = 4000


@dataclass(frozen=True)
class BreastCaseParams:
    """Parameters of the breast phantom (lengths in mm; frame in the module docstring).

    Attributes
    ----------
    spacing_mm : dose grid spacing, isotropic.
    supersampling : sub-samples per axis per voxel for fractional occupancy.
    cavity_radius_mm : nominal (mean) radius R of the lumpectomy cavity.
    cavity_irregularity_mm : amplitude A of the low-order wobble of the cavity wall (0 = sphere).
    cavity_seed : random seed of the wobble's shape.
    target_thickness_mm : thickness T of the target shell of tissue around the applicator.
    skin_distance_mm : distance from the cavity wall (at radius R) to the skin surface, along +z.
    skin_thickness_mm : thickness of the skin layer.
    chest_wall_distance_mm : distance from the cavity wall (at R) to the pectoral muscle, along -z.
    muscle_thickness_mm : thickness of the pectoral muscle (``chest_wall``).
    rib_radius_mm, rib_spacing_mm : ribs: cylinders along x, centres this far apart in y.
    lung_thickness_mm : thickness of lung modelled behind the ribs.
    breast_half_width_mm : half-width in x and y of the modelled region.
    grid_margin_mm : margin of the dose grid around the region.
    fit_tolerance_mm : largest radial wall-to-applicator gap for which the tissue conforms.
    """

    spacing_mm: float = 2.0
    supersampling: int = 3
    cavity_radius_mm: float = 20.0
    cavity_irregularity_mm: float = 2.0
    cavity_seed: int = 0
    target_thickness_mm: float = 10.0
    skin_distance_mm: float = 12.0
    skin_thickness_mm: float = 2.0
    chest_wall_distance_mm: float = 15.0
    muscle_thickness_mm: float = 8.0
    rib_radius_mm: float = 5.0
    rib_spacing_mm: float = 25.0
    lung_thickness_mm: float = 20.0
    breast_half_width_mm: float = 45.0
    grid_margin_mm: float = 4.0
    fit_tolerance_mm: float = 5.0

    def __post_init__(self):
        _validate_params(self)


_INTEGERS = {"supersampling": 1, "cavity_seed": 0}
_NON_NEGATIVE = ("cavity_irregularity_mm", "grid_margin_mm")


def _fail(name: str, value, expected: str):
    raise invalid(BreastCaseParams, name, value, expected)


def _validate_params(p: BreastCaseParams) -> None:
    """Raise ValueError naming the first invalid field, its value and what was expected."""
    check_fields(p, _INTEGERS, _NON_NEGATIVE, ())
    if p.cavity_irregularity_mm >= p.cavity_radius_mm / 2:
        _fail(
            "cavity_irregularity_mm",
            p.cavity_irregularity_mm,
            f"< cavity_radius_mm / 2 = {p.cavity_radius_mm / 2}",
        )
    if p.skin_thickness_mm >= p.skin_distance_mm:
        _fail(
            "skin_thickness_mm",
            p.skin_thickness_mm,
            f"< skin_distance_mm = {p.skin_distance_mm} (the skin lies beyond the cavity wall)",
        )
    if p.rib_spacing_mm <= 2 * p.rib_radius_mm:
        _fail("rib_spacing_mm", p.rib_spacing_mm, f"> 2 * rib_radius_mm = {2 * p.rib_radius_mm}")
    reach = p.cavity_radius_mm + p.target_thickness_mm
    if p.breast_half_width_mm <= reach:
        _fail(
            "breast_half_width_mm",
            p.breast_half_width_mm,
            f"> cavity_radius_mm + target_thickness_mm = {reach}",
        )


# ----------------------------------------------------------------------------------------------
# Cavity wall
# ----------------------------------------------------------------------------------------------


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) nearly uniform unit vectors (Fibonacci lattice on the sphere)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=-1)


def _harmonics_23(u: np.ndarray) -> np.ndarray:
    """(..., 12) real spherical-harmonic polynomials of degree 2 and 3 of unit vectors u."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    return np.stack(
        [
            x * y,
            y * z,
            z * x,
            x * x - y * y,
            3 * z * z - 1,
            x * (x * x - 3 * y * y),
            y * (3 * x * x - y * y),
            z * (x * x - y * y),
            x * y * z,
            x * (5 * z * z - 1),
            y * (5 * z * z - 1),
            z * (5 * z * z - 3),
        ],
        axis=-1,
    )


def _wobble_coefficients(seed: int) -> np.ndarray:
    """(12,) coefficients of the wall wobble, scaled so that max |w| = 1 over the wall sample."""
    coef = np.random.default_rng(seed).normal(size=12)
    peak = np.abs(_harmonics_23(fibonacci_directions(N_WALL_DIRECTIONS)) @ coef).max()
    return coef / peak


def cavity_wall_radius_mm(directions: np.ndarray, params: BreastCaseParams) -> np.ndarray:
    """Distance (mm) from the cavity centre to the wall along unit ``directions`` (..., 3)."""
    u = np.asarray(directions, dtype=np.float64)
    if params.cavity_irregularity_mm == 0:
        return np.full(u.shape[:-1], float(params.cavity_radius_mm))
    wobble = _harmonics_23(u) @ _wobble_coefficients(params.cavity_seed)
    return params.cavity_radius_mm + params.cavity_irregularity_mm * wobble


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BreastGeometry:
    """Where everything is (mm, z toward the skin); see the module docstring.

    ``cavity_wall_mm`` (N, 3) samples the cavity wall; the applicator fields describe the sphere
    the case was built for.
    """

    cavity_centre_mm: np.ndarray
    cavity_radius_mm: float
    cavity_equivalent_radius_mm: float
    cavity_wall_mm: np.ndarray
    applicator_centre_mm: np.ndarray
    applicator_radius_mm: float
    target_thickness_mm: float
    skin_surface_z_mm: float
    skin_inner_z_mm: float
    muscle_front_z_mm: float
    muscle_back_z_mm: float
    rib_centre_z_mm: float
    rib_centres_y_mm: tuple[float, ...]
    rib_radius_mm: float
    lung_front_z_mm: float
    lung_back_z_mm: float
    region_half_width_mm: float
    fit_tolerance_mm: float

    def _applicator(self, radius_mm, centre_mm) -> tuple[float, np.ndarray]:
        radius = self.applicator_radius_mm if radius_mm is None else float(radius_mm)
        centre = self.applicator_centre_mm if centre_mm is None else np.asarray(centre_mm, float)
        return radius, centre

    def skin_distance_mm(self, radius_mm=None, centre_mm=None) -> float:
        """Distance (mm) from the applicator surface to the skin surface (negative: applicator
        beyond the skin). Defaults to the applicator the case was built for."""
        radius, centre = self._applicator(radius_mm, centre_mm)
        return float(self.skin_surface_z_mm - centre[2] - radius)

    def wall_gap_mm(self, radius_mm=None, centre_mm=None) -> float:
        """Largest radial distance (mm) between the cavity wall and the applicator surface."""
        radius, centre = self._applicator(radius_mm, centre_mm)
        distance = np.linalg.norm(self.cavity_wall_mm - centre, axis=-1)
        return float(np.abs(distance - radius).max())

    def fits(self, radius_mm=None, centre_mm=None) -> bool:
        """True if the tissue can conform: wall gap <= ``fit_tolerance_mm``."""
        return self.wall_gap_mm(radius_mm, centre_mm) <= self.fit_tolerance_mm + 1e-9

    def tissue_labels(self, points_mm: np.ndarray) -> dict[str, np.ndarray]:
        """Applicator-independent labels of points (..., 3): boolean arrays ``skin``,
        ``breast_tissue`` (below the skin, in front of the muscle), ``chest_wall``, ``rib``,
        ``lung``; no point has two labels."""
        p = np.asarray(points_mm, dtype=np.float64)
        return _labels(self, p[..., 0], p[..., 1], p[..., 2])

    def rib_distance_sq_mm2(self, y, z) -> np.ndarray:
        """Squared distance (mm^2) in the (y, z) plane to the nearest rib axis."""
        dy = np.asarray(y, dtype=np.float64)[..., None] - np.asarray(self.rib_centres_y_mm)
        return np.min(dy * dy, axis=-1) + (np.asarray(z) - self.rib_centre_z_mm) ** 2


def _in_interval(values, low, high):
    """low <= values < high (half-open, so sub-samples on shared boundaries count once)."""
    return (values >= low) & (values < high)


def _labels(g: BreastGeometry, x, y, z) -> dict[str, np.ndarray]:
    """Applicator-independent labels; x, y, z broadcast together."""
    w = g.region_half_width_mm
    region = _in_interval(x, -w, w) & _in_interval(y, -w, w)
    rib = (g.rib_distance_sq_mm2(y, z) <= g.rib_radius_mm**2) & region
    return {
        "skin": _in_interval(z, g.skin_inner_z_mm, g.skin_surface_z_mm) & region,
        "breast_tissue": _in_interval(z, g.muscle_front_z_mm, g.skin_inner_z_mm) & region,
        "chest_wall": _in_interval(z, g.muscle_back_z_mm, g.muscle_front_z_mm) & region,
        "rib": rib,
        "lung": _in_interval(z, g.lung_back_z_mm, g.lung_front_z_mm) & region & ~rib,
    }


def structure_masks(
    labels: dict[str, np.ndarray], depth_mm: np.ndarray, target_thickness_mm: float
) -> dict[str, np.ndarray]:
    """Boolean masks of the case structures from tissue labels and the depth (mm) of each point
    below the applicator surface (|p - c| - a): the ball (depth <= 0) is removed from all."""
    outside = depth_mm > 0
    return {
        "PTV_shell": labels["breast_tissue"] & outside & (depth_mm <= target_thickness_mm),
        "skin": labels["skin"] & outside,
        "chest_wall": labels["chest_wall"] & outside,
        "rib": labels["rib"] & outside,
        "lung": labels["lung"] & outside,
        "breast": labels["breast_tissue"] & outside,
    }


def breast_geometry(
    params: BreastCaseParams, applicator_radius_mm=None, applicator_centre_mm=None
) -> BreastGeometry:
    """The phantom's geometry for an applicator (default: radius R at the cavity centre)."""
    r = params.cavity_radius_mm
    directions = fibonacci_directions(N_WALL_DIRECTIONS)
    wall_radius = cavity_wall_radius_mm(directions, params)
    skin_surface = r + params.skin_distance_mm
    muscle_front = -(r + params.chest_wall_distance_mm)
    muscle_back = muscle_front - params.muscle_thickness_mm
    rib_z = muscle_back - params.rib_radius_mm
    lung_front = muscle_back - 2 * params.rib_radius_mm
    w = params.breast_half_width_mm
    n_ribs = int(math.floor((w + params.rib_radius_mm) / params.rib_spacing_mm))
    rib_y = tuple(float(k * params.rib_spacing_mm) for k in range(-n_ribs, n_ribs + 1))
    radius = r if applicator_radius_mm is None else float(applicator_radius_mm)
    centre = (
        np.zeros(3) if applicator_centre_mm is None else np.asarray(applicator_centre_mm, float)
    )
    if not radius > 0 or centre.shape != (3,) or not np.all(np.isfinite(centre)):
        raise ValueError(
            f"applicator radius must be > 0 and centre three finite numbers, got {radius}, {centre}"
        )
    return BreastGeometry(
        cavity_centre_mm=np.zeros(3),
        cavity_radius_mm=float(r),
        cavity_equivalent_radius_mm=float(np.mean(wall_radius**3) ** (1 / 3)),
        cavity_wall_mm=directions * wall_radius[:, None],
        applicator_centre_mm=centre,
        applicator_radius_mm=radius,
        target_thickness_mm=float(params.target_thickness_mm),
        skin_surface_z_mm=float(skin_surface),
        skin_inner_z_mm=float(skin_surface - params.skin_thickness_mm),
        muscle_front_z_mm=float(muscle_front),
        muscle_back_z_mm=float(muscle_back),
        rib_centre_z_mm=float(rib_z),
        rib_centres_y_mm=rib_y,
        rib_radius_mm=float(params.rib_radius_mm),
        lung_front_z_mm=float(lung_front),
        lung_back_z_mm=float(lung_front - params.lung_thickness_mm),
        region_half_width_mm=float(w),
        fit_tolerance_mm=float(params.fit_tolerance_mm),
    )


def case_grid(params: BreastCaseParams, geometry: BreastGeometry) -> Grid:
    """Dose grid over the region (and the applicator) plus the margin; centres on multiples of
    the spacing."""
    w = geometry.region_half_width_mm
    lower = np.array([-w, -w, geometry.lung_back_z_mm])
    upper = np.array([w, w, geometry.skin_surface_z_mm])
    ball_lo = geometry.applicator_centre_mm - geometry.applicator_radius_mm
    ball_hi = geometry.applicator_centre_mm + geometry.applicator_radius_mm
    lower = np.minimum(lower, ball_lo) - params.grid_margin_mm
    upper = np.maximum(upper, ball_hi) + params.grid_margin_mm
    s = params.spacing_mm
    return Grid.from_bounds(np.floor(lower / s) * s, np.ceil(upper / s) * s, s)


def _material_hu(g: BreastGeometry, x, y, z, depth_mm) -> np.ndarray:
    """HU of the material at points (x, y, z broadcast together); see the module docstring."""
    everywhere = dataclasses.replace(g, region_half_width_mm=math.inf)
    labels = _labels(everywhere, x, y, z)
    m = MATERIAL_HU
    conditions = [
        depth_mm <= 0,
        labels["skin"],
        labels["breast_tissue"],
        labels["chest_wall"],
        labels["rib"],
        z < g.lung_front_z_mm,
        z < g.muscle_back_z_mm,
    ]
    values = [m["water"], m["soft_tissue"], m["breast_tissue"], m["muscle"], m["bone"]]
    values += [m["lung"], m["muscle"]]
    return np.select(conditions, values, default=m["air"])


def _occupancies(
    params: BreastCaseParams, g: BreastGeometry, grid: Grid
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fractional occupancy (nz, ny, nx) float32 of every structure and the HU, by
    supersampling."""
    offsets = (np.arange(params.supersampling) + 0.5) / params.supersampling - 0.5
    sx, sy, sz = grid.spacing_xyz_mm
    axes = [grid.axis_mm(a) for a in "xyz"]
    c = g.applicator_centre_mm
    counts = {name: np.zeros(grid.shape_zyx, np.float32) for name in STRUCTURE_ORDER}
    hu_sum = np.zeros(grid.shape_zyx, np.float32)
    for oz in offsets:
        z = (axes[2] + oz * sz)[:, None, None]
        for oy in offsets:
            y = (axes[1] + oy * sy)[None, :, None]
            for ox in offsets:
                x = (axes[0] + ox * sx)[None, None, :]
                labels = _labels(g, x, y, z)
                distance = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
                depth = distance - g.applicator_radius_mm
                masks = structure_masks(labels, depth, g.target_thickness_mm)
                for name in STRUCTURE_ORDER:
                    counts[name] += np.broadcast_to(masks[name], grid.shape_zyx)
                hu_sum += _material_hu(g, x, y, z, depth)
    scale = np.float32(1.0 / params.supersampling**3)
    hu = hu_sum / np.float32(params.supersampling**3)
    return {name: cnt * scale for name, cnt in counts.items()}, hu


def cavity_occupancy(params: BreastCaseParams, grid: Grid) -> np.ndarray:
    """(nz, ny, nx) float32 fraction of each voxel inside the cavity wall r(u) (the lumpectomy
    cavity before the applicator goes in; sub-samples as the structures)."""
    offsets = (np.arange(params.supersampling) + 0.5) / params.supersampling - 0.5
    sx, sy, sz = grid.spacing_xyz_mm
    axes = [grid.axis_mm(a) for a in "xyz"]
    count = np.zeros(grid.shape_zyx, np.float32)
    for oz in offsets:
        for oy in offsets:
            for ox in offsets:
                p = np.stack(
                    np.broadcast_arrays(
                        (axes[0] + ox * sx)[None, None, :],
                        (axes[1] + oy * sy)[None, :, None],
                        (axes[2] + oz * sz)[:, None, None],
                    ),
                    axis=-1,
                )
                r = np.linalg.norm(p, axis=-1)
                u = p / np.maximum(r, 1e-12)[..., None]
                count += r < cavity_wall_radius_mm(u, params)
    return count / np.float32(params.supersampling**3)


def build_breast_case(
    params: BreastCaseParams = BreastCaseParams(),
    applicator_radius_mm: float | None = None,
    applicator_centre_mm=None,
) -> tuple[Case, BreastGeometry]:
    """Build the breast phantom with a spherical applicator in the cavity.

    Args:
        params: geometry and grid parameters (defaults: ~150k voxels on a 2 mm grid).
        applicator_radius_mm: applicator radius (default ``cavity_radius_mm``).
        applicator_centre_mm: (3,) applicator centre (default the cavity centre, the origin).
    Returns:
        case: structures PTV_shell (target), skin, chest_wall, rib, lung (oar), breast (other) as
            fractional occupancies, all with the applicator ball removed, and the HU of their
            materials (module docstring); ``case.info`` holds the params, the applicator
            (radius, centre, skin distance, wall gap, fits) and warnings.
        geometry: :class:`BreastGeometry` for that applicator.
    """
    geometry = breast_geometry(params, applicator_radius_mm, applicator_centre_mm)
    grid = case_grid(params, geometry)
    occupancy, hu = _occupancies(params, geometry, grid)
    structures = tuple(
        Structure(name, STRUCTURE_ROLES[name], occupancy[name]) for name in STRUCTURE_ORDER
    )
    skin_distance = geometry.skin_distance_mm()
    gap = geometry.wall_gap_mm()
    warnings = []
    if gap > params.fit_tolerance_mm:
        warnings.append(
            f"applicator does not fit: the cavity wall is up to {gap:.1f} mm from its surface "
            f"(tolerance {params.fit_tolerance_mm} mm)"
        )
    if skin_distance < 0:
        warnings.append(f"applicator surface lies {-skin_distance:.1f} mm beyond the skin surface")
    info = {
        "phantom": "breast_xray_sphere",
        "description": (
            f"Parametric breast with a lumpectomy cavity of radius {params.cavity_radius_mm} mm "
            f"(wobble +-{params.cavity_irregularity_mm} mm) filled by a spherical applicator of "
            f"radius {geometry.applicator_radius_mm:g} mm; PTV = {params.target_thickness_mm} mm "
            f"shell of tissue around the applicator; skin {params.skin_distance_mm} mm and "
            f"pectoral muscle {params.chest_wall_distance_mm} mm from the cavity wall, ribs and "
            "lung behind."
        ),
        "frame": "x, y, z mm; cavity centre at the origin; skin toward +z, chest wall toward -z",
        "applicator": {
            "radius_mm": geometry.applicator_radius_mm,
            "centre_mm": geometry.applicator_centre_mm.tolist(),
            "skin_distance_mm": skin_distance,
            "wall_gap_mm": gap,
            "fits": gap <= params.fit_tolerance_mm,
        },
        "warnings": warnings,
        "params": asdict(params),
    }
    return Case("breast_xray_sphere", grid, structures, info, hu=hu), geometry
