"""Built-in ELIOT-type breast case for electron IORT with a protective disc.

In ELIOT-type treatments the surgeon mobilises the breast gland around the tumour bed, slides a
protective disc (e.g. 2 mm Al + 4 mm Pb) between the gland and the pectoral muscle, retracts the
skin and lays the electron cone directly on the exposed gland.

Coordinate frame
----------------
Patient coordinates (x, y, z) in mm (arrays (z, y, x)). The tumour bed's axis is the z axis; the
exposed gland surface is the plane through the origin with outward unit normal n, which is +z
tilted by ``surface_tilt_deg`` about the x axis (toward -y for a positive tilt), and the beam
comes from the +n side. All layers are parallel to that surface: with the tissue frame
(x_t, y_t, w) = R^T (x, y, z), R the rotation, w is the signed height above the surface (w < 0 in
tissue). Over the modelled region |x_t|, |y_t| < ``half_width_mm`` (half-open intervals, so
sub-samples on shared boundaries count once), with T = ``gland_thickness_mm``:

- gland: -T <= w < 0;
- ``skin``: the retracted skin at the edge of the incision, the top ``skin_thickness_mm`` of the
  gland layer at radial distance rho_t = sqrt(x_t^2 + y_t^2) >= ``skin_opening_radius_mm``;
- ``PTV_gland`` (target): gland (not skin) with rho_t <= ``target_radius_mm``, full thickness;
- the disc space: -(T + G) <= w < -T with G = ``disc_gap_mm``: no tissue (the disc sits there);
- ``chest_wall`` (pectoral muscle): ``muscle_thickness_mm`` below the disc space;
- ``rib``: whole cylinders of radius ``rib_radius_mm`` along x_t, centres every
  ``rib_spacing_mm`` in y_t (one under the bed, y_t = 0), touching the back of the muscle;
- ``lung``: ``lung_thickness_mm`` below the rib band (intercostal tissue between the ribs is tissue
  but left unlabelled).

Structures (fractional occupancies by supersampling): PTV_gland (target), skin, chest_wall, rib,
lung (oar), gland (other: all gland tissue, the target included, skin excluded). Exact volumes:
PTV_gland pi R_t^2 T; skin s ((2 W)^2 - pi R_o^2); chest_wall (2 W)^2 t_m; rib n pi r^2 2 W; lung
(2 W)^2 t_l. The anatomy is rigid and does not depend on the cone or the disc.

HU (``case.hu``, ILLUSTRATIVE values of :data:`iortopt.cases.hu_calibration.MATERIAL_HU`,
averaged over a voxel's sub-samples): ``breast_tissue`` gland, ``soft_tissue`` skin, ``muscle``
chest wall and intercostal tissue, ``bone`` ribs, ``lung``; air wherever there is no tissue
(``EliotGeometry.is_tissue``: above the surface, the disc space, outside the modelled region).

Patient frame: the phantom lies supine, head first (HFS) with its "up" (+z, where the beam
comes from) anterior, x towards the patient's left and y superior, so that in DICOM patient
coordinates (LPS) p_LPS = (x, -z, y). ``case.info["patient_frame"]`` records this mapping
(:data:`PATIENT_FRAME`); DICOM exports apply it to the plan and the dose grid.

The grid's voxel centres sit half a spacing off multiples of the spacing, so that the layer
boundaries at round depths fall on voxel faces when the surface is not tilted.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np

from iortopt.cases.case import Case, Structure
from iortopt.cases.hu_calibration import MATERIAL_HU
from iortopt.cases.params import check_fields, invalid
from iortopt.grid import Grid, sub_offsets_mm

STRUCTURE_ORDER = ("PTV_gland", "skin", "chest_wall", "rib", "lung", "gland")
STRUCTURE_ROLES = {
    "PTV_gland": "target",
    "skin": "oar",
    "chest_wall": "oar",
    "rib": "oar",
    "lung": "oar",
    "gland": "other",
}


@dataclass(frozen=True)
class EliotCaseParams:
    """Parameters of the ELIOT-type breast phantom (lengths in mm; frame in the module docstring).

    Attributes
    ----------
    spacing_mm : dose grid spacing, isotropic.
    supersampling : sub-samples per axis per voxel for fractional occupancy.
    gland_thickness_mm : thickness T of the mobilised gland (the target layer).
    target_radius_mm : radius of the target cylinder about the tumour bed axis.
    skin_thickness_mm : thickness of the retracted skin at the incision edge.
    skin_opening_radius_mm : radius of the incision (skin beyond it).
    disc_gap_mm : space between gland and muscle where the disc lies (its thickness).
    muscle_thickness_mm : pectoral muscle (``chest_wall``) thickness.
    rib_radius_mm, rib_spacing_mm : ribs: cylinders along x, centres this far apart in y.
    lung_thickness_mm : lung modelled below the ribs.
    half_width_mm : half-width in x and y of the modelled region.
    grid_margin_mm : margin of the dose grid around the region (air above the surface).
    surface_tilt_deg : tilt of the gland surface (and every layer) about the x axis.
    """

    spacing_mm: float = 2.0
    supersampling: int = 3
    gland_thickness_mm: float = 20.0
    target_radius_mm: float = 25.0
    skin_thickness_mm: float = 2.0
    skin_opening_radius_mm: float = 45.0
    disc_gap_mm: float = 6.0
    muscle_thickness_mm: float = 10.0
    rib_radius_mm: float = 5.0
    rib_spacing_mm: float = 25.0
    lung_thickness_mm: float = 20.0
    half_width_mm: float = 60.0
    grid_margin_mm: float = 4.0
    surface_tilt_deg: float = 0.0

    def __post_init__(self):
        _validate_params(self)


#: How the phantom lies on the couch: p_LPS = rotation @ p + translation_mm (module docstring).
PATIENT_FRAME = {
    "patient_position": "HFS",
    "rotation": [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
    "translation_mm": [0.0, 0.0, 0.0],
}

_INTEGERS = {"supersampling": 1}
_NON_NEGATIVE = ("grid_margin_mm",)
_SIGNED = ("surface_tilt_deg",)
MAX_SURFACE_TILT_DEG = 45.0


def _fail(name: str, value, expected: str):
    raise invalid(EliotCaseParams, name, value, expected)


def _validate_params(p: EliotCaseParams) -> None:
    """Raise ValueError naming the first invalid field, its value and what was expected."""
    check_fields(p, _INTEGERS, _NON_NEGATIVE, _SIGNED)
    if abs(p.surface_tilt_deg) >= MAX_SURFACE_TILT_DEG:
        _fail(
            "surface_tilt_deg",
            p.surface_tilt_deg,
            f"a tilt of less than {MAX_SURFACE_TILT_DEG:g} degrees",
        )
    if p.skin_thickness_mm >= p.gland_thickness_mm:
        _fail(
            "skin_thickness_mm",
            p.skin_thickness_mm,
            f"< gland_thickness_mm = {p.gland_thickness_mm}",
        )
    if p.target_radius_mm >= p.skin_opening_radius_mm:
        _fail(
            "target_radius_mm",
            p.target_radius_mm,
            f"< skin_opening_radius_mm = {p.skin_opening_radius_mm} (the target lies inside the "
            "incision)",
        )
    if p.skin_opening_radius_mm >= p.half_width_mm:
        _fail(
            "skin_opening_radius_mm",
            p.skin_opening_radius_mm,
            f"< half_width_mm = {p.half_width_mm}",
        )
    if p.rib_spacing_mm <= 2 * p.rib_radius_mm:
        _fail("rib_spacing_mm", p.rib_spacing_mm, f"> 2 * rib_radius_mm = {2 * p.rib_radius_mm}")
    if p.rib_radius_mm >= p.half_width_mm:
        _fail("rib_radius_mm", p.rib_radius_mm, f"< half_width_mm = {p.half_width_mm}")


def tilt_rotation(tilt_deg: float) -> np.ndarray:
    """(3, 3) rotation about the x axis by ``tilt_deg`` (maps +z to (0, -sin, cos))."""
    a = math.radians(float(tilt_deg))
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass(frozen=True, eq=False)
class EliotGeometry:
    """Where everything is. Heights ``*_w_mm`` are in the tissue frame (w = height above the
    surface, negative in tissue); ``rotation`` maps tissue-frame to patient coordinates."""

    rotation: np.ndarray
    surface_normal: np.ndarray
    gland_bottom_w_mm: float
    skin_inner_w_mm: float
    muscle_front_w_mm: float
    muscle_back_w_mm: float
    rib_centre_w_mm: float
    rib_centres_y_mm: tuple[float, ...]
    rib_radius_mm: float
    lung_front_w_mm: float
    lung_back_w_mm: float
    target_radius_mm: float
    skin_opening_radius_mm: float
    half_width_mm: float

    def to_tissue_frame(self, points_mm) -> np.ndarray:
        """Points (..., 3) in patient mm to (x_t, y_t, w) mm."""
        return np.asarray(points_mm, dtype=np.float64) @ self.rotation

    def to_patient(self, tissue_points_mm) -> np.ndarray:
        """(x_t, y_t, w) (..., 3) to patient mm."""
        return np.asarray(tissue_points_mm, dtype=np.float64) @ self.rotation.T

    @property
    def surface_point_mm(self) -> np.ndarray:
        """Where the bed axis meets the surface (the origin)."""
        return np.zeros(3)

    @property
    def disc_plane_point_mm(self) -> np.ndarray:
        """Centre of the bottom of the gland under the bed: the nominal disc upstream face."""
        return self.to_patient(np.array([0.0, 0.0, self.gland_bottom_w_mm]))

    def labels(self, points_mm) -> dict[str, np.ndarray]:
        """Boolean structure labels of points (..., 3) (``gland`` includes the target)."""
        t = self.to_tissue_frame(points_mm)
        return _labels(self, t[..., 0], t[..., 1], t[..., 2])

    def is_tissue(self, points_mm) -> np.ndarray:
        """Points (..., 3) in tissue: below the surface, in the region, not in the disc space."""
        t = self.to_tissue_frame(points_mm)
        return _tissue(self, t[..., 0], t[..., 1], t[..., 2])


def _in(values, low, high):
    return (values >= low) & (values < high)


def _tissue(g: EliotGeometry, x, y, w):
    hw = g.half_width_mm
    region = _in(x, -hw, hw) & _in(y, -hw, hw)
    gap = _in(w, g.muscle_front_w_mm, g.gland_bottom_w_mm)
    return region & _in(w, g.lung_back_w_mm, 0.0) & ~gap


def _nearest_square(values, centres) -> np.ndarray:
    """min over ``centres`` of (values - centre)^2, elementwise (a running minimum: no array with
    an extra axis of the centres, which is slow on the full grid)."""
    out = None
    for c in centres:
        d = values - c
        out = d * d if out is None else np.minimum(out, d * d)
    return np.full(np.shape(values), np.inf) if out is None else out


def _labels(g: EliotGeometry, x, y, w) -> dict[str, np.ndarray]:
    """Labels from tissue-frame coordinates (broadcasting)."""
    hw = g.half_width_mm
    region = _in(x, -hw, hw) & _in(y, -hw, hw)
    rho2 = x * x + y * y
    gland_layer = _in(w, g.gland_bottom_w_mm, 0.0) & region
    skin = gland_layer & _in(w, g.skin_inner_w_mm, 0.0) & (rho2 >= g.skin_opening_radius_mm**2)
    gland = gland_layer & ~skin
    rib_d2 = _nearest_square(np.asarray(y, dtype=np.float64), g.rib_centres_y_mm)
    rib_d2 = rib_d2 + (w - g.rib_centre_w_mm) ** 2
    rib = (rib_d2 <= g.rib_radius_mm**2) & region
    return {
        "PTV_gland": gland & (rho2 <= g.target_radius_mm**2),
        "skin": skin,
        "chest_wall": _in(w, g.muscle_back_w_mm, g.muscle_front_w_mm) & region,
        "rib": rib,
        "lung": _in(w, g.lung_back_w_mm, g.lung_front_w_mm) & region & ~rib,
        "gland": gland,
    }


def eliot_geometry(params: EliotCaseParams) -> EliotGeometry:
    """The phantom's geometry (see the module docstring)."""
    p = params
    rotation = tilt_rotation(p.surface_tilt_deg)
    gland_bottom = -p.gland_thickness_mm
    muscle_front = gland_bottom - p.disc_gap_mm
    muscle_back = muscle_front - p.muscle_thickness_mm
    lung_front = muscle_back - 2 * p.rib_radius_mm
    n_ribs = int(math.floor((p.half_width_mm - p.rib_radius_mm) / p.rib_spacing_mm))
    return EliotGeometry(
        rotation=rotation,
        surface_normal=rotation @ np.array([0.0, 0.0, 1.0]),
        gland_bottom_w_mm=float(gland_bottom),
        skin_inner_w_mm=float(-p.skin_thickness_mm),
        muscle_front_w_mm=float(muscle_front),
        muscle_back_w_mm=float(muscle_back),
        rib_centre_w_mm=float(muscle_back - p.rib_radius_mm),
        rib_centres_y_mm=tuple(float(k * p.rib_spacing_mm) for k in range(-n_ribs, n_ribs + 1)),
        rib_radius_mm=float(p.rib_radius_mm),
        lung_front_w_mm=float(lung_front),
        lung_back_w_mm=float(lung_front - p.lung_thickness_mm),
        target_radius_mm=float(p.target_radius_mm),
        skin_opening_radius_mm=float(p.skin_opening_radius_mm),
        half_width_mm=float(p.half_width_mm),
    )


def case_grid(params: EliotCaseParams, geometry: EliotGeometry) -> Grid:
    """Grid over the (rotated) region plus the margin; voxel centres at odd multiples of half
    the spacing (see the module docstring)."""
    hw = geometry.half_width_mm
    corners = np.array(
        [[x, y, w] for x in (-hw, hw) for y in (-hw, hw) for w in (geometry.lung_back_w_mm, 0.0)]
    )
    patient = geometry.to_patient(corners)
    lower = patient.min(axis=0) - params.grid_margin_mm
    upper = patient.max(axis=0) + params.grid_margin_mm
    s = params.spacing_mm
    first = (np.floor(lower / s - 0.5) + 0.5) * s
    last = (np.ceil(upper / s + 0.5) - 0.5) * s
    return Grid.from_bounds(first, last, s)


def _material_hu(g: EliotGeometry, labels: dict[str, np.ndarray], x, y, w) -> np.ndarray:
    """HU of the material at tissue-frame points (module docstring)."""
    m = MATERIAL_HU
    conditions = [~_tissue(g, x, y, w), labels["skin"], labels["gland"], labels["rib"]]
    conditions += [labels["lung"]]
    values = [m["air"], m["soft_tissue"], m["breast_tissue"], m["bone"], m["lung"]]
    return np.select(conditions, values, default=m["muscle"])


def _accumulate(params: EliotCaseParams, g: EliotGeometry, grid: Grid, centroids: bool):
    """Sub-sample counts (nz, ny, nx) per structure, with ``centroids`` their coordinate sums
    (nz, ny, nx, 3) (else None), and the HU sum over the sub-samples (nz, ny, nx)."""
    axes = [grid.axis_mm(a) for a in "xyz"]
    counts = {name: np.zeros(grid.shape_zyx, np.float32) for name in STRUCTURE_ORDER}
    # One contiguous array per coordinate, added to in place where the label holds (the same
    # sums as adding np.where(label, coordinate, 0), without the temporaries).
    sums = (
        {name: [np.zeros(grid.shape_zyx) for _ in range(3)] for name in STRUCTURE_ORDER}
        if centroids
        else None
    )
    hu_sum = np.zeros(grid.shape_zyx, np.float32)
    for ox, oy, oz in sub_offsets_mm(grid, params.supersampling):
        x = (axes[0] + ox)[None, None, :]
        y = (axes[1] + oy)[None, :, None]
        z = (axes[2] + oz)[:, None, None]
        r = g.rotation  # tissue frame = R^T p
        xt = r[0, 0] * x + r[1, 0] * y + r[2, 0] * z
        yt = r[0, 1] * x + r[1, 1] * y + r[2, 1] * z
        wt = r[0, 2] * x + r[1, 2] * y + r[2, 2] * z
        labels = _labels(g, xt, yt, wt)
        hu_sum += _material_hu(g, labels, xt, yt, wt)
        for name in STRUCTURE_ORDER:
            m = np.broadcast_to(labels[name], grid.shape_zyx)
            counts[name] += m
            if not centroids:
                continue
            for total, coord in zip(sums[name], (x, y, z), strict=True):
                np.add(total, coord, out=total, where=m)
    if centroids:
        sums = {name: np.stack(parts, axis=-1) for name, parts in sums.items()}
    return counts, sums, hu_sum


def _samples(counts, sums, n_sub: int, grid: Grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in STRUCTURE_ORDER:
        c = counts[name].ravel()
        has = c > 0
        pts = sums[name].reshape(-1, 3)[has] / c[has, None]
        out[name] = (pts, c[has].astype(np.float64) / n_sub * grid.voxel_volume_cm3)
    return out


def build_eliot_case(params: EliotCaseParams = EliotCaseParams()) -> tuple[Case, EliotGeometry]:
    """Build the ELIOT-type breast phantom.

    Returns:
        case: structures PTV_gland (target), skin, chest_wall, rib, lung (oar), gland (other) as
            fractional occupancies, and the HU of their materials (module docstring);
            ``case.info`` holds the params, the frame and a description.
        geometry: :class:`EliotGeometry`.
    """
    case, geometry, _ = _build(params, centroids=False)
    return case, geometry


def build_eliot_case_with_samples(
    params: EliotCaseParams = EliotCaseParams(),
) -> tuple[Case, EliotGeometry, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """:func:`build_eliot_case` plus, per structure, one point per voxel it touches (in the same
    pass): the centroid (mm) of its sub-samples in that voxel and the volume (cm^3) of its part
    of the voxel.

    Returns:
        case, geometry, samples: name -> (points (M, 3) mm, weights (M,) cm^3); the weights of a
        structure sum to its volume.
    """
    return _build(params, centroids=True)


def _build(params: EliotCaseParams, centroids: bool):
    geometry = eliot_geometry(params)
    grid = case_grid(params, geometry)
    counts, sums, hu_sum = _accumulate(params, geometry, grid, centroids)
    scale = np.float32(1.0 / params.supersampling**3)
    structures = tuple(
        Structure(name, STRUCTURE_ROLES[name], counts[name] * scale) for name in STRUCTURE_ORDER
    )
    info = {
        "phantom": "breast_eliot",
        "description": (
            f"ELIOT-type breast: mobilised gland {params.gland_thickness_mm:g} mm thick, target "
            f"cylinder of radius {params.target_radius_mm:g} mm about the tumour bed, skin "
            f"retracted beyond {params.skin_opening_radius_mm:g} mm, {params.disc_gap_mm:g} mm "
            "disc space, pectoral muscle, ribs and lung below; surface tilt "
            f"{params.surface_tilt_deg:g} deg."
        ),
        "frame": (
            "x, y, z mm; bed axis = z; gland surface = plane through the origin with outward "
            "normal +z tilted about x by surface_tilt_deg; beam from the +normal side"
        ),
        "surface_normal": geometry.surface_normal.tolist(),
        "patient_frame": copy.deepcopy(PATIENT_FRAME),
        "params": asdict(params),
    }
    samples = _samples(counts, sums, params.supersampling**3, grid) if centroids else None
    hu = hu_sum / np.float32(params.supersampling**3)
    return Case("breast_eliot", grid, structures, info, hu=hu), geometry, samples
