"""Shields in a plan: from ``[[shields]]`` config entries to optimisable patches, constraints and
reports (the physics is :mod:`iortopt.physics.shield`).

Each shield's free variables are its pose on its surface, (u, v, rotation): the patch centre in
surface coordinates (mm) and, for plane rectangles, the in-plane rotation (rad), each kept inside
its allowed range by x = low + (high - low) sin^2(z) (the same bounded transform as the dwell
times); and its size, chosen from the catalogue by trying every size (:func:`choose_sizes`).
The distance constraint (every point of the shield at least ``min_target_distance_mm`` from the
target) is a smooth penalty on the target's distance map sampled at the centre and rim of the
patch.

This stage never sees the plan config: :func:`build_specs` gets the ``[[shields]]`` entries, the
modality and, for the case-defined surfaces, the built-in phantom's parameters, or, for surfaces
fitted to a structure (``surface = "roi"``, :mod:`iortopt.optimisation.roi_surface`), the
applicator points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from iortopt.cases.case import Case
from iortopt.errors import ConfigError, SourceDataError
from iortopt.optimisation.roi_surface import fit_face
from iortopt.physics import shield as sh
from iortopt.physics.shield_materials import SPECTRUM_OF_MODALITY, load_shield_materials

#: Weight of the distance penalty relative to the plan objective: large, so that the optimum sits
#: on the constraint rather than inside it; the penalty is (violation / 1 mm)^2.
DISTANCE_PENALTY_WEIGHT = 100.0
#: Extra margin (mm) of the envelope used to find the voxels a shield can ever affect.
ENVELOPE_MARGIN_MM = 2.0


@dataclass(frozen=True)
class ShieldSpec:
    """One shield ready for optimisation (numpy arrays; see ``iortopt.config.ShieldConfig``)."""

    name: str
    material: str
    shape: str  # rectangle | disc
    surface: str  # plane | cylinder (named surfaces resolved)
    surface_label: str  # as configured
    base: sh.Shield  # geometry with offset = the start position, half size = the first size
    half_sizes_mm: np.ndarray  # (K, 2) catalogue, half sizes along u and v (disc: radius twice)
    sizes_mm: tuple[tuple[float, ...], ...]  # catalogue as configured
    range_u_mm: tuple[float, float]
    range_v_mm: tuple[float, float]
    range_rotation_rad: tuple[float, float]  # absolute in-plane rotation range (plane only)
    optimise: bool
    min_target_distance_mm: float
    protects: tuple[str, ...]
    edge_mm: float
    table: sh.TransmissionTable
    materials_origin: str
    materials_illustrative: bool
    fitted: dict | None = None  # surface "roi": the structure, fit kind and quality

    @property
    def free(self) -> bool:
        """Whether the position is an optimisation variable (a non-empty range)."""
        return self.optimise and any(
            high > low for low, high in (self.range_u_mm, self.range_v_mm, self.range_rotation_rad)
        )


def _unit(v, what: str) -> np.ndarray:
    arr = np.asarray(v, np.float64)
    norm = float(np.linalg.norm(arr))
    if not norm > 0:
        raise ConfigError(f"{what}: must be a non-zero vector, got {list(v)}")
    return arr / norm


def _named_surface(s, flap, breast):
    """(surface, origin, axis_u, axis_w, radius) of a case-defined surface."""
    if s.surface == "behind_flap":
        if flap is None:
            raise ConfigError(f"shields {s.name!r}: surface 'behind_flap' needs the built-in flap")
        p = flap
        radius = p.surface_radius_mm - p.flap_thickness_mm - 0.5 * s.thickness_mm
        origin = (0.0, 0.0, p.surface_radius_mm)
        return "cylinder", origin, (1.0, 0.0, 0.0), (0.0, 0.0, -1.0), radius
    if s.surface == "chest_wall":
        if breast is None:
            raise ConfigError(f"shields {s.name!r}: surface 'chest_wall' needs the built-in breast")
        p = breast
        z = -(p.cavity_radius_mm + p.chest_wall_distance_mm) + 0.5 * s.thickness_mm
        return "plane", (0.0, 0.0, z), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0
    raise AssertionError(s.surface)


#: Margin (mm) added to a shield's reach for the default ``fit_radius_mm`` of a fitted surface.
FIT_RADIUS_MARGIN_MM = 10.0


def default_fit_radius_mm(s) -> float:
    """How far from the applicator's foot a shield can reach (mm): the largest half diagonal of
    its catalogue (a disc's radius), plus the farthest corner of its ranges, plus
    :data:`FIT_RADIUS_MARGIN_MM`."""
    if s.shape == "disc":
        half = max(d[0] / 2 for d in s.sizes_mm)
    else:
        half = max(math.hypot(d[0] / 2, d[1] / 2) for d in s.sizes_mm)
    du = max(abs(x) for x in s.range_u_mm)
    dv = max(abs(x) for x in s.range_v_mm)
    return half + math.hypot(du, dv) + FIT_RADIUS_MARGIN_MM


def applicator_centre_points_mm(case: Case, where: str) -> np.ndarray:
    """The applicator point(s) of a case that records none given by the modality: the case's
    ``info["applicator"]["centre_mm"]`` (the built-in breast), else the centroid of its cavity
    structures (ConfigError if neither)."""
    centre = case.info.get("applicator", {}).get("centre_mm") if case.info else None
    if centre is not None:
        return np.asarray(centre, np.float64).reshape(1, 3)
    weights = np.zeros(case.grid.shape_zyx)
    for cavity in case.cavities:
        weights += cavity.occupancy
    if float(weights.sum()) > 0:
        pts = case.grid.points_mm().reshape(-1, 3)
        return (weights.reshape(-1, 1) * pts).sum(0, keepdims=True) / float(weights.sum())
    raise ConfigError(
        f"{where}.surface: 'roi' needs the applicator's position: this plan gives none and the "
        "case has no cavity structure"
    )


def _roi_surface(s, case: Case, applicator_points_mm, where: str):
    """(surface, origin, axis_u, axis_w, radius, fit report) of a surface fitted to structure
    ``s.roi``: the slab's mid-surface half the thickness from the fitted face, toward the
    applicator."""
    if applicator_points_mm is None:
        applicator_points_mm = applicator_centre_points_mm(case, where)
    fit_radius = s.fit_radius_mm if s.fit_radius_mm is not None else default_fit_radius_mm(s)
    hint = None if s.axis_u is None else _unit(s.axis_u, f"{where}.axis_u")
    face = fit_face(
        case,
        s.roi,
        applicator_points_mm,
        s.fitted_surface,
        fit_radius_mm=fit_radius,
        axis_hint=hint,
        where=f"{where}.roi",
    )
    half = 0.5 * s.thickness_mm
    report = {
        "roi": s.roi,
        "fit": face.kind,
        "fit_radius_mm": float(fit_radius),
        "points": face.n_points,
        "rms_mm": round(face.rms_mm, 3),
    }
    if face.kind == "plane":
        origin = face.origin_mm + half * face.normal
        return "plane", tuple(origin), tuple(face.axis_u), tuple(face.normal), 0.0, report
    report["face_radius_mm"] = round(face.radius_mm, 3)
    radius = face.radius_mm + (half if face.applicator_outside else -half)
    if radius <= half:
        raise ConfigError(
            f"{where}.roi: the cylinder fitted to {s.roi!r} (radius {face.radius_mm:.1f} mm) is "
            "too tight for the sheet's thickness"
        )
    axes = tuple(face.axis_u), tuple(face.normal)
    return "cylinder", tuple(face.origin_mm), *axes, radius, report


def _explicit_surface(s, where: str):
    axis_u = _unit(s.axis_u, f"{where}.axis_u")
    axis_w = _unit(s.normal, f"{where}.normal")
    if abs(float(axis_u @ axis_w)) > 1e-6:
        raise ConfigError(f"{where}: axis_u must be perpendicular to normal")
    radius = float(s.radius_mm) if s.surface == "cylinder" else 0.0
    if s.surface == "cylinder" and radius <= 0.5 * s.thickness_mm:
        raise ConfigError(f"{where}.radius_mm: must exceed half the thickness")
    return s.surface, tuple(s.origin_mm), tuple(axis_u), tuple(axis_w), radius


def build_specs(
    shields: Sequence,
    case: Case,
    modality: str,
    dtype=jnp.float32,
    *,
    flap=None,
    breast=None,
    applicator_points_mm=None,
) -> list[ShieldSpec]:
    """Resolve every ``[[shields]]`` entry: surface, catalogue, material table, checks.

    Args:
        shields: the ``[[shields]]`` entries (``iortopt.config.ShieldConfig`` values).
        modality: the plan's modality (chooses the photon spectrum).
        flap: the built-in flap's parameters (``FlapCaseParams``), for ``behind_flap`` surfaces.
        breast: the built-in breast's parameters (``BreastCaseParams``), for ``chest_wall``.
        applicator_points_mm: (K, 3) the applicator's points in case mm (active dwell
            positions, a sphere's centre), for ``roi`` surfaces; default
            :func:`applicator_centre_points_mm` of the case.

    Raises:
        ConfigError / SourceDataError: naming ``shields.<i>`` and the field at fault.
    """
    specs = []
    spectrum = SPECTRUM_OF_MODALITY.get(modality)
    names = {st.name for st in case.structures}
    for i, s in enumerate(shields):
        where = f"shields.{i} ({s.name})"
        if spectrum is None:
            raise ConfigError(f"{where}: no photon spectrum for modality {modality!r}")
        try:
            materials = load_shield_materials(s.materials_file)
            table = materials.table(s.material, spectrum, dtype)
        except KeyError as exc:
            raise ConfigError(f"{where}.material: {exc.args[0]}") from None
        except SourceDataError as exc:
            raise ConfigError(f"{where}.materials_file: {exc}") from None
        unknown = [p for p in s.protects if p not in names]
        if unknown:
            raise ConfigError(
                f"{where}.protects: no structure {unknown} in the case; have {sorted(names)}"
            )
        fitted = None
        if s.surface in ("plane", "cylinder"):
            surface, origin, axis_u, axis_w, radius = _explicit_surface(s, where)
        elif s.surface == "roi":
            surface, origin, axis_u, axis_w, radius, fitted = _roi_surface(
                s, case, applicator_points_mm, where
            )
        else:
            surface, origin, axis_u, axis_w, radius = _named_surface(s, flap, breast)
        if s.shape == "disc":
            half = np.array([[d[0] / 2, d[0] / 2] for d in s.sizes_mm])
        else:
            half = np.array([[d[0] / 2, d[1] / 2] for d in s.sizes_mm])
        start = (0.5 * sum(s.range_u_mm), 0.5 * sum(s.range_v_mm))
        rotation = tuple(math.radians(s.rotation_deg + r) for r in s.rotation_range_deg)

        def f(x):
            return jnp.asarray(x, dtype)

        base = sh.Shield(
            f(origin),
            f(axis_u),
            f(axis_w),
            f(radius),
            f(start),
            f(0.5 * sum(rotation)),
            f(half[0]),
            f(s.thickness_mm),
        )
        specs.append(
            ShieldSpec(
                s.name,
                s.material,
                s.shape,
                surface,
                s.surface,
                base,
                half,
                tuple(tuple(x) for x in s.sizes_mm),
                tuple(s.range_u_mm),
                tuple(s.range_v_mm),
                rotation,
                s.optimise,
                s.min_target_distance_mm,
                tuple(s.protects),
                float(s.edge_mm),
                table,
                materials.origin,
                materials.illustrative,
                fitted,
            )
        )
    return specs


# ----------------------------------------------------------------------------------------------
# Variables
# ----------------------------------------------------------------------------------------------


def pose_ranges(specs: list[ShieldSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (S, 3) of the poses (u mm, v mm, rotation rad); fixed shields and
    fixed components have equal bounds."""

    def bounds(s, k):
        ranges = (s.range_u_mm, s.range_v_mm, s.range_rotation_rad)
        if not s.optimise:
            return [np.asarray(s.base.offset_mm, np.float64)[0], np.asarray(s.base.offset_mm,
                    np.float64)[1], float(s.base.rotation_rad)]  # fmt: skip
        return [r[k] for r in ranges]

    low = np.array([bounds(s, 0) for s in specs], np.float64).reshape(-1, 3)
    high = np.array([bounds(s, 1) for s in specs], np.float64).reshape(-1, 3)
    return low, high


def pose_from_z(z, low, high):
    """Poses (S, 3) (u mm, v mm, rotation rad) from the unconstrained variables (S, 3)."""
    return low + (high - low) * jnp.square(jnp.sin(z))


def z_from_pose(pose: np.ndarray, specs: list[ShieldSpec]) -> np.ndarray:
    """Inverse of :func:`pose_from_z` (nudged inside the ranges so gradients exist)."""
    low, high = pose_ranges(specs)
    span = np.where(high > low, high - low, 1.0)
    frac = np.clip((np.asarray(pose, np.float64) - low) / span, 1e-4, 1 - 1e-4)
    return np.arcsin(np.sqrt(frac))


def start_pose(specs: list[ShieldSpec]) -> np.ndarray:
    """(S, 3) the middle of every range (the configured position of a fixed shield)."""
    return np.array(
        [[*np.asarray(s.base.offset_mm, np.float64), float(s.base.rotation_rad)] for s in specs]
    ).reshape(-1, 3)


def shields_at(specs: list[ShieldSpec], pose, half_sizes_mm) -> list[sh.Shield]:
    """The shields at poses (S, 3) (u mm, v mm, rotation rad) with half sizes (S, 2) (arrays,
    differentiable)."""
    return [
        s.base._replace(
            offset_mm=pose[k, :2], rotation_rad=pose[k, 2], half_size_mm=half_sizes_mm[k]
        )
        for k, s in enumerate(specs)
    ]


def transmission_factor(src, pts, shields: list[sh.Shield], specs: list[ShieldSpec]):
    """Product over shields of the dose factor for segments src -> pts (broadcasting)."""
    factor = 1.0
    for shield, spec in zip(shields, specs, strict=True):
        factor = factor * sh.shield_factor(
            src, pts, shield, spec.table, spec.shape, spec.surface, spec.edge_mm
        )
    return factor


def envelope(spec: ShieldSpec) -> sh.Shield:
    """A rectangle patch containing every position and size this shield can take (hard edges),
    slightly thicker: a segment that misses it misses the shield for any pose."""
    half = spec.half_sizes_mm.max(axis=0) + spec.edge_mm + ENVELOPE_MARGIN_MM
    span = np.array(
        [
            spec.range_u_mm[1] - spec.range_u_mm[0],
            spec.range_v_mm[1] - spec.range_v_mm[0],
        ]
    )
    if spec.surface == "plane":  # any in-plane rotation: the circumscribed square
        half = np.full(2, float(np.hypot(*half)))
    centre = np.array([0.5 * sum(spec.range_u_mm), 0.5 * sum(spec.range_v_mm)])
    dt = spec.base.offset_mm.dtype
    return spec.base._replace(
        offset_mm=jnp.asarray(centre, dt),
        half_size_mm=jnp.asarray(half + 0.5 * span, dt),
        rotation_rad=jnp.asarray(0.0, dt),
        thickness_mm=spec.base.thickness_mm + ENVELOPE_MARGIN_MM,
    )


# ----------------------------------------------------------------------------------------------
# Distance to the target
# ----------------------------------------------------------------------------------------------


def target_distance_map_mm(case: Case, target: str) -> np.ndarray:
    """Distance (mm) of every voxel centre from the target (voxels with occupancy >= 0.5), 0
    inside it: sampled (trilinearly) at the shield's centre and rim."""
    inside = case.structure(target).occupancy >= 0.5
    sx, sy, sz = case.grid.spacing_xyz_mm
    return ndimage.distance_transform_edt(~inside, sampling=(sz, sy, sx)).astype(np.float32)


def sample_map(values: jnp.ndarray, grid, points_mm) -> jnp.ndarray:
    """Trilinear sample of a (nz, ny, nx) map at points (K, 3) mm (edge values outside)."""
    origin = jnp.asarray(grid.origin_xyz_mm, points_mm.dtype)
    spacing = jnp.asarray(grid.spacing_xyz_mm, points_mm.dtype)
    idx_xyz = (points_mm - origin) / spacing
    coords = [idx_xyz[:, 2], idx_xyz[:, 1], idx_xyz[:, 0]]
    return jax.scipy.ndimage.map_coordinates(values, coords, order=1, mode="nearest")


def distance_penalty(shields, specs, distance_map, grid) -> jnp.ndarray:
    """Sum over shields of mean((min distance - distance at centre/rim points)_+^2), in mm^2."""
    total = 0.0
    for shield, spec in zip(shields, specs, strict=True):
        if spec.min_target_distance_mm <= 0:
            continue
        pts = sh.patch_points_mm(shield, spec.shape, spec.surface)
        d = sample_map(distance_map, grid, pts)
        total = total + jnp.mean(jnp.square(jnp.maximum(spec.min_target_distance_mm - d, 0.0)))
    return total


def min_target_distance(shields, specs, distance_map: np.ndarray, grid) -> list[float]:
    """The smallest distance (mm) from the target over each shield's centre and rim points."""
    out = []
    for shield, spec in zip(shields, specs, strict=True):
        pts = sh.patch_points_mm(shield, spec.shape, spec.surface, n_per_side=16)
        out.append(float(jnp.min(sample_map(jnp.asarray(distance_map), grid, pts))))
    return out


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def describe(spec: ShieldSpec, shield: sh.Shield, size_index: int, min_distance_mm: float) -> dict:
    """Summary entry of one placed shield (world centre and normal, size, material, ...)."""
    centre = np.asarray(
        sh.surface_point_mm(shield, shield.offset_mm[0], shield.offset_mm[1], spec.surface)
    )
    if spec.surface == "cylinder":
        angle = float(shield.offset_mm[1] / shield.radius_mm)
        r1 = np.cross(np.asarray(shield.axis_u), np.asarray(shield.axis_w))
        normal = np.cos(angle) * np.asarray(shield.axis_w) + np.sin(angle) * r1
    else:
        normal = np.asarray(shield.axis_w)
    return {
        "name": spec.name,
        "material": spec.material,
        "thickness_mm": float(shield.thickness_mm),
        "shape": spec.shape,
        "surface": spec.surface_label,
        "size_mm": list(spec.sizes_mm[size_index]),
        "size_index": int(size_index),
        "offset_uv_mm": [float(x) for x in np.asarray(shield.offset_mm)],
        "centre_mm": [round(float(x), 3) for x in centre],
        "normal": [round(float(x), 6) for x in normal],
        "rotation_deg": math.degrees(float(shield.rotation_rad)),
        "min_target_distance_mm": round(min_distance_mm, 3),
        "required_min_target_distance_mm": spec.min_target_distance_mm,
        "distance_ok": bool(min_distance_mm >= spec.min_target_distance_mm - 0.5),
        "protects": list(spec.protects),
        "materials": spec.materials_origin,
        "materials_illustrative": spec.materials_illustrative,
        "optimised": spec.free,
        **({"fitted_surface": spec.fitted} if spec.fitted is not None else {}),
    }


def outline_points_mm(shield: sh.Shield, spec: ShieldSpec) -> np.ndarray:
    """Points (K, 3) mm on the patch boundary (and centre) for figures and the zarr store."""
    return np.asarray(sh.patch_points_mm(shield, spec.shape, spec.surface, n_per_side=12))


def surface_samples_mm(shield: sh.Shield, spec: ShieldSpec, step_mm: float = 0.5) -> np.ndarray:
    """Points (K, 3) mm covering the patch's mid-surface every ``step_mm`` (for figures)."""
    half = np.asarray(shield.half_size_mm, np.float64)
    reach = float(np.hypot(*half)) if spec.surface == "plane" else None
    extent = np.array([reach, reach]) if reach is not None else half
    a = np.arange(-extent[0], extent[0] + 1e-9, step_mm)
    b = np.arange(-extent[1], extent[1] + 1e-9, step_mm)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    offset = np.asarray(shield.offset_mm, np.float64)
    u, v = offset[0] + aa.ravel(), offset[1] + bb.ravel()
    inside = np.asarray(sh.patch_occupancy(u, v, shield, spec.shape, spec.surface, 0.0)) > 0.5
    return np.asarray(sh.surface_point_mm(shield, u[inside], v[inside], spec.surface))


#: Objectives within this relative tolerance of the best count as equal when choosing a size;
#: the smallest of them is chosen (the smallest sheet that does the job).
SIZE_TIE_RTOL = 1e-4


def choose_sizes(specs: list[ShieldSpec], trial, state):
    """Catalogue search, one shield at a time: every size of a shield with several is tried (the
    other shields at their current choice) and the lowest objective kept; ties (within
    :data:`SIZE_TIE_RTOL`) go to the smallest area.

    Args:
        trial: ``trial(size_index (S,), state) -> (objective, new_state)``; ``state`` is the best
            state so far (e.g. the variables to warm-start from).
    Returns:
        (size_index, state of the best trial (``state`` if nothing was tried), trial records).
    """
    size_index = np.zeros(len(specs), int)
    records = []
    for k, spec in enumerate(specs):
        if len(spec.half_sizes_mm) == 1:
            continue
        scored = []
        for j in range(len(spec.half_sizes_mm)):
            candidate = size_index.copy()
            candidate[k] = j
            value, new_state = trial(candidate, state)
            records.append({"shield": spec.name, "size_mm": list(spec.sizes_mm[j]),
                            "objective": float(value)})  # fmt: skip
            scored.append((float(value), j, new_state))
        best = min(v for v, _, _ in scored)
        area = [float(np.prod(h)) for h in spec.half_sizes_mm]
        ties = [c for c in scored if c[0] <= best + SIZE_TIE_RTOL * abs(best) + 1e-12]
        _, size_index[k], state = min(ties, key=lambda c: area[c[1]])
    return size_index, state, records


def half_sizes(specs: list[ShieldSpec], size_index) -> np.ndarray:
    """(S, 2) half sizes (mm) of the chosen catalogue entries."""
    return np.array([s.half_sizes_mm[k] for s, k in zip(specs, size_index, strict=True)])


#: Metrics of protected OARs compared with and without the shields.
OAR_METRICS = ("D2cc_gy", "D0.1cc_gy", "mean_gy", "max_gy")


def comparison_metrics(metrics: dict, specs: list[ShieldSpec], target: str, target_keys) -> dict:
    """The protected OARs' :data:`OAR_METRICS` and the target's ``target_keys`` from a plan's
    metrics (one column of ``shield_comparison``)."""
    protected = sorted({p for s in specs for p in s.protects})
    out = {n: {k: metrics[n][k] for k in OAR_METRICS} for n in protected}
    out[target] = {k: metrics[target][k] for k in target_keys}
    return out


def store_groups(specs: list[ShieldSpec], placed, size_index) -> dict[str, dict[str, np.ndarray]]:
    """zarr groups ``shield_<name>``: outline points (mm) and the placement of each shield."""
    return {
        f"shield_{spec.name}": {
            "outline_mm": outline_points_mm(shield, spec),
            "offset_uv_mm": np.asarray(shield.offset_mm, np.float64),
            "half_size_mm": np.asarray(shield.half_size_mm, np.float64),
            "size_index": np.asarray(int(k)),
        }
        for spec, shield, k in zip(specs, placed, size_index, strict=True)
    }


def figure_points(specs: list[ShieldSpec], placed) -> np.ndarray:
    """Points (K, 3) mm sampling every shield's surface, for the dose slices."""
    return np.concatenate(
        [surface_samples_mm(shield, spec) for shield, spec in zip(placed, specs, strict=True)]
    )
