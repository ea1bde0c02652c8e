"""Photon shields (lead, tungsten): ray/slab path length, soft patch edges, broad-beam transmission.

A shield is a patch of a thin slab that lies on a surface:

- ``plane``: the mid-plane through ``origin_mm`` with unit normal ``axis_w``; surface coordinates
  (u, v) along ``axis_u`` and ``axis_w x axis_u``.
- ``cylinder``: the mid-surface is a cylinder of radius ``radius_mm`` about the axis through
  ``origin_mm`` along ``axis_u``; u is the axial coordinate and v the arc length at the mid radius,
  measured from the reference radial direction ``axis_w`` (positive toward ``axis_u x axis_w``).
  A lead sheet moulded onto the back of a curved flap is such a patch.

The slab is ``thickness_mm`` thick (half on each side of the mid-surface); the patch is a rectangle
(half sizes along u and v, optionally rotated in the plane) or a disc, centred at the surface
coordinates ``offset_mm``. All of these are arrays of a :class:`Shield` pytree, so the dose is
differentiable in the patch position, size and thickness.

Dose model for a photon point source at s and a voxel at p: the open (unshielded) dose is
multiplied by ``T(L)``, the broad-beam transmission of the material for the source's spectrum
after an effective path length L through the metal along the straight segment s -> p:

    L = sum over crossings k of  m_k * l_k

l_k is the exact length of the segment inside the (unbounded) slab or cylindrical shell for the
k-th crossing (one for a plane; up to two, entering and leaving, for a cylinder), and m_k is the
soft occupancy of the patch at the point where the segment crosses the mid-surface there:
a product of quintic steps (:func:`iortopt.physics.disc.soft_step`) of half-width ``edge_mm`` of
the distance inside the patch boundary. With ``edge_mm = 0`` the occupancy is exactly 0 or 1 and
the model is the hard-edged one; for ``edge_mm > 0`` the dose is continuously differentiable in
the patch position and size, and converges to the hard model as the width goes to zero.

What the model ignores (documented limits): (1) scatter changes: the metal replaces tissue, so
scatter generated behind and beside the shield is lost, and in front of it (on the source side)
high-Z backscatter raises the dose within a few mm (for Ir-192 a few % to ~10 % at the surface of
lead); broad-beam transmission data include forward scatter through the metal but not these
effects. (2) The rim: the lateral test is made where the ray crosses the mid-surface, so a ray
that enters through the face and leaves through the rim (or the reverse) is counted as wholly in
or wholly out; the band where this differs is thickness * tan(angle of incidence) / 2 wide.
(3) TG-43 / depth-dose data assume full water scatter: in the shadow of a thick shield the true
dose is dominated by scatter from unshielded tissue, which a transmission factor along the primary
ray does not see. Expected error: within ~10-20 % of the shielded dose in the shadow, larger close
to the shield; this is an order-of-magnitude estimate from the physics, not a validated figure,
and should be checked against Monte Carlo before clinical use.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from iortopt.physics.disc import dot3, soft_step
from iortopt.physics.fastmath import atan2_upper

SURFACES = ("plane", "cylinder")
SHAPES = ("rectangle", "disc")
#: Smallest |dh| (mm) between the ends of a segment across a plane, to keep divisions finite.
MIN_DH_MM = 1e-6
#: Floor of squared lengths (mm^2) under square roots, so gradients stay finite.
EPS_MM2 = 1e-12


class Shield(NamedTuple):
    """One shield (a JAX pytree; module docstring for the meaning of each field).

    origin_mm (3,), axis_u (3,) unit, axis_w (3,) unit and orthogonal to axis_u, radius_mm
    (cylinder mid radius; ignored for a plane), offset_mm (2,) patch centre (u, v), rotation_rad
    (in-plane rotation of the patch, plane only), half_size_mm (2,) (rectangle half sizes along
    the rotated u and v; a disc uses the first as its radius), thickness_mm.
    """

    origin_mm: jnp.ndarray
    axis_u: jnp.ndarray
    axis_w: jnp.ndarray
    radius_mm: jnp.ndarray
    offset_mm: jnp.ndarray
    rotation_rad: jnp.ndarray
    half_size_mm: jnp.ndarray
    thickness_mm: jnp.ndarray


class TransmissionTable(NamedTuple):
    """Broad-beam transmission of one material for one spectrum: ln T tabulated against the
    thickness (mm), T(0) = 1, non-increasing; interpolated linearly in ln T (exact for an
    exponential) and extrapolated with the slope of the last interval."""

    thickness_mm: jnp.ndarray
    log_transmission: jnp.ndarray


def cross3(a, b) -> jnp.ndarray:
    """a x b over the last axis of length 3 (broadcasting)."""
    return jnp.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def transmission(path_mm, table: TransmissionTable) -> jnp.ndarray:
    """Broad-beam transmission T after ``path_mm`` (>= 0) of metal (log-linear table)."""
    x, lt = table.thickness_mm, table.log_transmission
    inside = jnp.interp(path_mm, x, lt)
    slope = (lt[-1] - lt[-2]) / (x[-1] - x[-2])
    beyond = lt[-1] + slope * (path_mm - x[-1])
    return jnp.exp(jnp.where(path_mm > x[-1], beyond, inside))


def _clipped_overlap(lo, hi):
    """Length of [lo, hi] n [0, 1] (0 when empty)."""
    return jnp.maximum(jnp.minimum(hi, 1.0) - jnp.maximum(lo, 0.0), 0.0)


def _crossing_on_piece(t_cross, lo, hi):
    """Where the lateral test is made: the mid-surface crossing, moved onto the part of the piece
    that lies on the segment (when the segment starts or ends inside the metal)."""
    start = jnp.maximum(lo, 0.0)
    return jnp.clip(t_cross, start, jnp.maximum(jnp.minimum(hi, 1.0), start))


def _plane_pieces(src, pts, shield: Shield):
    """One crossing of a segment with the slab about a plane: (lengths (1, ...), u, v)."""
    n = shield.axis_w
    e1 = shield.axis_u
    e2 = cross3(n, e1)
    hs = dot3(src - shield.origin_mm, n)
    hp = dot3(pts - shield.origin_mm, n)
    dh = hp - hs
    dh = jnp.where(jnp.abs(dh) < MIN_DH_MM, jnp.where(dh < 0, -MIN_DH_MM, MIN_DH_MM), dh)
    half = 0.5 * shield.thickness_mm
    t_a = (-half - hs) / dh
    t_b = (half - hs) / dh
    seg = pts - src
    seg_len = jnp.sqrt(dot3(seg, seg) + EPS_MM2)
    lo, hi = jnp.minimum(t_a, t_b), jnp.maximum(t_a, t_b)
    length = seg_len * _clipped_overlap(lo, hi)
    t_mid = _crossing_on_piece(-hs / dh, lo, hi)
    rel = src + t_mid[..., None] * seg - shield.origin_mm
    return length[None], dot3(rel, e1)[None], dot3(rel, e2)[None]


def _cylinder_pieces(src, pts, shield: Shield):
    """Up to two crossings of a segment with a cylindrical shell: (lengths (2, ...), u, v)."""
    e = shield.axis_u
    r0 = shield.axis_w
    r1 = cross3(e, r0)
    rs = src - shield.origin_mm
    rs_perp = rs - dot3(rs, e)[..., None] * e
    seg = pts - src
    d_perp = seg - dot3(seg, e)[..., None] * e
    a = dot3(d_perp, d_perp) + EPS_MM2
    b = dot3(rs_perp, d_perp)
    c = dot3(rs_perp, rs_perp)
    t_min = -b / a
    rho2_min = c - b * b / a  # squared distance of the line from the axis

    def half_width(radius):
        return jnp.sqrt(jnp.maximum(radius * radius - rho2_min, 0.0) / a + EPS_MM2) - jnp.sqrt(
            EPS_MM2
        )

    half = 0.5 * shield.thickness_mm
    w_out = half_width(shield.radius_mm + half)
    w_in = half_width(jnp.maximum(shield.radius_mm - half, 0.0))
    w_mid = half_width(shield.radius_mm)
    seg_len = jnp.sqrt(dot3(seg, seg) + EPS_MM2)
    first = seg_len * _clipped_overlap(t_min - w_out, t_min - w_in)
    second = seg_len * _clipped_overlap(t_min + w_in, t_min + w_out)
    lengths = jnp.stack([first, second])
    t_cross = jnp.stack(
        [
            _crossing_on_piece(t_min - w_mid, t_min - w_out, t_min - w_in),
            _crossing_on_piece(t_min + w_mid, t_min + w_in, t_min + w_out),
        ]
    )
    rel = rs[None] + t_cross[..., None] * seg[None]
    u = dot3(rel, e)
    y, x = dot3(rel, r1), dot3(rel, r0)
    angle = atan2_upper(jnp.abs(y), x)
    v = shield.radius_mm * jnp.where(y < 0, -angle, angle)
    return lengths, u, v


def patch_occupancy(u, v, shield: Shield, shape: str, surface: str, edge_mm: float):
    """Soft occupancy (1 inside the patch, 0 outside) at surface coordinates (u, v) in mm."""
    du = u - shield.offset_mm[0]
    if surface == "cylinder":
        # arc difference wrapped to (-pi R, pi R]
        period = 2.0 * jnp.pi * shield.radius_mm
        dv = v - shield.offset_mm[1]
        dv = dv - period * jnp.round(dv / period)
        a, b = du, dv
    else:
        dv = v - shield.offset_mm[1]
        cos_r, sin_r = jnp.cos(shield.rotation_rad), jnp.sin(shield.rotation_rad)
        a = cos_r * du + sin_r * dv
        b = -sin_r * du + cos_r * dv
    if shape == "disc":
        rho = jnp.sqrt(a * a + b * b + EPS_MM2)
        return soft_step(shield.half_size_mm[0] - rho, edge_mm)
    return soft_step(shield.half_size_mm[0] - jnp.abs(a), edge_mm) * soft_step(
        shield.half_size_mm[1] - jnp.abs(b), edge_mm
    )


class Crossings(NamedTuple):
    """Where segments cross a shield's slab, independent of the patch's position, size and
    rotation on its surface: per crossing k (K = 1 for a plane, 2 for a cylinder) the length
    (mm) of the segment inside the unbounded slab/shell and the surface coordinates (u, v) of
    the point where the lateral test is made. Arrays (K, ...)."""

    length_mm: jnp.ndarray
    u_mm: jnp.ndarray
    v_mm: jnp.ndarray


def crossings(src, pts, shield: Shield, surface: str) -> Crossings:
    """:class:`Crossings` of the segments src -> pts (broadcasting (..., 3)) with the slab of
    ``shield`` (only its surface and thickness are used)."""
    src, pts = jnp.broadcast_arrays(src, pts)
    if surface == "cylinder":
        return Crossings(*_cylinder_pieces(src, pts, shield))
    if surface == "plane":
        return Crossings(*_plane_pieces(src, pts, shield))
    raise ValueError(f"surface must be one of {SURFACES}, got {surface!r}")


def occupied_length_mm(cross: Crossings, shield: Shield, shape: str, surface: str, edge_mm):
    """Effective path length (mm): each crossing's length times the patch occupancy there."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    occupancy = patch_occupancy(cross.u_mm, cross.v_mm, shield, shape, surface, edge_mm)
    return jnp.sum(cross.length_mm * occupancy, axis=0)


def path_length_mm(src, pts, shield: Shield, shape: str, surface: str, edge_mm: float):
    """Effective path length (mm) through the shield of the segments src -> pts.

    Args:
        src: (..., 3) source points (mm), broadcastable against ``pts``.
        pts: (..., 3) dose points (mm).
        shape / surface: static strings (:data:`SHAPES`, :data:`SURFACES`).
        edge_mm: soft-edge half-width (a Python float; 0 = hard edges).
    """
    return occupied_length_mm(crossings(src, pts, shield, surface), shield, shape, surface, edge_mm)


def shield_factor(src, pts, shield: Shield, table: TransmissionTable, shape, surface, edge_mm):
    """Dose factor T(L) in (0, 1] of one shield for the segments src -> pts."""
    return transmission(path_length_mm(src, pts, shield, shape, surface, edge_mm), table)


def surface_point_mm(shield: Shield, u, v, surface: str) -> jnp.ndarray:
    """World position (mm) of surface coordinates (u, v) on the shield's mid-surface."""
    u = jnp.asarray(u)[..., None]
    v = jnp.asarray(v)[..., None]
    if surface == "cylinder":
        r1 = cross3(shield.axis_u, shield.axis_w)
        angle = v / shield.radius_mm
        radial = jnp.cos(angle) * shield.axis_w + jnp.sin(angle) * r1
        return shield.origin_mm + u * shield.axis_u + shield.radius_mm * radial
    e2 = cross3(shield.axis_w, shield.axis_u)
    return shield.origin_mm + u * shield.axis_u + v * e2


def patch_outline_uv(shield: Shield, shape: str, surface: str, n_per_side: int = 4):
    """Surface coordinates (K, 2) of the patch centre and points on its boundary (mm)."""
    if shape == "disc":
        k = 4 * n_per_side
        angle = jnp.arange(k) * (2.0 * jnp.pi / k)
        a = shield.half_size_mm[0] * jnp.cos(angle)
        b = shield.half_size_mm[0] * jnp.sin(angle)
    else:
        s = jnp.linspace(-1.0, 1.0, n_per_side + 1)[:-1]
        ones = jnp.ones_like(s)
        a = jnp.concatenate([s, ones, -s, -ones]) * shield.half_size_mm[0]
        b = jnp.concatenate([-ones, s, ones, -s]) * shield.half_size_mm[1]
    a = jnp.concatenate([jnp.zeros(1, a.dtype), a])
    b = jnp.concatenate([jnp.zeros(1, b.dtype), b])
    if surface == "plane":
        cos_r, sin_r = jnp.cos(shield.rotation_rad), jnp.sin(shield.rotation_rad)
        a, b = cos_r * a - sin_r * b, sin_r * a + cos_r * b
    return jnp.stack([shield.offset_mm[0] + a, shield.offset_mm[1] + b], axis=-1)


def patch_points_mm(shield: Shield, shape: str, surface: str, n_per_side: int = 4):
    """World points (K, 3) of the patch centre and boundary on the mid-surface (mm)."""
    uv = patch_outline_uv(shield, shape, surface, n_per_side)
    return surface_point_mm(shield, uv[:, 0], uv[:, 1], surface)


def contains_hard(points_mm, shield: Shield, shape: str, surface: str) -> jnp.ndarray:
    """Whether points (..., 3) lie inside the hard-edged shield volume (a reference for tests and
    for drawing: the exact solid, not the crossing-point approximation)."""
    rel = points_mm - shield.origin_mm
    half = 0.5 * shield.thickness_mm
    if surface == "cylinder":
        e, r0 = shield.axis_u, shield.axis_w
        r1 = cross3(e, r0)
        u = dot3(rel, e)
        x0, x1 = dot3(rel, r0), dot3(rel, r1)
        rho = jnp.sqrt(x0 * x0 + x1 * x1)
        radial_ok = jnp.abs(rho - shield.radius_mm) <= half
        v = shield.radius_mm * jnp.arctan2(x1, x0)
    else:
        e1, n = shield.axis_u, shield.axis_w
        u = dot3(rel, e1)
        v = dot3(rel, cross3(n, e1))
        radial_ok = jnp.abs(dot3(rel, n)) <= half
    inside = patch_occupancy(u, v, shield, shape, surface, 0.0) > 0.5
    return radial_ok & inside
