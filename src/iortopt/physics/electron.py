"""Electron IORT (IOERT) with circular cones: beam data and a differentiable dose engine in JAX.

Beam data file format (TOML, one machine per file: its energies, cones and protective discs)::

    [beam]
    name = "generic_IOERT"              # identifier, recorded with every plan (required)
    machine = "..."                     # optional
    illustrative = true                 # true for made-up / teaching data (required)
    citation = "..."                    # optional
    notes = "..."                       # optional

    [cones]
    diameters_cm = [3, 4, ..., 10]      # cone diameters, > 0, strictly increasing
    bevels_deg = [0, 15, 30, 45]        # bevel angles, in [0, 60), strictly increasing, with 0

    [[energy]]                          # one per energy, distinct nominal energies
    nominal_MeV = 6                     # > 0
    virtual_source_distance_mm = 510    # virtual source to cone end, > 0 (inverse square)
    depth_mm = [0, 0.5, ...]            # depth in water: starts at 0, strictly increasing
    pdd_percent = [83, ...]             # broad-field central-axis PDD: >= 0, first value > 0,
                                        # largest value 100 (+-0.1), ends below 10 %
    penumbra_sigma_mm = [2, ...]        # Gaussian width of the lateral edges: > 0, one per depth

    [[output]]                          # one per (energy, bevel): every pair exactly once
    nominal_MeV = 6
    bevel_deg = 0
    cGy_per_MU = [0.99, ...]            # dose per MU (cGy/MU) on the central axis at the depth of
                                        # maximum, cone flush with water; one per cone diameter

    [[disc]]                            # protective disc materials (optional, any number)
    name = "Al2_Pb4"                    # distinct names
    description = "..."                 # optional
    thickness_mm = 6                    # > 0
    nominal_MeV = [4, 6, 9, 12]         # exactly the beam's energies, any order
    transmission = [...]                # dose beyond the disc / open dose there, in [0, 1]
    backscatter_percent = [...]         # dose increase at the disc's upstream face, in [0, 50)
    backscatter_decay_mm = [...]        # e-folding length of that increase upstream, > 0

The packaged ``generic_IOERT`` file is ILLUSTRATIVE, NOT FOR CLINICAL USE (see
``scripts/make_generic_electron_data.py``).

Geometry
--------
A cone is described by (all in mm, patient coordinates): ``end_mm`` the centre of its end face
(where the beam's central axis leaves the cone), ``axis`` the unit beam direction (into the
patient), ``toe`` a direction pointing to the long side of a bevelled end (only its part
perpendicular to the axis is used), its diameter (continuous; the aperture is a circle of that
diameter perpendicular to the axis) and its bevel angle b (from the catalogue). For a point p:

    z      = axis . (p - end_mm)                 along-axis coordinate from the end face's centre
    rho    = p - end_mm - z axis,  r = |rho|     lateral offset from the central axis
    z_end  = tan(b) (rho . toe_perp)             the bevelled end face at that lateral offset
    t      = distance from p back along -axis to the tissue surface (see "Surfaces")
    z_eff  = max(z - t, z_end)                   where tissue starts on the ray through p
    depth  = z - z_eff                           depth along the axis (negative: in air)

So depth is the distance along the beam axis from the tissue surface crossing of the ray through
the point parallel to the axis. Where the cone end is pressed into tissue (the surface lies on
the source side of the end face), the tissue is taken to conform to the end face and depth is
counted from it. The air gap on a ray is z_eff - z_end >= 0.

Dose model
----------
    D(p) = MU * OF(E, b, diam) * P_E(depth) * ISQ
           * L(r; a(z), s_E(depth)) / L(0; a(dmax), s_E(dmax)) * disc factor

- P_E: the energy's broad-field PDD / 100, interpolated linearly in depth; constant beyond the
  table (the bremsstrahlung tail); points in air (depth < 0) get 0, with the last
  ``edge_mm`` (0.1 mm) above the surface ramped (C1 smoothstep) so that the dose is continuous.
- ISQ = ((vsd + depth) / (vsd + z))^2: inverse square from the energy's virtual source, vsd mm
  behind the end face's centre. The PDD was measured with water flush on the end face, where a
  point at depth d is vsd + d from the source; an air gap (or the toe side of a bevelled end)
  puts it further away. It is 1 on the central axis of a flush cone.
- L(r; a, s) = [erf((a - r) / (sqrt(2) s)) + erf((a + r) / (sqrt(2) s))] / 2: a flat profile of
  radius a with error-function edges of Gaussian width s_E(depth) (the tabulated penumbra,
  widening with depth). This is the exact blur of a slit; for a circle it is the usual radial
  approximation, accurate while s << a. The field radius diverges from the virtual source:
  a(z) = (diameter / 2) (vsd + z) / vsd. Normalising by its central-axis value at dmax makes the
  central-axis dose at dmax of a flush cone exactly MU x OF; small cones lose dose at depth
  where the penumbra reaches the axis (loss of lateral equilibrium).
- OF: dose per MU (Gy/MU; the file gives cGy/MU) at dmax on the central axis, linear in the
  diameter between catalogue cones (the nearest cone's value outside the range).
- Bevel (a simple, ILLUSTRATIVE model): the end face is cut at b to the aperture, so it is the
  plane z = z_end. Laid flush on flat tissue (:func:`flush_pose`) the beam axis is oblique by b
  to the surface normal: depth along the axis is 1 / cos(b) times the perpendicular depth (the
  isodoses come closer to the surface by cos b), they follow the tilted surface, and the toe side
  is further from the virtual source than the heel side (ISQ), which skews the field toward the
  heel. The bevel's output change on the central axis is in OF; the PDD and penumbra are the
  energy's.
- Disc factor: :func:`iortopt.physics.disc.disc_dose_factor` with the material's transmission,
  backscatter and decay length at this energy. The shadow is cast along "scatter rays": inside
  the geometric field (r <= a(z)) rays parallel to the axis; outside it, the line from the field
  edge at the surface to the point, direction ~ depth * axis + (r - a(z)) * rho / r. Dose outside
  the geometric field at depth reached it by scattering outward from the field, so a point below
  the disc but just beyond its rim is still shadowed when that line crosses the disc (with
  parallel rays the penumbra tail below the rim would leak through as if the disc were not
  there). The direction is continuous at the field edge.

Dose is linear in MU. It is differentiable with respect to the cone's end position, axis, toe,
diameter and MU, the disc's geometry, and the points. Energy and bevel are catalogue indices
(integers): :func:`catalogue_dose_gy` evaluates many cones (any mix of energies, bevels and
poses) in one batched pass.

Surfaces
--------
The tissue surface is a pytree given with the case: :class:`PlaneSurface` (point, outward normal
toward the source side), :class:`SphereSurface` (a convex mound: tissue inside the sphere), or any
function ``depth(points (P, 3), axis (3,)) -> (P,)`` wrapped in :class:`SurfaceFunction` that
returns the distance from each point back along -axis to the surface (negative in air). For these
the depth is in water: the water-equivalent depth equals the geometric one.

A :class:`VoxelMedium` (a CT's tissue fraction and relative electron density on a regular grid,
:func:`voxel_medium`) also gives the water-equivalent depth. For each point p the ray back along
-axis, from p to the cone's end face, is sampled every ``step_mm`` (at most half the smallest voxel
spacing; a static number of steps covering the grid's diagonal), values trilinear between voxel
centres:

- the entry point is the outermost place on that segment where the tissue fraction crosses 0.5
  going outward (linear between samples), i.e. where the ray first enters the patient coming from
  the cone; if the tissue reaches the end face, the end face (cone pressed in). t = its distance
  from p is the geometric depth: the real entry point, so the real air gap (z_eff = z - t).
  A point with no tissue between it and the cone is in air (no dose).
- the water-equivalent depth is the integral from the entry to p of rho / max(f, 0.5), rho the
  relative electron density and f the tissue fraction: in a voxel cut by the skin (an air-tissue
  mix, rho ~ f) this is the tissue's own density, so the partial-volume ramp of the interpolation
  does not shorten the depth; inside the patient (f = 1) it is rho. Internal gas (f = 1, rho ~ 0)
  adds nothing: a low-density insert moves the dose deeper by its water-equivalent deficit.

The dose then uses the water-equivalent depth for the PDD and the penumbra, the geometric depth and
z for the inverse square, the air gap and the air ramp. The normalisation point of a voxel medium
is dmax (geometric) beyond the entry on the central axis, its dose per MU the engine's own value
there (:func:`reference_dose_per_mu_gy`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.data_checks import fail as _fail
from iortopt.io.data_checks import increasing as _increasing
from iortopt.io.data_checks import number as _number
from iortopt.io.data_checks import number_list as _number_list
from iortopt.io.data_checks import string as _string
from iortopt.io.toml_file import packaged_names, read_packaged_or_file
from iortopt.physics.disc import Disc, disc_dose_factor, dot3, unit
from iortopt.physics.interpolate import UniformAxis, interp1d, nodes, uniform_axis

#: |max(pdd_percent) - 100| allowed.
PDD_NORMALISATION_TOLERANCE = 0.1
#: The PDD table must fall below this (%) by its last depth (the range is tabulated).
PDD_END_BELOW_PERCENT = 10.0
#: Bevel angles must be below this (degrees).
MAX_BEVEL_DEG = 60.0
#: Default width (mm) of the ramp above the tissue surface (see the module docstring).
AIR_EDGE_MM = 0.1
#: Default edge width (mm) of the disc's soft edges.
DISC_EDGE_MM = 0.5
#: Smallest vsd + z (mm) used in the inverse square (points far behind the source get this).
_MIN_SOURCE_DISTANCE_MM = 1.0
_TINY = 1e-12


# ----------------------------------------------------------------------------------------------
# Data model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyTable:
    """One energy as read from the file (MeV, mm, %)."""

    nominal_mev: float
    virtual_source_distance_mm: float
    depth_mm: tuple[float, ...]
    pdd_percent: tuple[float, ...]
    penumbra_sigma_mm: tuple[float, ...]


@dataclass(frozen=True)
class DiscMaterial:
    """A protective disc material, values in the beam's energy order."""

    name: str
    description: str
    thickness_mm: float
    transmission: tuple[float, ...]
    backscatter_percent: tuple[float, ...]
    backscatter_decay_mm: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class ElectronBeam:
    """Device-ready tables of one beam file (a JAX pytree) plus its metadata.

    Array leaves (float64 numpy; cast to the points' dtype inside the kernels), with E energies
    (increasing), C cone diameters, B bevels, M disc materials and N depth nodes:
        pdd: (E, N) relative PDD (fraction, max 1) on the uniform depth nodes
            ``depth_axis`` (which contain every tabulated depth).
        sigma_mm: (E, N) penumbra width on the same nodes.
        vsd_mm: (E,) virtual source distances.
        dmax_mm: (E,) depth of the tabulated maximum.
        diameters_mm: (C,) cone diameters.
        bevels_deg: (B,) bevel angles.
        output_gy_per_mu: (E, B, C) dose per MU at dmax on the central axis.
        disc_transmission, disc_backscatter, disc_decay_mm: (M, E) (backscatter as a fraction).
        disc_thickness_mm: (M,).
    Everything else is static metadata, so a beam can be passed through ``jax.jit``.
    """

    pdd: np.ndarray
    sigma_mm: np.ndarray
    vsd_mm: np.ndarray
    dmax_mm: np.ndarray
    diameters_mm: np.ndarray
    bevels_deg: np.ndarray
    output_gy_per_mu: np.ndarray
    disc_transmission: np.ndarray
    disc_backscatter: np.ndarray
    disc_decay_mm: np.ndarray
    disc_thickness_mm: np.ndarray
    depth_axis: UniformAxis
    depth_last_mm: float
    name: str
    machine: str
    illustrative: bool
    citation: str
    notes: str
    energies_mev: tuple[float, ...]
    diameters_cm: tuple[float, ...]
    bevels: tuple[float, ...]
    tables: tuple[EnergyTable, ...]
    discs: tuple[DiscMaterial, ...]
    path: str

    def index_of_energy(self, energy_mev: float) -> int:
        """Index of ``energy_mev`` (within 1e-6 MeV); ValueError if the beam has no such energy."""
        return _index_of(self.energies_mev, energy_mev, "energy", "MeV", self.name)

    def index_of_bevel(self, bevel_deg: float) -> int:
        """Index of ``bevel_deg`` (within 1e-6 deg); ValueError if not in the beam."""
        return _index_of(self.bevels, bevel_deg, "bevel", "deg", self.name)

    def index_of_diameter(self, diameter_cm: float) -> int:
        """Index of the catalogue cone ``diameter_cm``; ValueError if not in the beam."""
        return _index_of(self.diameters_cm, diameter_cm, "cone diameter", "cm", self.name)

    def index_of_disc(self, name: str) -> int:
        """Index of the disc material ``name``; ValueError if the beam has none by that name."""
        names = [d.name for d in self.discs]
        if name not in names:
            raise ValueError(f"disc {name!r} is not in beam {self.name!r} (has {names})")
        return names.index(name)


def _index_of(values, value, what, unit_name, beam_name) -> int:
    for k, v in enumerate(values):
        if abs(v - float(value)) < 1e-6:
            return k
    have = ", ".join(f"{v:g}" for v in values)
    raise ValueError(
        f"{what} {value:g} {unit_name} is not in beam {beam_name!r} (has {have} {unit_name})"
    )


jax.tree_util.register_dataclass(
    ElectronBeam,
    data_fields=[
        "pdd",
        "sigma_mm",
        "vsd_mm",
        "dmax_mm",
        "diameters_mm",
        "bevels_deg",
        "output_gy_per_mu",
        "disc_transmission",
        "disc_backscatter",
        "disc_decay_mm",
        "disc_thickness_mm",
    ],
    meta_fields=[
        "depth_axis",
        "depth_last_mm",
        "name",
        "machine",
        "illustrative",
        "citation",
        "notes",
        "energies_mev",
        "diameters_cm",
        "bevels",
        "tables",
        "discs",
        "path",
    ],
)


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def _parse_cones(origin, doc) -> tuple[np.ndarray, np.ndarray]:
    cones = doc.get("cones")
    if not isinstance(cones, dict):
        raise _fail(origin, "[cones]", "section missing")
    diameters = _number_list(origin, cones, "[cones]", "diameters_cm")
    if np.any(diameters <= 0):
        raise _fail(origin, "[cones] diameters_cm", "values must be > 0")
    _increasing(origin, "[cones] diameters_cm", diameters)
    bevels = _number_list(origin, cones, "[cones]", "bevels_deg")
    if np.any(bevels < 0) or np.any(bevels >= MAX_BEVEL_DEG):
        raise _fail(origin, "[cones] bevels_deg", f"values must lie in [0, {MAX_BEVEL_DEG:g})")
    _increasing(origin, "[cones] bevels_deg", bevels)
    if bevels[0] != 0.0:
        raise _fail(origin, "[cones] bevels_deg", "must include 0 (the flat cone)")
    return diameters, bevels


def _parse_energy(origin, entry, index: int) -> EnergyTable:
    where = f"[[energy]] #{index + 1}"
    if not isinstance(entry, dict):
        raise _fail(origin, where, "expected a table")
    energy = _number(origin, entry, where, "nominal_MeV")
    where = f"[[energy]] #{index + 1} ({energy:g} MeV)"
    vsd = _number(origin, entry, where, "virtual_source_distance_mm")
    depth = _number_list(origin, entry, where, "depth_mm", min_len=2)
    if depth[0] != 0.0:
        raise _fail(origin, f"{where} depth_mm", f"must start at 0 mm, got {depth[0]:g}")
    _increasing(origin, f"{where} depth_mm", depth)
    per_depth = {}
    for key in ("pdd_percent", "penumbra_sigma_mm"):
        arr = _number_list(origin, entry, where, key)
        if arr.shape != depth.shape:
            raise _fail(
                origin,
                f"{where} {key}",
                f"expected {depth.size} values (one per depth_mm), got {arr.size}",
            )
        per_depth[key] = arr
    pdd, sigma = per_depth["pdd_percent"], per_depth["penumbra_sigma_mm"]
    if np.any(pdd < 0):
        raise _fail(origin, f"{where} pdd_percent", "values must be >= 0")
    if pdd[0] <= 0:
        raise _fail(origin, f"{where} pdd_percent", "the surface value (first) must be > 0")
    if abs(pdd.max() - 100.0) > PDD_NORMALISATION_TOLERANCE:
        raise _fail(
            origin, f"{where} pdd_percent", f"largest value must be 100 %, got {pdd.max():g}"
        )
    if pdd[-1] >= PDD_END_BELOW_PERCENT:
        raise _fail(
            origin,
            f"{where} pdd_percent",
            f"must fall below {PDD_END_BELOW_PERCENT:g} % by the last depth (the whole range "
            f"tabulated), ends at {pdd[-1]:g} % at {depth[-1]:g} mm",
        )
    if np.any(sigma <= 0):
        raise _fail(origin, f"{where} penumbra_sigma_mm", "values must be > 0")
    return EnergyTable(
        energy, vsd, tuple(depth.tolist()), tuple(pdd.tolist()), tuple(sigma.tolist())
    )


def _parse_outputs(origin, doc, energies, bevels, n_cones) -> np.ndarray:
    entries = doc.get("output")
    if not isinstance(entries, list) or not entries:
        raise _fail(origin, "[[output]]", "expected one [[output]] table per (energy, bevel)")
    table = np.full((len(energies), len(bevels), n_cones), np.nan)
    for i, entry in enumerate(entries):
        where = f"[[output]] #{i + 1}"
        if not isinstance(entry, dict):
            raise _fail(origin, where, "expected a table")
        energy = _number(origin, entry, where, "nominal_MeV")
        bevel = _number(origin, entry, where, "bevel_deg", low_ok=True)
        where = f"[[output]] #{i + 1} ({energy:g} MeV, bevel {bevel:g} deg)"
        ke = next((k for k, e in enumerate(energies) if abs(e - energy) < 1e-6), None)
        if ke is None:
            raise _fail(origin, f"{where} nominal_MeV", "no [[energy]] table has this energy")
        kb = next((k for k, b in enumerate(bevels) if abs(b - bevel) < 1e-6), None)
        if kb is None:
            raise _fail(origin, f"{where} bevel_deg", "not in [cones] bevels_deg")
        values = _number_list(origin, entry, where, "cGy_per_MU")
        if values.size != n_cones:
            raise _fail(
                origin,
                f"{where} cGy_per_MU",
                f"expected {n_cones} values (one per cone diameter), got {values.size}",
            )
        if np.any(values <= 0):
            raise _fail(origin, f"{where} cGy_per_MU", "values must be > 0")
        if not np.all(np.isnan(table[ke, kb])):
            raise _fail(origin, where, "appears twice")
        table[ke, kb] = values
    missing = np.argwhere(np.isnan(table[:, :, 0]))
    if missing.size:
        ke, kb = missing[0]
        raise _fail(
            origin,
            "[[output]]",
            f"missing the table for {energies[ke]:g} MeV, bevel {bevels[kb]:g} deg",
        )
    return table * 0.01  # cGy -> Gy


def _parse_disc(origin, entry, index: int, energies) -> DiscMaterial:
    where = f"[[disc]] #{index + 1}"
    if not isinstance(entry, dict):
        raise _fail(origin, where, "expected a table")
    name = _string(origin, entry, where, "name", required=True)
    where = f"[[disc]] #{index + 1} ({name})"
    thickness = _number(origin, entry, where, "thickness_mm")
    listed = _number_list(origin, entry, where, "nominal_MeV")
    order = []
    for e in energies:
        hits = np.flatnonzero(np.abs(listed - e) < 1e-6)
        if hits.size != 1:
            raise _fail(
                origin,
                f"{where} nominal_MeV",
                f"must list every beam energy once ({', '.join(f'{x:g}' for x in energies)} MeV)",
            )
        order.append(int(hits[0]))
    if listed.size != len(energies):
        raise _fail(origin, f"{where} nominal_MeV", "lists energies the beam does not have")
    values = {}
    for key in ("transmission", "backscatter_percent", "backscatter_decay_mm"):
        arr = _number_list(origin, entry, where, key)
        if arr.size != listed.size:
            raise _fail(
                origin,
                f"{where} {key}",
                f"expected {listed.size} values (one per nominal_MeV), got {arr.size}",
            )
        values[key] = arr[order]
    if np.any(values["transmission"] < 0) or np.any(values["transmission"] > 1):
        raise _fail(origin, f"{where} transmission", "values must lie in [0, 1]")
    if np.any(values["backscatter_percent"] < 0) or np.any(values["backscatter_percent"] >= 50):
        raise _fail(origin, f"{where} backscatter_percent", "values must lie in [0, 50)")
    if np.any(values["backscatter_decay_mm"] <= 0):
        raise _fail(origin, f"{where} backscatter_decay_mm", "values must be > 0")
    return DiscMaterial(
        name,
        _string(origin, entry, where, "description", required=False),
        thickness,
        tuple(values["transmission"].tolist()),
        tuple(values["backscatter_percent"].tolist()),
        tuple(values["backscatter_decay_mm"].tolist()),
    )


def parse_electron_beam(doc: dict, origin: str = "<electron beam data>") -> ElectronBeam:
    """Validate a parsed beam document (layout in the module docstring) and build the tables.

    Raises:
        SourceDataError: naming ``origin`` (the file), the section/entry and the field.
    """
    beam = doc.get("beam")
    if not isinstance(beam, dict):
        raise _fail(origin, "[beam]", "section missing")
    name = _string(origin, beam, "[beam]", "name", required=True)
    if not isinstance(beam.get("illustrative"), bool):
        raise _fail(
            origin,
            "[beam] illustrative",
            f"expected true or false, got {beam.get('illustrative')!r}",
        )
    diameters_cm, bevels = _parse_cones(origin, doc)
    entries = doc.get("energy")
    if not isinstance(entries, list) or not entries:
        raise _fail(origin, "[[energy]]", "expected at least one [[energy]] table")
    tables = sorted(
        (_parse_energy(origin, e, i) for i, e in enumerate(entries)), key=lambda t: t.nominal_mev
    )
    energies = [t.nominal_mev for t in tables]
    if len(set(energies)) != len(energies):
        dup = next(e for e in energies if energies.count(e) > 1)
        raise _fail(origin, "[[energy]] nominal_MeV", f"energy {dup:g} MeV appears twice")
    output = _parse_outputs(origin, doc, energies, bevels.tolist(), diameters_cm.size)
    disc_entries = doc.get("disc", [])
    if not isinstance(disc_entries, list):
        raise _fail(origin, "[[disc]]", "expected [[disc]] tables")
    discs = tuple(_parse_disc(origin, e, i, energies) for i, e in enumerate(disc_entries))
    names = [d.name for d in discs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _fail(origin, "[[disc]] name", f"disc {dup!r} appears twice")

    knots = np.unique(np.concatenate([np.asarray(t.depth_mm) for t in tables]))
    axis = uniform_axis(knots)
    depth_nodes = nodes(axis)
    last = float(knots[-1])

    def on_nodes(t: EnergyTable, values) -> np.ndarray:
        # Beyond a table's last depth its last value holds (np.interp's constant extension).
        return np.interp(depth_nodes, np.asarray(t.depth_mm), np.asarray(values))

    pdd = np.stack([on_nodes(t, t.pdd_percent) / max(t.pdd_percent) for t in tables])
    shape = (len(discs), len(tables))
    return ElectronBeam(
        pdd=pdd,
        sigma_mm=np.stack([on_nodes(t, t.penumbra_sigma_mm) for t in tables]),
        vsd_mm=np.array([t.virtual_source_distance_mm for t in tables]),
        dmax_mm=np.array([t.depth_mm[int(np.argmax(t.pdd_percent))] for t in tables]),
        diameters_mm=10.0 * diameters_cm,
        bevels_deg=bevels,
        output_gy_per_mu=output,
        disc_transmission=np.array([d.transmission for d in discs]).reshape(shape),
        disc_backscatter=0.01 * np.array([d.backscatter_percent for d in discs]).reshape(shape),
        disc_decay_mm=np.array([d.backscatter_decay_mm for d in discs]).reshape(shape),
        disc_thickness_mm=np.array([d.thickness_mm for d in discs]).reshape(len(discs)),
        depth_axis=axis,
        depth_last_mm=last,
        name=name,
        machine=_string(origin, beam, "[beam]", "machine", required=False),
        illustrative=bool(beam["illustrative"]),
        citation=_string(origin, beam, "[beam]", "citation", required=False),
        notes=_string(origin, beam, "[beam]", "notes", required=False),
        energies_mev=tuple(energies),
        diameters_cm=tuple(diameters_cm.tolist()),
        bevels=tuple(bevels.tolist()),
        tables=tuple(tables),
        discs=discs,
        path=origin,
    )


def packaged_electron_beams() -> list[str]:
    """Names of the packaged beam files (without ``.toml``)."""
    return packaged_names("electron")


def load_electron_beam(path_or_name: str | Path) -> ElectronBeam:
    """Load a beam: a packaged one by name (``"generic_IOERT"``) or a TOML file by path.

    Raises:
        SourceDataError: unknown name, missing/unreadable file, or invalid content (the message
            names the file and the field).
    """
    doc, origin = read_packaged_or_file(path_or_name, "electron", SourceDataError, "electron beam")
    return parse_electron_beam(doc, origin)


# ----------------------------------------------------------------------------------------------
# Surfaces
# ----------------------------------------------------------------------------------------------


class PlaneSurface(NamedTuple):
    """A flat tissue surface: a point on it (3,) mm and its unit normal (3,) pointing out of the
    tissue (toward the source side)."""

    point_mm: jnp.ndarray
    normal: jnp.ndarray


class SphereSurface(NamedTuple):
    """A convex tissue mound: tissue is inside the sphere of ``radius_mm`` about ``centre_mm``."""

    centre_mm: jnp.ndarray
    radius_mm: jnp.ndarray


@dataclass(frozen=True)
class SurfaceFunction:
    """Any surface: ``fn(points (P, 3), axis (3,)) -> (P,)`` distance (mm) from each point back
    along -axis to the tissue surface (negative in air). ``fn`` is static (hashable)."""

    fn: Callable = field(hash=True)


jax.tree_util.register_dataclass(SurfaceFunction, data_fields=[], meta_fields=["fn"])


#: Tissue fraction at which the ray enters the patient.
ENTRY_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class VoxelMedium:
    """A tissue surface and density from voxels (a JAX pytree; see "Surfaces" above).

    Array leaves: ``origin_xyz_mm`` (3,) the first voxel centre, ``spacing_xyz_mm`` (3,),
    ``values`` (nz, ny, nx, 2): the tissue fraction in [0, 1] and the relative electron density
    (to water). Static: ``step_mm`` (ray sampling step) and ``n_steps`` (samples per ray, enough
    for the grid's diagonal). Build it with :func:`voxel_medium`.
    """

    origin_xyz_mm: np.ndarray
    spacing_xyz_mm: np.ndarray
    values: np.ndarray
    step_mm: float
    n_steps: int


jax.tree_util.register_dataclass(
    VoxelMedium,
    data_fields=["origin_xyz_mm", "spacing_xyz_mm", "values"],
    meta_fields=["step_mm", "n_steps"],
)


def voxel_medium(
    origin_xyz_mm,
    spacing_xyz_mm,
    tissue_fraction,
    relative_electron_density,
    step_mm=None,
    max_ray_mm=None,
) -> VoxelMedium:
    """A :class:`VoxelMedium` from (nz, ny, nx) arrays on a regular grid (first voxel centre
    ``origin_xyz_mm``, ``spacing_xyz_mm``, mm). ``step_mm``: ray sampling step (default and
    maximum: half the smallest spacing). ``max_ray_mm``: the longest ray (point to end face) to
    be sampled (default: the grid's diagonal); a caller that knows the cone poses passes a
    tighter bound (:func:`longest_ray_mm`) to save steps. Longer rays are cut there.

    Raises:
        ValueError: arrays of different shapes, a non-finite or out-of-range value, a bad step.
    """
    body = np.asarray(tissue_fraction, np.float64)
    rho = np.asarray(relative_electron_density, np.float64)
    spacing = np.asarray(spacing_xyz_mm, np.float64)
    origin = np.asarray(origin_xyz_mm, np.float64)
    if body.ndim != 3 or body.shape != rho.shape:
        raise ValueError(
            f"tissue fraction {body.shape} and density {rho.shape} must be the same 3-D shape"
        )
    if spacing.shape != (3,) or origin.shape != (3,) or not np.all(spacing > 0):
        raise ValueError("origin_xyz_mm and spacing_xyz_mm must be 3 values, spacing > 0")
    if not (np.all(np.isfinite(body)) and np.all(np.isfinite(rho)) and np.all(np.isfinite(origin))):
        raise ValueError("voxel medium: nan or inf in the tissue fraction, density or origin")
    if np.any(body < 0) or np.any(body > 1) or np.any(rho < 0):
        raise ValueError("voxel medium: tissue fraction must lie in [0, 1], density be >= 0")
    half = 0.5 * float(spacing.min())
    step = half if step_mm is None else float(step_mm)
    if not 0 < step <= half + 1e-12:
        raise ValueError(f"step_mm must lie in (0, {half:g}] (half a voxel), got {step_mm}")
    extent = spacing * (np.asarray(body.shape[::-1]) - 1)
    longest = float(np.linalg.norm(extent)) if max_ray_mm is None else float(max_ray_mm)
    if not (np.isfinite(longest) and longest >= 0):
        raise ValueError(f"max_ray_mm must be a finite length >= 0, got {max_ray_mm}")
    n_steps = int(math.ceil(longest / step)) + 2
    return VoxelMedium(origin, spacing, np.stack([body, rho], axis=-1), step, n_steps)


def longest_ray_mm(corners_mm, end_mm, axis, toe, bevel_deg: float) -> float:
    """The longest ray from any point of a box (its corners (8, 3) mm) back along -axis to the
    end face of a cone (``end_mm``, unit ``axis``, ``toe``, bevel): z - z_end is linear in the
    point, so its maximum over the box is at a corner (numpy)."""
    corners = np.asarray(corners_mm, np.float64)
    axis = np.asarray(axis, np.float64)
    rel = corners - np.asarray(end_mm, np.float64)
    z = rel @ axis
    rho = rel - z[:, None] * axis
    toe = np.asarray(toe, np.float64)
    toe = toe - (toe @ axis) * axis
    norm = np.linalg.norm(toe)
    toe = toe / norm if norm > _TINY else np.zeros(3)
    return float(max(np.max(z - math.tan(math.radians(bevel_deg)) * (rho @ toe)), 0.0))


def _trilinear(medium: VoxelMedium, points_mm) -> jnp.ndarray:
    """(..., 2) tissue fraction and density at points (..., 3) mm, trilinear between voxel
    centres (the edge voxels' values beyond them)."""
    dtype = points_mm.dtype
    values = jnp.asarray(medium.values, dtype)
    shape_xyz = values.shape[:3][::-1]
    index = (points_mm - jnp.asarray(medium.origin_xyz_mm, dtype)) / jnp.asarray(
        medium.spacing_xyz_mm, dtype
    )
    upper = jnp.asarray([n - 1 for n in shape_xyz], dtype)
    index = jnp.clip(index, 0.0, upper)
    low = jnp.clip(jnp.floor(index), 0.0, jnp.maximum(upper - 1.0, 0.0))
    frac = index - low
    low = low.astype(jnp.int32)
    # the 8 corners as one gather from the flattened (voxel, 2) table
    corners = np.array([(dx, dy, dz) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)])
    index = jnp.minimum(low[..., None, :] + corners, jnp.asarray(shape_xyz, jnp.int32) - 1)
    flat = (index[..., 2] * shape_xyz[1] + index[..., 1]) * shape_xyz[0] + index[..., 0]
    fx, fy, fz = frac[..., 0], frac[..., 1], frac[..., 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    weights = jnp.stack(
        [gx * gy * gz, fx * gy * gz, gx * fy * gz, fx * fy * gz]
        + [gx * gy * fz, fx * gy * fz, gx * fy * fz, fx * fy * fz],
        axis=-1,
    )
    picked = values.reshape(-1, 2)[flat]
    return jnp.stack([_dot8(weights, picked[..., 0]), _dot8(weights, picked[..., 1])], axis=-1)


def _dot8(a, b):
    """Sum over the last axis of length 8 of a * b, written out (cheaper than a reduction)."""
    return sum(a[..., k] * b[..., k] for k in range(8))


def voxel_ray_depths_mm(medium: VoxelMedium, points_mm, axis, limit_mm):
    """Geometric and water-equivalent depth (P,) of each point below the entry point of its ray
    (module docstring, "Surfaces"): the ray runs from the point back along -axis for
    ``limit_mm`` (P,) (to the cone's end face). Points with no tissue on that segment get
    geometric depth -1 mm (in air) and water-equivalent depth 0."""
    dtype = points_mm.dtype
    step = jnp.asarray(medium.step_mm, dtype)
    limit = jnp.maximum(limit_mm, 0.0)

    def sample(s):
        v = _trilinear(medium, points_mm - s[:, None] * axis)
        body = v[..., 0]
        return body, v[..., 1] / jnp.maximum(body, ENTRY_FRACTION)

    body0, rho0 = sample(jnp.zeros_like(limit))
    zero = jnp.zeros_like(limit)
    init = (zero, body0, rho0, zero, -jnp.ones_like(limit), zero)

    def advance(carry, k):
        s_prev, body_prev, rho_prev, wet_prev, t_entry, wet_entry = carry
        s = jnp.minimum(k * step, limit)
        body, rho = sample(s)
        ds = s - s_prev
        outward = (body_prev >= ENTRY_FRACTION) & (body < ENTRY_FRACTION)
        f = (body_prev - ENTRY_FRACTION) / jnp.where(outward, body_prev - body, 1.0)
        t_entry = jnp.where(outward, s_prev + f * ds, t_entry)
        wet_entry = jnp.where(outward, wet_prev + f * ds * rho_prev, wet_entry)
        wet = wet_prev + 0.5 * ds * (rho_prev + rho)
        return (s, body, rho, wet, t_entry, wet_entry), None

    steps = jnp.arange(1, medium.n_steps + 1, dtype=dtype)
    (_, body_end, _, wet_end, t_entry, wet_entry), _ = jax.lax.scan(advance, init, steps)
    at_end = body_end >= ENTRY_FRACTION  # tissue up to the end face: the cone is pressed in
    return jnp.where(at_end, limit, t_entry), jnp.where(at_end, wet_end, wet_entry)


class RayDepths(NamedTuple):
    """Per-point depths (P,) mm precomputed on a :class:`VoxelMedium` by :func:`ray_depths` for
    given points and one cone pose (end, axis, toe, bevel): ``depth_mm`` the geometric distance
    back to the entry point, ``water_depth_mm`` the water-equivalent depth. Used as a surface,
    it saves marching the rays again for cones of other energies and diameters with the same
    pose; it is valid only for those points and that pose (and not differentiable in it)."""

    depth_mm: jnp.ndarray
    water_depth_mm: jnp.ndarray


def ray_depths(points_mm, cone: Cone, beam: ElectronBeam, medium: VoxelMedium) -> RayDepths:
    """:class:`RayDepths` of the points for ``cone``'s pose on ``medium``."""
    g = beam_geometry(jnp.asarray(points_mm), cone, beam, medium)
    return RayDepths(g["depth"], g["water_depth"])


def voxel_entry_gap_mm(medium: VoxelMedium, start_mm, axis) -> jnp.ndarray:
    """Distance (scalar, mm) from ``start_mm`` (3,) along +axis to where the tissue fraction
    first reaches 0.5 (0 if it starts in tissue; the grid's diagonal if never)."""
    dtype = start_mm.dtype
    s = jnp.arange(medium.n_steps + 1, dtype=dtype) * medium.step_mm
    body = _trilinear(medium, start_mm[None, :] + s[:, None] * axis)[:, 0]
    inside = body >= ENTRY_FRACTION
    k = jnp.argmax(inside)
    prev = jnp.maximum(k - 1, 0)
    f = (ENTRY_FRACTION - body[prev]) / jnp.where(k > 0, body[k] - body[prev], 1.0)
    gap = jnp.where(k > 0, s[prev] + f * medium.step_mm, 0.0)
    return jnp.where(jnp.any(inside), gap, s[-1])


def depth_below_surface_mm(surface, points_mm, axis) -> jnp.ndarray:
    """Distance (P,) in mm from each point back along -axis to the tissue surface.

    Positive in tissue, negative in air (the surface is further along the axis). For a sphere,
    rays that miss it are given the distance to their closest approach.
    """
    if isinstance(surface, PlaneSurface):
        normal = unit(jnp.asarray(surface.normal, points_mm.dtype))
        cos = jnp.minimum(dot3(normal, axis), -0.05)  # rays must enter the tissue
        return dot3(points_mm - surface.point_mm, normal) / cos
    if isinstance(surface, SphereSurface):
        rel = points_mm - surface.centre_mm
        b = dot3(rel, axis)
        disc = b * b - dot3(rel, rel) + jnp.square(surface.radius_mm)
        return b + jnp.sqrt(jnp.maximum(disc, 0.0) + _TINY)
    if isinstance(surface, SurfaceFunction):
        return surface.fn(points_mm, axis)
    raise TypeError(f"unknown surface type {type(surface).__name__}")


# ----------------------------------------------------------------------------------------------
# Cones and poses
# ----------------------------------------------------------------------------------------------


class Cone(NamedTuple):
    """One cone's beam (a JAX pytree; see the module docstring for the geometry).

    energy_index, bevel_index: int32 scalars into the beam's catalogue.
    diameter_mm, mu: scalars (cone diameter, monitor units).
    end_mm, axis, toe: (3,) end-face centre (mm), unit beam direction, toe direction.
    A batch of K cones has a leading K axis on every leaf.
    """

    energy_index: jnp.ndarray
    bevel_index: jnp.ndarray
    diameter_mm: jnp.ndarray
    end_mm: jnp.ndarray
    axis: jnp.ndarray
    toe: jnp.ndarray
    mu: jnp.ndarray


def rotate(v, about, angle_rad):
    """Rotate vectors (..., 3) by ``angle_rad`` about the unit vector ``about`` (3,) (Rodrigues)."""
    c, s = jnp.cos(angle_rad), jnp.sin(angle_rad)
    return v * c + jnp.cross(about, v) * s + about * dot3(about, v)[..., None] * (1.0 - c)


def flush_pose(surface_point_mm, surface_normal, bevel_deg: float, toe_direction):
    """Cone end centre, beam axis and toe for a cone laid flush on a flat surface.

    Args:
        surface_point_mm: (3,) where the central axis meets the surface (the end-face centre).
        surface_normal: (3,) outward unit normal of the surface.
        bevel_deg: bevel angle b.
        toe_direction: (3,) direction along the surface toward the toe (projected onto the
            surface plane here).
    Returns:
        end_mm (3,), axis (3,) = -cos(b) n + sin(b) t, toe (3,) = cos(b) t + sin(b) n, numpy
        float64: the bevelled end face then lies in the surface plane.
    """
    n = np.asarray(surface_normal, float)
    n = n / np.linalg.norm(n)
    t = np.asarray(toe_direction, float)
    t = t - (t @ n) * n
    t = t / np.linalg.norm(t)
    b = math.radians(float(bevel_deg))
    axis = -math.cos(b) * n + math.sin(b) * t
    toe = math.cos(b) * t + math.sin(b) * n
    return np.asarray(surface_point_mm, float), axis, toe


def field_radius_mm(diameter_mm, vsd_mm, z_mm):
    """Radius (mm) of the diverging field at along-axis distance ``z_mm`` from the end face."""
    return 0.5 * diameter_mm * (vsd_mm + z_mm) / vsd_mm


# ----------------------------------------------------------------------------------------------
# Pointwise layer
# ----------------------------------------------------------------------------------------------


def _float_dtype(*values):
    """Floating dtype of the values, at least float32 (``.dtype`` drops weak typing, so Python
    floats count as the default float: 64-bit with x64 on)."""
    return jnp.result_type(*(jnp.asarray(v).dtype for v in values), jnp.float32)


def _row(table: np.ndarray, index, dtype) -> jnp.ndarray:
    return jnp.asarray(table, dtype)[index]


def _interp_depth(row: jnp.ndarray, depth_mm, beam: ElectronBeam) -> jnp.ndarray:
    """``row`` (N,) on the depth nodes at ``depth_mm`` clipped to the table (constant beyond)."""
    return interp1d(beam.depth_axis, row, jnp.clip(depth_mm, 0.0, beam.depth_last_mm))


def relative_depth_dose(depth_mm, energy_index, beam: ElectronBeam) -> jnp.ndarray:
    """Broad-field PDD / 100 (max 1) of energy ``energy_index`` at ``depth_mm`` (...); depths
    below 0 give the surface value, beyond the table its last value."""
    depth = jnp.asarray(depth_mm, _float_dtype(depth_mm))
    return _interp_depth(_row(beam.pdd, energy_index, depth.dtype), depth, beam)


def penumbra_sigma_mm(depth_mm, energy_index, beam: ElectronBeam) -> jnp.ndarray:
    """Penumbra width (mm) of energy ``energy_index`` at ``depth_mm`` (...)."""
    depth = jnp.asarray(depth_mm, _float_dtype(depth_mm))
    return _interp_depth(_row(beam.sigma_mm, energy_index, depth.dtype), depth, beam)


def lateral_profile(r_mm, field_radius_mm_, sigma_mm) -> jnp.ndarray:
    """L(r; a, s) = [erf((a - r)/(sqrt2 s)) + erf((a + r)/(sqrt2 s))] / 2 (broadcasting)."""
    scale = 1.0 / (math.sqrt(2.0) * sigma_mm)
    return 0.5 * (
        jsp.erf((field_radius_mm_ - r_mm) * scale) + jsp.erf((field_radius_mm_ + r_mm) * scale)
    )


def inverse_square_factor(depth_mm, z_mm, vsd_mm) -> jnp.ndarray:
    """((vsd + depth) / (vsd + z))^2: air-gap / toe correction (module docstring)."""
    near = jnp.maximum(vsd_mm + depth_mm, _MIN_SOURCE_DISTANCE_MM)
    far = jnp.maximum(vsd_mm + z_mm, _MIN_SOURCE_DISTANCE_MM)
    return jnp.square(near / far)


def output_gy_per_mu(energy_index, bevel_index, diameter_mm, beam: ElectronBeam, dtype=None):
    """Dose per MU (Gy/MU) at dmax on the central axis, linear in the diameter (mm)."""
    dtype = dtype or _float_dtype(diameter_mm)
    table = jnp.asarray(beam.output_gy_per_mu, dtype)[energy_index, bevel_index]
    return jnp.interp(jnp.asarray(diameter_mm, dtype), jnp.asarray(beam.diameters_mm, dtype), table)


def _smoothstep(x):
    x = jnp.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------------------------
# Point-cloud layer
# ----------------------------------------------------------------------------------------------


def _safe_unit(v, fallback):
    n2 = dot3(v, v)[..., None]
    ok = n2 > _TINY
    return jnp.where(ok, v / jnp.sqrt(jnp.where(ok, n2, 1.0)), fallback)


def beam_geometry(points_mm, cone: Cone, beam: ElectronBeam, surface):
    """Per-point geometry of one cone (module docstring), all (P,) in mm.

    Returns:
        dict with ``z`` (along-axis from the end face's centre), ``r`` (lateral distance from the
        axis), ``rho`` (P, 3) (lateral offset vector), ``depth`` (along the axis below the tissue
        surface), ``water_depth`` (its water-equivalent length: the same array for analytic
        surfaces), ``air_gap`` (z_eff - z_end), and the unit ``axis`` (3,).
    """
    dtype = points_mm.dtype
    axis = unit(jnp.asarray(cone.axis, dtype))
    rel = points_mm - jnp.asarray(cone.end_mm, dtype)
    z = dot3(rel, axis)
    rho = rel - z[:, None] * axis
    r2 = dot3(rho, rho)
    r = jnp.where(r2 > _TINY, jnp.sqrt(jnp.where(r2 > _TINY, r2, 1.0)), 0.0)
    toe = jnp.asarray(cone.toe, dtype)
    toe = _safe_unit(toe - dot3(toe, axis) * axis, jnp.zeros(3, dtype))
    bevel = jnp.deg2rad(jnp.asarray(beam.bevels_deg, dtype)[cone.bevel_index])
    z_end = jnp.tan(bevel) * dot3(rho, toe)
    if isinstance(surface, (VoxelMedium, RayDepths)):
        if isinstance(surface, RayDepths):
            t, wet = (jnp.asarray(v, dtype) for v in surface)
        else:
            t, wet = voxel_ray_depths_mm(surface, points_mm, axis, z - z_end)
        z_eff = jnp.maximum(z - t, z_end)
        depth = z - z_eff
        wet = jnp.where(depth > 0, wet, depth)
    else:
        z_surface = z - depth_below_surface_mm(surface, points_mm, axis)
        z_eff = jnp.maximum(z_surface, z_end)
        depth = wet = z - z_eff
    return {
        "z": z,
        "r": r,
        "rho": rho,
        "depth": depth,
        "water_depth": wet,
        "air_gap": z_eff - z_end,
        "axis": axis,
    }


def scatter_directions(geometry: dict, field_radius_mm_) -> jnp.ndarray:
    """(P, 3) unit directions along which a disc's shadow is cast (module docstring).

    Args:
        geometry: :func:`beam_geometry` of the points.
        field_radius_mm_: (P,) geometric field radius a(z) at each point's z.
    """
    r = geometry["r"]
    excess = jnp.maximum(r - field_radius_mm_, 0.0)
    lateral = geometry["rho"] / jnp.where(r > 0, r, 1.0)[:, None]
    along = jnp.maximum(geometry["depth"], 1.0)  # > 0: keeps the direction defined at the surface
    return unit(along[:, None] * geometry["axis"] + excess[:, None] * lateral)


@functools.partial(jax.jit, static_argnames=("disc_edge_mm", "edge_mm"))
def cone_dose_gy(
    points_mm,
    cone: Cone,
    beam: ElectronBeam,
    surface,
    disc: Disc | None = None,
    disc_index=0,
    disc_edge_mm: float = DISC_EDGE_MM,
    edge_mm: float = AIR_EDGE_MM,
) -> jnp.ndarray:
    """Dose (Gy) at points from one cone (model in the module docstring).

    Args:
        points_mm: (P, 3) points (x, y, z) in mm.
        cone: :class:`Cone` (energy and bevel as catalogue indices).
        beam: :class:`ElectronBeam` tables.
        surface: the tissue surface (:class:`PlaneSurface`, :class:`SphereSurface`,
            :class:`SurfaceFunction` or :class:`VoxelMedium`; or :class:`RayDepths` of these
            points for this cone's pose).
        disc: optional protective disc (:class:`iortopt.physics.disc.Disc`); its material is
            ``beam.discs[disc_index]``.
        disc_edge_mm: width of the disc's soft edges (static; 0 = hard edges).
        edge_mm: width of the ramp above the tissue surface (static).
    Returns:
        (P,) dose in Gy, in the points' floating dtype (at least float32).
    """
    points = jnp.asarray(points_mm)
    dtype = jnp.result_type(points.dtype, jnp.float32)
    points = points.astype(dtype)
    g = beam_geometry(points, cone, beam, surface)
    e = cone.energy_index
    vsd = jnp.asarray(beam.vsd_mm, dtype)[e]
    dmax = jnp.asarray(beam.dmax_mm, dtype)[e]
    depth, water_depth = g["depth"], g["water_depth"]
    pdd_row = _row(beam.pdd, e, dtype)
    sigma_row = _row(beam.sigma_mm, e, dtype)
    diameter = jnp.asarray(cone.diameter_mm, dtype)
    radius = field_radius_mm(diameter, vsd, g["z"])
    lateral = lateral_profile(g["r"], radius, _interp_depth(sigma_row, water_depth, beam))
    reference = lateral_profile(
        0.0, field_radius_mm(diameter, vsd, dmax), _interp_depth(sigma_row, dmax, beam)
    )
    dose = (
        jnp.asarray(cone.mu, dtype)
        * output_gy_per_mu(e, cone.bevel_index, diameter, beam, dtype)
        * _interp_depth(pdd_row, water_depth, beam)
        * inverse_square_factor(depth, g["z"], vsd)
        * lateral
        / reference
    )
    if edge_mm > 0:
        dose = dose * _smoothstep((depth + edge_mm) / edge_mm)
    else:
        dose = jnp.where(depth >= 0, dose, 0.0)
    if disc is not None:
        disc = Disc(*(jnp.asarray(v, dtype) for v in disc))
        factor = disc_dose_factor(
            points,
            scatter_directions(g, radius),
            disc,
            jnp.asarray(beam.disc_transmission, dtype)[disc_index, e],
            jnp.asarray(beam.disc_backscatter, dtype)[disc_index, e],
            jnp.asarray(beam.disc_decay_mm, dtype)[disc_index, e],
            disc_edge_mm,
        )
        dose = dose * factor
    return dose


def reference_point_mm(cone: Cone, beam: ElectronBeam, surface) -> jnp.ndarray:
    """(3,) point on the central axis at depth dmax below the tissue surface (the normalisation
    point: the 100 % level of the open beam)."""
    axis = unit(jnp.asarray(cone.axis))
    end = jnp.asarray(cone.end_mm)
    z_eff = _central_axis_gap_mm(surface, end, axis)
    return end + (z_eff + jnp.asarray(beam.dmax_mm)[cone.energy_index]) * axis


def _central_axis_gap_mm(surface, end_mm, axis) -> jnp.ndarray:
    """Air gap (scalar, mm, >= 0) on the central axis from the end face to the tissue."""
    if isinstance(surface, VoxelMedium):
        return voxel_entry_gap_mm(surface, end_mm, axis)
    return jnp.maximum(-depth_below_surface_mm(surface, end_mm[None, :], axis)[0], 0.0)


def reference_dose_per_mu_gy(cone: Cone, beam: ElectronBeam, surface) -> jnp.ndarray:
    """Open-beam dose per MU (Gy/MU) at the normalisation point (:func:`reference_point_mm`):
    MU x this = the dose at dmax on the central axis, including any air-gap inverse square.

    The engine's formula evaluated on the axis (r = 0, depth = dmax, z = air gap + dmax), written
    out so that it is cheap inside an optimiser; equal to :func:`cone_dose_gy` with MU = 1 at
    that point. For a :class:`VoxelMedium` it is that engine evaluation.
    """
    dtype = _float_dtype(cone.end_mm, cone.axis, cone.diameter_mm)
    axis = unit(jnp.asarray(cone.axis, dtype))
    end = jnp.asarray(cone.end_mm, dtype)
    if isinstance(surface, VoxelMedium):
        return _voxel_reference_dose_per_mu_gy(cone, beam, surface, dtype)
    e = cone.energy_index
    vsd = jnp.asarray(beam.vsd_mm, dtype)[e]
    dmax = jnp.asarray(beam.dmax_mm, dtype)[e]
    gap = jnp.maximum(-depth_below_surface_mm(surface, end[None, :], axis)[0], 0.0)
    z = gap + dmax
    sigma = _interp_depth(_row(beam.sigma_mm, e, dtype), dmax, beam)
    diameter = jnp.asarray(cone.diameter_mm, dtype)
    lateral = lateral_profile(0.0, field_radius_mm(diameter, vsd, z), sigma)
    reference = lateral_profile(0.0, field_radius_mm(diameter, vsd, dmax), sigma)
    output = output_gy_per_mu(e, cone.bevel_index, diameter, beam, dtype)
    pdd = _interp_depth(_row(beam.pdd, e, dtype), dmax, beam)
    return output * pdd * inverse_square_factor(dmax, z, vsd) * lateral / reference


@functools.partial(jax.jit, static_argnames=("dtype",))
def _voxel_reference_dose_per_mu_gy(cone: Cone, beam: ElectronBeam, medium: VoxelMedium, dtype):
    """The engine at the normalisation point (open beam, MU = 1): its water-equivalent depth
    depends on the densities there."""
    point = reference_point_mm(cone, beam, medium).astype(dtype)
    open_cone = cone._replace(mu=jnp.asarray(1.0, dtype))
    return cone_dose_gy(point[None, :], open_cone, beam, medium)[0]


def mu_for_dose(dose_gy: float, cone: Cone, beam: ElectronBeam, surface) -> float:
    """MU that give ``dose_gy`` at the normalisation point (open beam)."""
    return float(dose_gy) / float(reference_dose_per_mu_gy(cone, beam, surface))


@functools.partial(jax.jit, static_argnames=("disc_edge_mm", "edge_mm", "batch_size"))
def catalogue_dose_gy(
    points_mm,
    cones: Cone,
    beam: ElectronBeam,
    surface,
    discs: Disc | None = None,
    disc_index=0,
    disc_edge_mm: float = DISC_EDGE_MM,
    edge_mm: float = AIR_EDGE_MM,
    batch_size: int = 8,
) -> jnp.ndarray:
    """Dose (Gy) of K cones (and K disc placements) at the same points, in one batched pass.

    Args:
        points_mm: (P, 3) points in mm.
        cones: :class:`Cone` with a leading K axis on every leaf (any mix of energies, bevels,
            diameters, poses and MU).
        discs: :class:`Disc` with a leading K axis, or None (no disc).
        batch_size: cones evaluated together (vmapped) per step of a sequential map, which
            bounds the memory to about batch_size x P values per intermediate.
    Returns:
        (K, P) dose in Gy; row k equals :func:`cone_dose_gy` of cone k (and disc k).
    """

    def one(args):
        cone, disc = args
        return cone_dose_gy(points_mm, cone, beam, surface, disc, disc_index, disc_edge_mm, edge_mm)

    return jax.lax.map(one, (cones, discs), batch_size=batch_size)
