"""Low-energy (50 kV) X-ray IORT with spherical applicators (Intrabeam type), in JAX.

Beam data file format (TOML, one beam = one source + its set of spheres per file)::

    [beam]
    name = "generic_50kV_spheres"        # identifier, recorded with every plan
    formalism = "TARGIT (Zeiss V4.0)"    # dosimetry formalism the numbers refer to (required:
                                         # surface doses for a nominal 20 Gy differ 7-10 %
                                         # between formalisms, so it is a named, recorded choice)
    illustrative = true                  # true for made-up / teaching data (required)
    citation = "..."                     # optional: where the numbers come from
    notes = "..."                        # optional

    [[applicator]]                       # one table per sphere, any order, distinct diameters
    diameter_cm = 3.0                    # sphere diameter, > 0
    surface_dose_rate_Gy_min = 0.8696    # dose rate in water at the applicator surface, > 0
    depth_mm = [0, 0.5, 1, ...]          # depth in water from the surface: starts at 0, strictly
                                         # increasing, reaches at least 40 mm
    relative_dose = [1, 0.86, ...]       # D(depth) / D(0): 1 at depth 0, > 0, strictly decreasing

The packaged ``generic_50kV_spheres`` file is ILLUSTRATIVE, NOT FOR CLINICAL USE: a smooth model
shaped by published facts (see ``scripts/make_generic_xray_data.py``).

Dose model
----------
For a sphere of radius ``a`` (mm) centred at ``c`` and a point ``p``, depth = |p - c| - a and

    D(p) = R(a) * t * f(depth; a) * [1 - anisotropy * max(0, cos(angle to shaft))^2]

with R(a) the surface dose rate (Gy/min), t the treatment time (min) and f the relative depth
dose. Dose is linear in time.

- Depth: ln f is interpolated linearly between the table's depths (log-linear, the natural form
  of a near-exponential fall-off) and extrapolated log-linearly beyond the last depth with the
  slope of the last interval.
- Radius: ln R and ln f (on a common depth axis) are interpolated linearly in radius between the
  catalogue spheres, so the dose is continuous in the radius and has finite derivatives with
  respect to radius, centre and time everywhere. At a catalogue radius the engine reproduces that
  sphere's table exactly; between two radii the dose at a given depth lies between theirs. Outside
  the catalogue's range of radii the nearest sphere's tables are used (no extrapolation; only the
  geometric depth still changes with the radius there).
- Inside the applicator (depth < 0) there is no tissue: the dose is 0 for depth <= -edge_mm and
  rises to the surface dose over the last ``edge_mm`` (0.1 mm by default) inside the surface with
  a C1 smoothstep. The tissue side is exact; the ramp keeps the dose continuous and
  differentiable in radius and centre when a point crosses the surface. Distances use a safe norm,
  so values and gradients are finite at the centre itself.
- Anisotropy: a simple ILLUSTRATIVE model of the dose deficit toward the probe shaft, a factor
  1 - anisotropy * max(0, cos(theta))^2 with theta the angle between (p - c) and ``shaft_axis``
  (the direction from the centre toward the shaft). 0 (default) is isotropic; the factor is 1 in
  the hemisphere away from the shaft. It is not fitted to any measurement.

Two layers, as in :mod:`iortopt.physics.tg43`: pointwise functions of depth
(:func:`relative_depth_dose`, :func:`depth_dose_gy`) and point-cloud wrappers
(:func:`sphere_dose_gy`, and :func:`catalogue_dose_gy` that evaluates many spheres in one vmapped
pass). They are jitted (``anisotropy`` and ``edge_mm`` are static) and compose with ``jax.grad``,
``jax.vmap`` and an outer ``jax.jit``; :class:`XrayBeam` is a pytree whose metadata is static.
Computations run in the points' dtype (float32 unless float64 points are passed with x64 on).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.data_checks import fail as _fail
from iortopt.io.data_checks import number as _number
from iortopt.io.data_checks import number_list, string
from iortopt.io.toml_file import packaged_names, read_packaged_or_file
from iortopt.physics.interpolate import nodes, uniform_axis

#: Depth tables must reach at least this depth (mm).
MIN_TABLE_DEPTH_MM = 40.0
#: |relative_dose[0] - 1| allowed.
NORMALISATION_TOLERANCE = 1e-3
#: Default width (mm) of the ramp inside the applicator surface (see the module docstring).
INSIDE_EDGE_MM = 0.1
#: Squared distance (mm^2) below which a point counts as the sphere centre.
_R2_FLOOR_MM2 = 1e-12


@dataclass(frozen=True)
class ApplicatorTable:
    """One sphere's published table, as read from the file (diameter cm, rate Gy/min, depth mm)."""

    diameter_cm: float
    surface_dose_rate_gy_min: float
    depth_mm: tuple[float, ...]
    relative_dose: tuple[float, ...]

    @property
    def radius_mm(self) -> float:
        return 5.0 * self.diameter_cm


@dataclass(frozen=True, eq=False)
class XrayBeam:
    """Device-ready tables of one beam file (a JAX pytree) plus its metadata.

    Array leaves (float64 numpy; cast to the points' dtype inside the kernels):
        radii_mm: (K,) catalogue sphere radii, increasing.
        log_surface_rate: (K,) ln of the surface dose rate in Gy/min.
        log_relative: (K, N) ln of the relative depth dose on the uniform depth nodes
            ``depth_first_mm + i / depth_inv_step`` (i < N), which contain every tabulated depth.
    Everything else is static metadata (hashable), so a beam can be passed through ``jax.jit``.
    """

    radii_mm: np.ndarray
    log_surface_rate: np.ndarray
    log_relative: np.ndarray
    depth_first_mm: float
    depth_inv_step: float
    name: str
    formalism: str
    illustrative: bool
    citation: str
    notes: str
    tables: tuple[ApplicatorTable, ...]
    path: str

    @property
    def diameters_cm(self) -> tuple[float, ...]:
        return tuple(t.diameter_cm for t in self.tables)

    @property
    def surface_dose_rates_gy_min(self) -> tuple[float, ...]:
        return tuple(t.surface_dose_rate_gy_min for t in self.tables)

    def index_of_diameter(self, diameter_cm: float) -> int:
        """Catalogue index of ``diameter_cm`` (within 1e-6 cm); ValueError if not in the beam."""
        for k, d in enumerate(self.diameters_cm):
            if abs(d - diameter_cm) < 1e-6:
                return k
        raise ValueError(
            f"diameter {diameter_cm} cm is not in beam {self.name!r} "
            f"(has {', '.join(f'{d:g}' for d in self.diameters_cm)} cm)"
        )


jax.tree_util.register_dataclass(
    XrayBeam,
    data_fields=["radii_mm", "log_surface_rate", "log_relative"],
    meta_fields=[
        "depth_first_mm",
        "depth_inv_step",
        "name",
        "formalism",
        "illustrative",
        "citation",
        "notes",
        "tables",
        "path",
    ],
)


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def _parse_applicator(origin: str, entry, index: int) -> ApplicatorTable:
    where = f"[[applicator]] #{index + 1}"
    if not isinstance(entry, dict):
        raise _fail(origin, where, "expected a table")
    diameter = _number(origin, entry, where, "diameter_cm")
    where = f"[[applicator]] #{index + 1} (diameter {diameter:g} cm)"
    rate = _number(origin, entry, where, "surface_dose_rate_Gy_min")
    depth = number_list(origin, entry, where, "depth_mm", min_len=2)
    rel = number_list(origin, entry, where, "relative_dose", min_len=2)
    if depth[0] != 0.0:
        raise _fail(origin, f"{where} depth_mm", f"must start at 0 mm, got {depth[0]}")
    steps = np.diff(depth)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0)) + 1
        raise _fail(
            origin, f"{where} depth_mm", f"must be strictly increasing (entry {k}: {depth[k]})"
        )
    if depth[-1] < MIN_TABLE_DEPTH_MM:
        raise _fail(
            origin,
            f"{where} depth_mm",
            f"must reach at least {MIN_TABLE_DEPTH_MM} mm, ends at {depth[-1]}",
        )
    if rel.shape != depth.shape:
        raise _fail(
            origin,
            f"{where} relative_dose",
            f"expected {depth.size} values (one per depth_mm), got {rel.size}",
        )
    if abs(rel[0] - 1.0) > NORMALISATION_TOLERANCE:
        raise _fail(origin, f"{where} relative_dose", f"must be 1 at depth 0, got {rel[0]}")
    if np.any(rel <= 0):
        raise _fail(origin, f"{where} relative_dose", "values must be > 0")
    if np.any(np.diff(rel) >= 0):
        k = int(np.argmax(np.diff(rel) >= 0)) + 1
        raise _fail(
            origin,
            f"{where} relative_dose",
            f"must be strictly decreasing with depth (entry {k} at {depth[k]} mm: {rel[k]})",
        )
    return ApplicatorTable(diameter, rate, tuple(depth.tolist()), tuple(rel.tolist()))


def _log_on_nodes(table: ApplicatorTable, depth_nodes_mm: np.ndarray) -> np.ndarray:
    """ln(relative dose) of one table on ``depth_nodes_mm``: linear between its depths, continued
    linearly beyond its last depth (exact for the engine's log-linear interpolation)."""
    depth = np.asarray(table.depth_mm)
    log_rel = np.log(np.asarray(table.relative_dose))
    values = np.interp(depth_nodes_mm, depth, log_rel)
    slope = (log_rel[-1] - log_rel[-2]) / (depth[-1] - depth[-2])
    beyond = depth_nodes_mm > depth[-1]
    values[beyond] = log_rel[-1] + slope * (depth_nodes_mm[beyond] - depth[-1])
    return values


def parse_xray_beam(doc: dict, origin: str = "<x-ray beam data>") -> XrayBeam:
    """Validate a parsed beam document (layout in the module docstring) and build the tables.

    Raises:
        SourceDataError: naming ``origin`` (the file), the section/applicator and the field.
    """
    beam = doc.get("beam")
    if not isinstance(beam, dict):
        raise _fail(origin, "[beam]", "section missing")
    name = string(origin, beam, "[beam]", "name", required=True)
    formalism = string(origin, beam, "[beam]", "formalism", required=True)
    if not isinstance(beam.get("illustrative"), bool):
        raise _fail(
            origin,
            "[beam] illustrative",
            f"expected true or false, got {beam.get('illustrative')!r}",
        )
    entries = doc.get("applicator")
    if not isinstance(entries, list) or not entries:
        raise _fail(origin, "[[applicator]]", "expected at least one [[applicator]] table")
    tables = sorted(
        (_parse_applicator(origin, e, i) for i, e in enumerate(entries)),
        key=lambda t: t.diameter_cm,
    )
    diameters = [t.diameter_cm for t in tables]
    if len(set(diameters)) != len(diameters):
        dup = next(d for d in diameters if diameters.count(d) > 1)
        raise _fail(origin, "[[applicator]] diameter_cm", f"diameter {dup:g} cm appears twice")

    knots = np.unique(np.concatenate([np.asarray(t.depth_mm) for t in tables]))
    axis = uniform_axis(knots)
    depth_nodes = nodes(axis)
    return XrayBeam(
        radii_mm=np.array([t.radius_mm for t in tables]),
        log_surface_rate=np.log(np.array([t.surface_dose_rate_gy_min for t in tables])),
        log_relative=np.stack([_log_on_nodes(t, depth_nodes) for t in tables]),
        depth_first_mm=float(axis.first),
        depth_inv_step=float(axis.inv_step),
        name=name,
        formalism=formalism,
        illustrative=bool(beam["illustrative"]),
        citation=string(origin, beam, "[beam]", "citation", required=False),
        notes=string(origin, beam, "[beam]", "notes", required=False),
        tables=tuple(tables),
        path=origin,
    )


def packaged_xray_beams() -> list[str]:
    """Names of the packaged beam files (without ``.toml``)."""
    return packaged_names("xray")


def load_xray_beam(path_or_name: str | Path) -> XrayBeam:
    """Load a beam: a packaged one by name (``"generic_50kV_spheres"``) or a TOML file by path.

    Raises:
        SourceDataError: unknown name, missing/unreadable file, or invalid content (the message
            names the file and the field).
    """
    doc, origin = read_packaged_or_file(path_or_name, "xray", SourceDataError, "x-ray beam")
    return parse_xray_beam(doc, origin)


# ----------------------------------------------------------------------------------------------
# Pointwise layer: functions of depth (mm) for one sphere radius (mm)
# ----------------------------------------------------------------------------------------------


def _tables(beam: XrayBeam, dtype):
    return (
        jnp.asarray(beam.radii_mm, dtype),
        jnp.asarray(beam.log_surface_rate, dtype),
        jnp.asarray(beam.log_relative, dtype),
    )


def log_surface_rate(radius_mm, beam: XrayBeam) -> jnp.ndarray:
    """ln of the surface dose rate (Gy/min) at ``radius_mm`` (scalar), linear in radius."""
    dtype = jnp.result_type(radius_mm, jnp.float32)
    radii, log_rate, _ = _tables(beam, dtype)
    return jnp.interp(jnp.asarray(radius_mm, dtype), radii, log_rate)


def surface_dose_rate_gy_min(radius_mm, beam: XrayBeam) -> jnp.ndarray:
    """Surface dose rate (Gy/min) of a sphere of ``radius_mm`` (scalar)."""
    return jnp.exp(log_surface_rate(radius_mm, beam))


def _log_relative_row(radius_mm, beam: XrayBeam, dtype) -> jnp.ndarray:
    """(N,) ln relative dose on the depth nodes for ``radius_mm`` (scalar), linear in radius."""
    radii, _, log_rel = _tables(beam, dtype)
    return jax.vmap(lambda column: jnp.interp(radius_mm, radii, column), in_axes=1)(log_rel)


def _interp_depth(row: jnp.ndarray, depth_mm: jnp.ndarray, beam: XrayBeam) -> jnp.ndarray:
    """Linear interpolation of ``row`` (on the uniform depth nodes) at ``depth_mm``; below the
    first node the first value, beyond the last the last interval continued."""
    u = jnp.maximum((depth_mm - beam.depth_first_mm) * beam.depth_inv_step, 0.0)
    i = jnp.minimum(jnp.floor(u), row.shape[0] - 2).astype(jnp.int32)
    t = u - i
    lo, hi = row[i], row[i + 1]
    return lo + t * (hi - lo)


@jax.jit
def relative_depth_dose(depth_mm, radius_mm, beam: XrayBeam) -> jnp.ndarray:
    """Relative depth dose f(depth; radius) in water, 1 at the surface (depth 0).

    Args:
        depth_mm: (...) depth from the applicator surface, mm (negative values give 1).
        radius_mm: scalar sphere radius, mm.
    Returns:
        (...) relative dose, dtype of ``depth_mm`` (at least float32).
    """
    depth = jnp.asarray(depth_mm, jnp.result_type(depth_mm, jnp.float32))
    radius = jnp.asarray(radius_mm, depth.dtype)
    return jnp.exp(_interp_depth(_log_relative_row(radius, beam, depth.dtype), depth, beam))


@jax.jit
def depth_dose_gy(depth_mm, radius_mm, time_min, beam: XrayBeam) -> jnp.ndarray:
    """Dose (Gy) in water at ``depth_mm`` (...) from a sphere of ``radius_mm`` irradiating for
    ``time_min`` (isotropic, no inside-applicator handling: depth < 0 gives the surface dose)."""
    depth = jnp.asarray(depth_mm, jnp.result_type(depth_mm, jnp.float32))
    radius = jnp.asarray(radius_mm, depth.dtype)
    log_dose = log_surface_rate(radius, beam).astype(depth.dtype) + _interp_depth(
        _log_relative_row(radius, beam, depth.dtype), depth, beam
    )
    return jnp.asarray(time_min, depth.dtype) * jnp.exp(log_dose)


def time_for_surface_dose_min(dose_gy: float, radius_mm: float, beam: XrayBeam) -> float:
    """Treatment time (min) that gives ``dose_gy`` at the applicator surface."""
    return float(dose_gy) / float(surface_dose_rate_gy_min(float(radius_mm), beam))


def time_for_depth_dose_min(
    dose_gy: float, depth_mm: float, radius_mm: float, beam: XrayBeam
) -> float:
    """Treatment time (min) that gives ``dose_gy`` at ``depth_mm`` (isotropic)."""
    per_min = depth_dose_gy(jnp.asarray(float(depth_mm)), float(radius_mm), 1.0, beam)
    return float(dose_gy) / float(per_min)


# ----------------------------------------------------------------------------------------------
# Point-cloud layer
# ----------------------------------------------------------------------------------------------


def _safe_norm(v: jnp.ndarray) -> jnp.ndarray:
    """|v| over the last axis with a finite (zero) gradient at v = 0."""
    r2 = jnp.sum(v * v, axis=-1)
    ok = r2 > _R2_FLOOR_MM2
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, r2, 1.0)), 0.0)


def _smoothstep(x: jnp.ndarray) -> jnp.ndarray:
    """0 for x <= 0, 1 for x >= 1, 3x^2 - 2x^3 between (C1)."""
    x = jnp.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@functools.partial(jax.jit, static_argnames=("anisotropy", "edge_mm"))
def sphere_dose_gy(
    points_mm,
    centre_mm,
    radius_mm,
    time_min,
    beam: XrayBeam,
    shaft_axis=None,
    anisotropy: float = 0.0,
    edge_mm: float = INSIDE_EDGE_MM,
) -> jnp.ndarray:
    """Dose (Gy) at points from one spherical applicator (model in the module docstring).

    Args:
        points_mm: (P, 3) points (x, y, z) in mm.
        centre_mm: (3,) applicator centre in mm.
        radius_mm: scalar applicator radius in mm (continuous; catalogue radii reproduce the
            tables exactly).
        time_min: scalar treatment time in minutes (dose is linear in it).
        beam: :class:`XrayBeam` tables.
        shaft_axis: (3,) direction from the centre toward the probe shaft (normalised here);
            needed only when ``anisotropy`` > 0.
        anisotropy: dose deficit on the shaft axis, in [0, 1); 0 = isotropic. A static (Python)
            float: the function is jitted and recompiles for a new value.
        edge_mm: width of the ramp inside the surface; points deeper inside than this get 0
            (static, like ``anisotropy``).
    Returns:
        (P,) dose in Gy, in the points' floating dtype (at least float32). Differentiable with
        respect to points, centre, radius and time; finite gradients everywhere.
    """
    if not 0.0 <= anisotropy < 1.0:
        raise ValueError(f"anisotropy must lie in [0, 1), got {anisotropy}")
    points = jnp.asarray(points_mm)
    dtype = jnp.result_type(points.dtype, jnp.float32)
    points = points.astype(dtype)
    centre = jnp.asarray(centre_mm, dtype)
    radius = jnp.asarray(radius_mm, dtype)
    offset = points - centre
    distance = _safe_norm(offset)
    depth = distance - radius
    dose = depth_dose_gy(jnp.maximum(depth, 0.0), radius, time_min, beam).astype(dtype)
    if edge_mm > 0:
        dose = dose * _smoothstep((depth + edge_mm) / edge_mm)
    else:
        dose = jnp.where(depth >= 0, dose, 0.0)
    if shaft_axis is not None and anisotropy != 0.0:
        axis = jnp.asarray(shaft_axis, dtype)
        axis = axis / jnp.linalg.norm(axis)
        cos = (offset @ axis) / jnp.where(distance > 0, distance, 1.0)
        dose = dose * (1.0 - anisotropy * jnp.square(jnp.maximum(cos, 0.0)))
    return dose


@functools.partial(jax.jit, static_argnames=("anisotropy", "edge_mm"))
def catalogue_dose_gy(
    points_mm,
    centres_mm,
    radii_mm,
    times_min,
    beam: XrayBeam,
    shaft_axis=None,
    anisotropy: float = 0.0,
    edge_mm: float = INSIDE_EDGE_MM,
) -> jnp.ndarray:
    """Dose (Gy) of K spheres at the same points, one vmapped pass.

    Args:
        points_mm: (P, 3) points in mm.
        centres_mm: (K, 3) centres in mm.
        radii_mm: (K,) radii in mm.
        times_min: (K,) treatment times in minutes.
    Returns:
        (K, P) dose in Gy; row k is :func:`sphere_dose_gy` of sphere k.
    """

    def one(centre, radius, time):
        return sphere_dose_gy(
            points_mm, centre, radius, time, beam, shaft_axis, anisotropy, edge_mm
        )

    return jax.vmap(one)(jnp.asarray(centres_mm), jnp.asarray(radii_mm), jnp.asarray(times_min))
