"""Built-in parametric phantoms: HDR flap IORT of a presacral (pelvic) tumour bed.

Coordinate frame
----------------
Patient coordinates (x, y, z) in mm, as everywhere in iortopt (arrays are (z, y, x)). The tissue
surface of the bed is a cylinder of radius R = ``surface_radius_mm`` whose axis is parallel to x and
passes through (y = 0, z = R): a concave bed, the hollow of the sacrum, touching z = 0 at y = 0.
Every point is described by cylinder coordinates about that axis:

    rho = sqrt(y^2 + (z - R)^2)          distance from the axis
    phi = atan2(y, R - z)                angle from the bottom of the bed (positive towards +y)
    depth = rho - R                      depth below the tissue surface (< 0 on the applicator side)

Tissue is rho > R (below the axis, z < R; all angles used here are below 90 degrees). "Arc length"
of the target and the ureter is measured on the tissue surface, R * phi; that of a catheter along
the catheter itself.

Structures (fractional occupancies, supersampled)
-------------------------------------------------
The region: |phi| <= phi_region, the larger of the catheter and target half-angles, and
|x| <= x_region, the larger of (outer catheter + 10 mm), target_width / 2 and the ureter's reach.

- ``CTV`` (target): tissue from the surface to ``ctv_depth_mm`` deep (0 < depth <= ctv_depth),
  |x| <= target_width / 2, surface arc length |R phi| <= target_length / 2. Its exact volume is
  target_width * (target_length / (2 R)) * ((R + ctv_depth)^2 - R^2).
- ``sacrum`` (oar): bone, sacrum_depth <= depth < sacrum_depth + sacrum_thickness, over the region.
- ``ureter`` (oar): a tube of radius ``ureter_radius_mm`` about a centreline in the plane
  x = ``ureter_lateral_mm``, running along the arc over the region (phi from -phi_region to
  +phi_region) with its depth linear in phi from ``ureter_depth_start_mm`` (at -y) to
  ``ureter_depth_end_mm`` (at +y); flat ends. Its volume is pi r^2 times the centreline length
  (see :func:`ureter_centreline_mm`).
- ``bowel`` (oar): on the far side of the flap, R - flap - gap - bowel_thickness <= rho <
  R - flap - gap, over the region.
- ``flap`` (other): the silicone mat, R - flap_thickness <= rho < R, |phi| <= catheter half-angle,
  |x| <= outer catheter + catheter_spacing / 2. Listed for display and density; no objective.

HU (``case.hu``, ILLUSTRATIVE material values of :data:`iortopt.cases.hu_calibration.MATERIAL_HU`,
averaged over the sub-samples of a voxel): tissue (depth > 0: CTV, ureter, the tissue around)
is ``soft_tissue``, the sacrum ``bone``; on the applicator side the flap (silicone, taken as
water-equivalent as TG-43 does) and the surgical field between the tissue and the bowel are
``water`` (saline), the bowel and what lies beyond it ``soft_tissue``. There is no air: the body
mask is 1 everywhere.

Overlaps are resolved per sub-sample by priority ureter > CTV > sacrum (bowel and flap lie on the
applicator side and cannot overlap tissue): the ureter is always the whole tube, and the CTV and the
sacrum are carved out around it. With the defaults the ureter's shallow start lies beyond the CTV's
arc extent; under the CTV the top of the tube comes within 10 mm of the surface, which removes
about 0.1 % of the CTV (some 0.05 cm^3), and where the tube runs through the sacrum the bone is
carved out. The ureter wins rather than the CTV so that its dose (its maximum is at its shallowest
point) is never under-reported by trimming the tube.

Applicator: ``n_catheters`` catheters ``catheter_spacing_mm`` apart in x, centred on x = 0, each an
arc of radius R - ``source_to_surface_mm`` (so every dwell lies that far from the tissue surface)
and length ``catheter_length_mm``, centred on y = 0, tip at the -y end. The source axis turns with
the arc from dwell to dwell.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

from iortopt.cases.case import Case, Structure
from iortopt.cases.catheters import FlapApplicator
from iortopt.cases.hu_calibration import MATERIAL_HU
from iortopt.cases.params import check_fields, invalid
from iortopt.grid import Grid

#: Polyline vertex spacing (mm of arc) of catheters: the chord sag is R phi^2 / 8, < 0.01 mm here.
CATHETER_VERTEX_SPACING_MM = 1.0
#: Sample spacing (mm) of the ureter centreline used for distances (error ~ 1e-4 mm).
URETER_SAMPLE_SPACING_MM = 0.05
#: The region (bowel, sacrum) extends this far (mm) in x beyond the outer catheters.
REGION_X_MARGIN_MM = 10.0

STRUCTURE_ORDER = ("CTV", "sacrum", "ureter", "bowel", "flap")
STRUCTURE_ROLES = {
    "CTV": "target",
    "sacrum": "oar",
    "ureter": "oar",
    "bowel": "oar",
    "flap": "other",
}


@dataclass(frozen=True)
class FlapCaseParams:
    """Parameters of the presacral flap phantom (lengths in mm; see the module docstring).

    Attributes
    ----------
    spacing_mm : dose grid spacing, isotropic.
    supersampling : sub-samples per axis per voxel for fractional occupancy (``supersampling^3``).
    n_catheters : number of parallel flap catheters.
    catheter_spacing_mm : distance between neighbouring catheters (in x).
    catheter_length_mm : arc length of each catheter.
    source_to_surface_mm : distance from the catheter axis to the tissue surface.
    flap_thickness_mm : silicone flap thickness (catheters are embedded in it).
    surface_radius_mm : curvature radius R of the concave bed.
    target_width_mm : CTV extent across the catheters (x).
    target_length_mm : CTV extent along the catheters (arc length on the tissue surface).
    ctv_depth_mm : CTV depth below the tissue surface.
    ureter_radius_mm : ureter tube radius.
    ureter_depth_start_mm, ureter_depth_end_mm : depth of the ureter centreline at the -y and +y
        ends of the region (linear in between).
    ureter_lateral_mm : x of the ureter centreline.
    sacrum_depth_mm, sacrum_thickness_mm : bone from this depth, this thick.
    bowel_gap_mm : gap between the far side of the flap and the bowel.
    bowel_thickness_mm : thickness of the bowel layer.
    grid_margin_mm : margin of the dose grid around all structures and catheters.
    """

    spacing_mm: float = 2.0
    supersampling: int = 3
    n_catheters: int = 8
    catheter_spacing_mm: float = 10.0
    catheter_length_mm: float = 80.0
    source_to_surface_mm: float = 5.0
    flap_thickness_mm: float = 10.0
    surface_radius_mm: float = 70.0
    target_width_mm: float = 60.0
    target_length_mm: float = 60.0
    ctv_depth_mm: float = 10.0
    ureter_radius_mm: float = 2.5
    ureter_depth_start_mm: float = 9.0
    ureter_depth_end_mm: float = 20.0
    ureter_lateral_mm: float = 20.0
    sacrum_depth_mm: float = 15.0
    sacrum_thickness_mm: float = 10.0
    bowel_gap_mm: float = 0.0
    bowel_thickness_mm: float = 20.0
    grid_margin_mm: float = 15.0

    def __post_init__(self):
        _validate_params(self)


_NON_NEGATIVE = ("bowel_gap_mm", "grid_margin_mm")
_INTEGERS = {"supersampling": 1, "n_catheters": 1}
_SIGNED = ("ureter_lateral_mm",)


def _fail(name: str, value, expected: str):
    raise invalid(FlapCaseParams, name, value, expected)


def _validate_params(p: FlapCaseParams) -> None:
    """Raise ValueError naming the first invalid field, its value and what was expected."""
    check_fields(p, _INTEGERS, _NON_NEGATIVE, _SIGNED)
    r = p.surface_radius_mm
    if p.source_to_surface_mm >= p.flap_thickness_mm:
        _fail(
            "source_to_surface_mm",
            p.source_to_surface_mm,
            f"< flap_thickness_mm = {p.flap_thickness_mm} (catheters lie inside the flap)",
        )
    applicator_side_mm = p.flap_thickness_mm + p.bowel_gap_mm + p.bowel_thickness_mm
    if applicator_side_mm >= r:
        _fail(
            "surface_radius_mm",
            r,
            f"> flap_thickness_mm + bowel_gap_mm + bowel_thickness_mm = {applicator_side_mm}",
        )
    if p.catheter_length_mm / (2 * (r - p.source_to_surface_mm)) >= math.pi / 2:
        _fail(
            "catheter_length_mm",
            p.catheter_length_mm,
            f"< pi * (surface_radius_mm - source_to_surface_mm) = "
            f"{math.pi * (r - p.source_to_surface_mm):.1f} (catheters must stay below the axis)",
        )
    if p.target_length_mm / (2 * r) >= math.pi / 2:
        _fail(
            "target_length_mm", p.target_length_mm, f"< pi * surface_radius_mm = {math.pi * r:.1f}"
        )
    for name in ("ureter_depth_start_mm", "ureter_depth_end_mm"):
        if getattr(p, name) <= p.ureter_radius_mm:
            _fail(
                name,
                getattr(p, name),
                f"> ureter_radius_mm = {p.ureter_radius_mm} (the tube must lie in tissue)",
            )


@dataclass(frozen=True)
class _Layout:
    """Derived sizes of the phantom (angles in radians, lengths in mm)."""

    catheter_radius_mm: float
    catheter_half_angle: float
    target_half_angle: float
    region_half_angle: float
    catheter_x_mm: np.ndarray  # (n_catheters,)
    flap_half_width_mm: float
    region_half_width_mm: float


def _layout(p: FlapCaseParams) -> _Layout:
    r = p.surface_radius_mm
    catheter_radius = r - p.source_to_surface_mm
    catheter_half_angle = p.catheter_length_mm / (2 * catheter_radius)
    target_half_angle = p.target_length_mm / (2 * r)
    catheter_x = p.catheter_spacing_mm * (np.arange(p.n_catheters) - (p.n_catheters - 1) / 2)
    outer_x = float(np.abs(catheter_x).max())
    region_half_width = max(
        outer_x + REGION_X_MARGIN_MM,
        p.target_width_mm / 2,
        abs(p.ureter_lateral_mm) + p.ureter_radius_mm,
    )
    return _Layout(
        catheter_radius_mm=catheter_radius,
        catheter_half_angle=catheter_half_angle,
        target_half_angle=target_half_angle,
        region_half_angle=max(catheter_half_angle, target_half_angle),
        catheter_x_mm=catheter_x,
        flap_half_width_mm=outer_x + p.catheter_spacing_mm / 2,
        region_half_width_mm=region_half_width,
    )


def bed_depth_mm(points_mm: np.ndarray, surface_radius_mm: float) -> np.ndarray:
    """Depth (..., ) in mm below the concave tissue surface of the phantom (< 0 above it).

    Parameters
    ----------
    points_mm : (..., 3)
        Points (x, y, z) in mm.
    surface_radius_mm : float
        Bed radius R; the cylinder axis is parallel to x through (y = 0, z = R).
    """
    points = np.asarray(points_mm, dtype=np.float64)
    return np.hypot(points[..., 1], points[..., 2] - surface_radius_mm) - surface_radius_mm


def _arc_yz_mm(radius_mm, phi, surface_radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, z) in mm of points at distance ``radius_mm`` from the bed axis and angle ``phi``."""
    return radius_mm * np.sin(phi), surface_radius_mm - radius_mm * np.cos(phi)


def ureter_centreline_mm(
    params: FlapCaseParams, spacing_mm: float = URETER_SAMPLE_SPACING_MM
) -> np.ndarray:
    """Samples (N, 3) of the ureter centreline in mm, from its shallow (-y) to its deep end.

    The centreline lies in the plane x = ``ureter_lateral_mm``; its depth goes linearly in angle
    from ``ureter_depth_start_mm`` to ``ureter_depth_end_mm`` over the region. The polyline length
    times pi r^2 is the tube volume.
    """
    layout = _layout(params)
    r = params.surface_radius_mm
    half = layout.region_half_angle
    deepest_mm = r + max(params.ureter_depth_start_mm, params.ureter_depth_end_mm)
    n = max(int(math.ceil(2 * half * deepest_mm / spacing_mm)), 1) + 1
    phi = np.linspace(-half, half, n)
    depth = np.linspace(params.ureter_depth_start_mm, params.ureter_depth_end_mm, n)
    y, z = _arc_yz_mm(r + depth, phi, r)
    return np.stack([np.full(n, params.ureter_lateral_mm), y, z], axis=-1)


def _tube_distance_sq_yz(centreline_yz: np.ndarray, y: np.ndarray, z: np.ndarray, radius_mm):
    """Squared in-plane distance (mm^2) from (y, z) points to a planar centreline; inf if farther
    than ``radius_mm`` or beyond its flat end caps. Shapes of ``y`` and ``z`` are kept."""
    tree = cKDTree(centreline_yz)
    query = np.stack([y.ravel(), z.ravel()], axis=-1)
    distance, nearest = tree.query(query, k=1, distance_upper_bound=radius_mm * 1.001)
    n = len(centreline_yz)
    # A point whose nearest sample is an end sample lies past that end if it is beyond the plane
    # normal to the centreline there.
    start_dir = centreline_yz[1] - centreline_yz[0]
    end_dir = centreline_yz[-1] - centreline_yz[-2]
    past_start = (nearest == 0) & ((query - centreline_yz[0]) @ start_dir < 0)
    past_end = (nearest == n - 1) & ((query - centreline_yz[-1]) @ end_dir > 0)
    distance_sq = np.where(past_start | past_end, np.inf, distance**2)
    return distance_sq.reshape(y.shape)


def _catheter_polylines_mm(p: FlapCaseParams, layout: _Layout) -> tuple[np.ndarray, ...]:
    """One (K, 3) polyline per catheter, tip (at -y) first."""
    n = int(math.ceil(p.catheter_length_mm / CATHETER_VERTEX_SPACING_MM)) + 1
    phi = np.linspace(-layout.catheter_half_angle, layout.catheter_half_angle, n)
    y, z = _arc_yz_mm(layout.catheter_radius_mm, phi, p.surface_radius_mm)
    return tuple(np.stack([np.full(n, x), y, z], axis=-1) for x in layout.catheter_x_mm)


def _sector_box_mm(half_width_mm, rho_min_mm, rho_max_mm, half_angle, surface_radius_mm):
    """Bounding box (lower (3,), upper (3,)) of a cylindrical shell sector |phi| <= half_angle."""
    y = rho_max_mm * math.sin(half_angle)
    lower = (-half_width_mm, -y, surface_radius_mm - rho_max_mm)
    upper = (half_width_mm, y, surface_radius_mm - rho_min_mm * math.cos(half_angle))
    return np.array(lower), np.array(upper)


def _grid_for(p: FlapCaseParams, layout: _Layout, catheters) -> Grid:
    """Grid over all structures and catheters plus the margin; centres on multiples of spacing."""
    r = p.surface_radius_mm
    bowel_inner_mm = r - p.flap_thickness_mm - p.bowel_gap_mm - p.bowel_thickness_mm
    deepest_mm = r + max(
        p.ctv_depth_mm,
        p.sacrum_depth_mm + p.sacrum_thickness_mm,
        max(p.ureter_depth_start_mm, p.ureter_depth_end_mm) + p.ureter_radius_mm,
    )
    lower, upper = _sector_box_mm(
        layout.region_half_width_mm, bowel_inner_mm, deepest_mm, layout.region_half_angle, r
    )
    all_catheters = np.concatenate(catheters)
    lower = np.minimum(lower, all_catheters.min(axis=0)) - p.grid_margin_mm
    upper = np.maximum(upper, all_catheters.max(axis=0)) + p.grid_margin_mm
    s = p.spacing_mm
    return Grid.from_bounds(np.floor(lower / s) * s, np.ceil(upper / s) * s, s)


def _in_interval(values: np.ndarray, half_width) -> np.ndarray:
    """values in [-half_width, half_width): half-open, so that sub-samples falling exactly on both
    ends of an interval (common: boundaries at round numbers on a round lattice) count once."""
    return (values >= -half_width) & (values < half_width)


def _occupancies(
    p: FlapCaseParams, layout: _Layout, grid: Grid
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fractional occupancy (nz, ny, nx) float32 of every structure and the HU, by supersampling.

    Every structure is a condition on (y, z) (through rho and phi) times one on x, so each
    sub-offset is evaluated on a (nz, ny) plane and an (nx,) line and combined by broadcasting.
    """
    r = p.surface_radius_mm
    offsets = (np.arange(p.supersampling) + 0.5) / p.supersampling - 0.5
    sx, sy, sz = grid.spacing_xyz_mm
    x_axis, y_axis, z_axis = grid.axis_mm("x"), grid.axis_mm("y"), grid.axis_mm("z")
    centreline_yz = ureter_centreline_mm(p)[:, 1:]
    flap_outer = r - p.flap_thickness_mm
    bowel_outer = flap_outer - p.bowel_gap_mm
    bowel_inner = bowel_outer - p.bowel_thickness_mm
    sacrum_bottom = p.sacrum_depth_mm + p.sacrum_thickness_mm

    counts = {name: np.zeros(grid.shape_zyx, np.float32) for name in STRUCTURE_ORDER}
    hu_sum = np.zeros(grid.shape_zyx, np.float32)
    soft, water = MATERIAL_HU["soft_tissue"], MATERIAL_HU["water"]
    for oz in offsets:
        for oy in offsets:
            z, y = np.meshgrid(z_axis + oz * sz, y_axis + oy * sy, indexing="ij")
            rho = np.hypot(y, z - r)
            phi = np.arctan2(y, r - z)
            depth = rho - r
            base_hu = np.where((depth > 0) | (rho < bowel_outer), soft, water)[:, :, None]
            in_region = _in_interval(phi, layout.region_half_angle)
            plane = {
                "CTV": (depth > 0)
                & (depth <= p.ctv_depth_mm)
                & _in_interval(phi, layout.target_half_angle),
                "sacrum": (depth >= p.sacrum_depth_mm) & (depth < sacrum_bottom) & in_region,
                "bowel": (rho >= bowel_inner) & (rho < bowel_outer) & in_region,
                "flap": (rho >= flap_outer)
                & (rho < r)
                & _in_interval(phi, layout.catheter_half_angle),
            }
            plane = {k: v[:, :, None] for k, v in plane.items()}
            ureter_sq = _tube_distance_sq_yz(centreline_yz, y, z, p.ureter_radius_mm)[:, :, None]
            for ox in offsets:
                x = (x_axis + ox * sx)[None, None, :]
                ureter = ureter_sq + (x - p.ureter_lateral_mm) ** 2 <= p.ureter_radius_mm**2
                ctv = plane["CTV"] & _in_interval(x, p.target_width_mm / 2) & ~ureter
                in_region_x = _in_interval(x, layout.region_half_width_mm)
                sacrum = plane["sacrum"] & in_region_x & ~ctv & ~ureter
                counts["CTV"] += ctv
                counts["ureter"] += ureter
                counts["sacrum"] += sacrum
                hu_sum += np.where(sacrum, MATERIAL_HU["bone"], base_hu)
                counts["bowel"] += plane["bowel"] & in_region_x
                counts["flap"] += plane["flap"] & _in_interval(x, layout.flap_half_width_mm)
    scale = np.float32(1.0 / p.supersampling**3)
    return {name: c * scale for name, c in counts.items()}, hu_sum / np.float32(p.supersampling**3)


def build_flap_case(params: FlapCaseParams = FlapCaseParams()) -> tuple[Case, FlapApplicator]:
    """Build the presacral HDR flap phantom and its flap applicator.

    Parameters
    ----------
    params : FlapCaseParams
        Geometry and grid parameters; the defaults give a ~200k-voxel case on a 2 mm grid.

    Returns
    -------
    case : Case
        Structures in order CTV (target), sacrum, ureter, bowel (oar), flap (other), as fractional
        occupancies, and the HU of their materials (module docstring); ``case.info`` holds
        ``params`` (as a dict), ``description`` and ``frame``.
    applicator : FlapApplicator
        ``n_catheters`` arcs at ``source_to_surface_mm`` from the tissue surface, tip at -y.
    """
    layout = _layout(params)
    catheters = _catheter_polylines_mm(params, layout)
    grid = _grid_for(params, layout, catheters)
    occupancy, hu = _occupancies(params, layout, grid)
    structures = tuple(
        Structure(name, STRUCTURE_ROLES[name], occupancy[name]) for name in STRUCTURE_ORDER
    )
    info = {
        "phantom": "hdr_flap_presacral",
        "description": (
            "Parametric presacral tumour bed for HDR flap IORT: concave cylindrical bed of radius "
            f"{params.surface_radius_mm} mm, CTV {params.target_width_mm} x "
            f"{params.target_length_mm} mm x {params.ctv_depth_mm} mm deep, ureter, sacrum and "
            f"bowel; {params.n_catheters} curved catheters {params.catheter_spacing_mm} mm apart "
            f"at {params.source_to_surface_mm} mm from the tissue."
        ),
        "frame": (
            "x, y, z mm; bed axis parallel to x through (y=0, z=R); depth = distance from the "
            "axis - R; catheter tips at -y"
        ),
        "overlap_priority": ["ureter", "CTV", "sacrum"],
        "params": asdict(params),
    }
    case = Case("hdr_flap_presacral", grid, structures, info, hu=hu)
    return case, FlapApplicator(catheters)
