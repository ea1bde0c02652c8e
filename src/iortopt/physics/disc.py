"""Protective discs in a beam: ray/slab geometry and a transmission + backscatter dose factor.

A disc is a flat circular slab: ``centre_mm`` is the centre of its upstream face (the face toward
the source, where the tissue above it lies), ``normal`` the unit normal of that face pointing
toward the source, ``radius_mm`` and ``thickness_mm`` its size. Geometry is kept separate from
the material so that other beams (a photon point source, where each point has its own ray
direction) can reuse it: every function takes the ray direction per point, (..., 3) or (3,).

For a point p travelling along ray direction u (pointing away from the source):

- height h = n . (p - centre): signed distance (mm) above the upstream face, measured along the
  normal; the metal occupies -thickness < h < 0 and tissue beyond it has h <= -thickness;
- the shadow test uses the point where the ray through p crosses the upstream face plane,
  q = p - (h / (n . u)) u, and its distance rho = |q - centre| from the disc centre: the point is
  behind (or above) the disc when rho < radius.

Dose factor (the open-beam dose is multiplied by it)::

    f = 1 + m_lat * [ m_beyond * (T - 1) + (1 - m_beyond) * B * exp(-max(h, 0) / lambda) ]
    m_lat    = s_w(radius - rho)                  1 inside the disc's shadow, 0 outside
    m_beyond = s_w(-h - thickness / 2)            1 beyond the disc, 0 above it

with T the transmission, B the backscatter fraction at the upstream face and lambda its decay
length upstream (all per material and energy, from the beam data), and s_w a sigmoid-shaped step
of half-width w = ``edge_mm`` (:func:`soft_step`: C2, exactly 0 below -w and 1 above w). The
beyond/above switch is centred half-way through the metal, where there is no tissue: while
w < thickness / 2, tissue above the disc gets exactly 1 + B exp(-h / lambda) and tissue beyond it
exactly T; only the rim (rho within w of the radius) is blurred. As w -> 0 (``edge_mm = 0``
selects exact steps) the factor converges to the hard-edged model; for w > 0 it is continuously
differentiable in the disc's centre, normal and the points, so gradients with respect to the
disc's position, depth and tilt exist everywhere (through the rim band, the backscatter's
dependence on the height, and the switch band inside the metal).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

#: Rays meeting the plane more obliquely than this |cos| are treated as meeting it at this cosine
#: (keeps the crossing point finite for rays nearly parallel to the disc).
MIN_ABS_COS = 0.05


class Disc(NamedTuple):
    """Disc geometry (a JAX pytree): upstream-face centre (3,) mm, unit normal (3,) toward the
    source, radius mm (scalar), thickness mm (scalar)."""

    centre_mm: jnp.ndarray
    normal: jnp.ndarray
    radius_mm: jnp.ndarray
    thickness_mm: jnp.ndarray


def dot3(a, b) -> jnp.ndarray:
    """a . b over the last axis of length 3, written out (broadcasting): cheaper to compile and
    run on CPU than a reduction or a matrix product over an axis of 3."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def unit(v: jnp.ndarray) -> jnp.ndarray:
    """v / |v| over the last axis."""
    return v / jnp.sqrt(dot3(v, v))[..., None]


def height_mm(points_mm, plane_point_mm, normal) -> jnp.ndarray:
    """Signed distance (..., ) in mm of points (..., 3) from a plane, positive on the side the unit
    ``normal`` (3,) points to."""
    return dot3(points_mm - plane_point_mm, normal)


def ray_plane_crossing_mm(points_mm, directions, plane_point_mm, normal) -> jnp.ndarray:
    """Where the line through each point along its ray direction crosses a plane.

    Args:
        points_mm: (..., 3) points, mm.
        directions: (..., 3) or (3,) unit ray directions.
        plane_point_mm: (3,) a point of the plane, mm.
        normal: (3,) unit normal of the plane.
    Returns:
        (..., 3) crossing points, mm (for rays within ``MIN_ABS_COS`` of parallel to the plane,
        the crossing of a ray at that cosine: finite, and irrelevant to any real geometry).
    """
    h = height_mm(points_mm, plane_point_mm, normal)
    cos = dot3(directions, normal)
    safe = jnp.where(jnp.abs(cos) < MIN_ABS_COS, jnp.where(cos < 0, -MIN_ABS_COS, MIN_ABS_COS), cos)
    return points_mm - (h / safe)[..., None] * directions


def soft_step(x, width_mm: float):
    """Sigmoid-shaped step of half-width ``width_mm`` with compact support: 0 for x <= -w, 1 for
    x >= w, 1/2 at 0, and the quintic 6u^5 - 15u^4 + 10u^3 of u = (x + w) / (2 w) between (C2,
    so gradients and their finite differences behave). Outside the band the hard model holds
    exactly. ``width_mm`` = 0 (a Python float, fixed at trace time) gives the exact step."""
    if width_mm == 0:
        return jnp.where(x > 0, 1.0, jnp.where(x == 0, 0.5, 0.0)).astype(jnp.result_type(x))
    u = jnp.clip((x + width_mm) / (2.0 * width_mm), 0.0, 1.0)
    return u * u * u * (u * (6.0 * u - 15.0) + 10.0)


def shadow(points_mm, directions, disc: Disc, edge_mm: float):
    """Soft masks and height of points relative to a disc (geometry only).

    Returns:
        lateral: (...,) 1 where the ray through the point crosses the disc (inside its radius).
        beyond: (...,) 1 below the disc (far side along the beam), 0 above it.
        height: (...,) signed height h above the upstream face, mm.
    """
    normal = unit(jnp.asarray(disc.normal))
    centre = jnp.asarray(disc.centre_mm)
    h = height_mm(points_mm, centre, normal)
    q = ray_plane_crossing_mm(points_mm, directions, centre, normal)
    offset = q - centre
    rho = jnp.sqrt(dot3(offset, offset) + 1e-12)
    lateral = soft_step(disc.radius_mm - rho, edge_mm)
    beyond = soft_step(-h - 0.5 * disc.thickness_mm, edge_mm)
    return lateral, beyond, h


def disc_dose_factor(
    points_mm,
    directions,
    disc: Disc,
    transmission,
    backscatter_fraction,
    backscatter_decay_mm,
    edge_mm: float,
) -> jnp.ndarray:
    """Factor (...,) by which the open-beam dose at the points is multiplied (module docstring).

    Args:
        points_mm: (..., 3) points, mm.
        directions: (..., 3) or (3,) unit ray directions (away from the source).
        disc: the disc geometry.
        transmission: scalar T, dose beyond the disc / open-beam dose there.
        backscatter_fraction: scalar B, relative dose increase at the upstream face (0.05 = 5 %).
        backscatter_decay_mm: scalar lambda, e-folding length of the backscatter upstream, mm.
        edge_mm: edge width w, mm (a Python float; 0 = hard edges).
    """
    lateral, beyond, h = shadow(points_mm, directions, disc, edge_mm)
    above = backscatter_fraction * jnp.exp(-jnp.maximum(h, 0.0) / backscatter_decay_mm)
    return 1.0 + lateral * (beyond * (transmission - 1.0) + (1.0 - beyond) * above)
