"""Protective disc: transmission beyond, backscatter above, smooth edges (iortopt.physics.disc).

Published (JACMP PMC5713149, abstract): a 2 mm Al + 4 mm Pb breast disc absorbs the electron beam
completely at every energy, and backscatter raises the maximum dose by 3-9 %, energy dependent.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.physics import electron as el
from iortopt.physics.disc import Disc, disc_dose_factor, ray_plane_crossing_mm

T, B, LAMBDA = 0.01, 0.05, 2.0
DOWN = jnp.array([0.0, 0.0, -1.0])  # the beam direction
FLAT_DISC = Disc(
    jnp.array([0.0, 0.0, -20.0]), jnp.array([0.0, 0.0, 1.0]), jnp.asarray(40.0), jnp.asarray(6.0)
)


_PAD = 4096


@functools.partial(jax.jit, static_argnames="edge_mm")
def _factor_padded(points, disc, directions, edge_mm):
    return disc_dose_factor(points, directions, disc, T, B, LAMBDA, edge_mm)


def _factor(points, disc=FLAT_DISC, edge_mm=0.5, directions=DOWN):
    """Factor at up to 4096 points (padded: one compilation per edge width)."""
    pts = np.asarray(points, float).reshape(-1, 3)
    padded = np.zeros((_PAD, 3))
    padded[: len(pts)] = pts
    out = _factor_padded(jnp.asarray(padded), disc, directions, edge_mm)
    return np.asarray(out)[: len(pts)]


def test_transmission_beyond_the_disc():
    # Beyond the bottom face (h <= -6), inside the radius, away from the edge.
    pts = [[0, 0, -26.0], [10, -5, -30.0], [-25, 20, -60.0], [0, 0, -26.5]]
    np.testing.assert_allclose(_factor(pts), T, rtol=1e-12)


def test_backscatter_above_the_disc_decays_upstream():
    heights = np.array([0.0, 1.0, LAMBDA, 5.0, 10.0])
    pts = np.stack([0 * heights, 0 * heights + 3.0, -20.0 + heights], axis=-1)
    expected = 1.0 + B * np.exp(-heights / LAMBDA)
    np.testing.assert_allclose(_factor(pts), expected, rtol=1e-12)
    assert _factor([[0, 0, 10.0]])[0] == pytest.approx(1.0, abs=1e-6)  # far above: no effect


def test_no_change_far_lateral():
    pts = [[55.0, 0, -30.0], [0, -52.0, -19.0], [40.0, 40.0, -26.0], [0, 60.0, -80.0]]
    np.testing.assert_allclose(_factor(pts), 1.0, atol=1e-8)


def test_hard_edge_limit():
    rng = np.random.default_rng(0)
    pts = rng.uniform([-60, -60, -40], [60, 60, 0], (4000, 3))
    h = pts[:, 2] + 20.0
    rho = np.hypot(pts[:, 0], pts[:, 1])
    inside = rho < 40.0
    hard = np.where(
        inside & (h < -3.0), T, np.where(inside, 1.0 + B * np.exp(-np.maximum(h, 0) / LAMBDA), 1.0)
    )
    np.testing.assert_allclose(_factor(pts, edge_mm=0.0), hard, rtol=1e-12)
    # Away from the edges (0.05 mm from the rim and from the switch at mid-thickness) the smooth
    # factor converges to the hard one as the width goes to 0.
    away = (np.abs(rho - 40.0) > 0.05) & (np.abs(h + 3.0) > 0.05)
    errors = [np.abs(_factor(pts, edge_mm=w) - hard)[away].max() for w in (0.5, 0.1, 0.04, 0.01)]
    assert errors[0] > errors[1] > errors[2] and errors[-1] < 1e-15
    # Tissue (outside the metal, beyond the rim band) sees exactly the hard model at the default
    # width: the switch sits half-way through the 6 mm of metal.
    tissue = ((h >= 0) | (h <= -6)) & (np.abs(rho - 40.0) > 0.5)
    np.testing.assert_allclose(_factor(pts, edge_mm=0.5)[tissue], hard[tissue], rtol=1e-12)


def test_tilted_disc_shadow_follows_the_ray():
    angle = math.radians(20.0)
    normal = jnp.array([0.0, math.sin(angle), math.cos(angle)])
    disc = Disc(jnp.array([0.0, 0.0, -20.0]), normal, jnp.asarray(30.0), jnp.asarray(6.0))
    # Straight below the centre, well beyond the tilted metal: transmission.
    assert _factor([[0, 0, -40.0]], disc)[0] == pytest.approx(T, rel=1e-5)
    # The ray through (0, y, z) crosses the tilted plane at z_c = -20 - y tan(20 deg): a point
    # below the plane whose crossing lies at 28 mm from the centre is shadowed, at 32 mm it is not.
    for rho_along_plane, expected in ((28.0, T), (32.0, 1.0)):
        y = rho_along_plane * math.cos(angle)
        z = -20.0 - y * math.tan(angle) - 12.0
        got = _factor([[0.0, y, z]], disc)[0]
        assert got == pytest.approx(expected, rel=1e-3), rho_along_plane
    crossing = np.asarray(
        ray_plane_crossing_mm(jnp.array([[0.0, 5.0, -50.0]]), DOWN, disc.centre_mm, normal)
    )
    assert crossing[0, 2] == pytest.approx(-20.0 - 5.0 * math.tan(angle))


def test_gradients_wrt_disc_centre_and_tilt_match_finite_differences():
    rng = np.random.default_rng(1)
    # Points near the rim and above the upstream face, where the factor depends on the disc.
    pts = jnp.asarray(
        np.concatenate(
            [
                rng.uniform([-45, -45, -30], [45, 45, -10], (300, 3)),
                np.stack([np.full(50, 39.7), np.zeros(50), np.linspace(-28, -12, 50)], -1),
            ]
        )
    )
    w = jnp.asarray(rng.uniform(0.5, 1.5, len(pts)))

    def f(x):
        # x = centre (3), tilt (rad) about the y axis
        normal = jnp.array([jnp.sin(x[3]), 0.0, jnp.cos(x[3])])
        disc = Disc(x[:3], normal, 40.0, 6.0)
        return jnp.sum(w * disc_dose_factor(pts, DOWN, disc, T, B, LAMBDA, 0.5))

    x = jnp.asarray([0.3, -0.2, -19.6, 0.05])
    grad = np.asarray(jax.jit(jax.grad(f))(x))
    h = 1e-6
    fd = np.asarray(jax.jit(jax.vmap(lambda e: (f(x + e) - f(x - e)) / (2 * h)))(h * jnp.eye(4)))
    np.testing.assert_allclose(grad, fd, rtol=1e-5)
    assert abs(grad[2]) > 1.0 and abs(grad[3]) > 1.0  # depth and tilt matter


# ----------------------------------------------------------------------------------------------
# Through the electron engine, with the packaged disc material
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beam():
    return el.load_electron_beam("generic_IOERT")


FLAT = el.PlaneSurface(jnp.zeros(3), jnp.array([0.0, 0.0, 1.0]))


def _cone(k, diameter=60.0, mu=1000.0):
    return el.Cone(
        jnp.int32(k),
        jnp.int32(0),
        diameter,
        jnp.zeros(3),
        jnp.array([0.0, 0.0, -1.0]),
        jnp.array([0.0, -1.0, 0.0]),
        mu,
    )


def test_packaged_disc_material_matches_the_published_facts(beam):
    disc = beam.discs[beam.index_of_disc("Al2_Pb4")]
    assert disc.thickness_mm == 6.0
    assert "aluminium" in disc.description and "lead" in disc.description
    backscatter = np.array(disc.backscatter_percent)
    assert np.all((backscatter >= 3.0) & (backscatter <= 9.0))
    assert np.all(np.diff(backscatter) < 0)  # less backscatter at higher energy
    assert max(disc.transmission) <= 0.02  # electrons absorbed: bremsstrahlung only


@pytest.mark.parametrize("k", range(4))
def test_engine_disc_transmission_backscatter_and_lateral(beam, k):
    depth_disc = float(beam.dmax_mm[k])  # disc at dmax: backscatter raises the maximum
    disc = Disc(jnp.array([0.0, 0.0, -depth_disc]), jnp.array([0.0, 0.0, 1.0]), 45.0, 6.0)
    material = beam.discs[0]
    pts = jnp.asarray(
        [
            [0.0, 0.0, -depth_disc - 10.0],  # beyond
            [5.0, 0.0, -depth_disc + 1e-9],  # on the upstream face
            [0.0, 0.0, -depth_disc + 40.0],  # in air
            [70.0, 0.0, -depth_disc - 10.0],  # far lateral, beyond the disc plane
        ]
    )
    open_ = np.asarray(el.cone_dose_gy(pts, _cone(k), beam, FLAT))
    shielded = np.asarray(el.cone_dose_gy(pts, _cone(k), beam, FLAT, disc))
    assert shielded[0] / open_[0] == pytest.approx(material.transmission[k], rel=1e-5)
    assert shielded[1] / open_[1] == pytest.approx(
        1 + material.backscatter_percent[k] / 100, rel=1e-5
    )
    assert shielded[2] == open_[2] == 0.0
    assert shielded[3] == pytest.approx(open_[3], rel=1e-8)
    # The maximum dose on the axis rises by the backscatter percentage (3-9 %).
    depth = jnp.asarray(np.linspace(0.0, depth_disc, 400))
    axis_pts = jnp.stack([0 * depth, 0 * depth, -depth], axis=-1)
    rise = float(jnp.max(el.cone_dose_gy(axis_pts, _cone(k), beam, FLAT, disc))) / float(
        jnp.max(el.cone_dose_gy(axis_pts, _cone(k), beam, FLAT))
    )
    assert 100 * (rise - 1) == pytest.approx(material.backscatter_percent[k], rel=1e-3)


def test_engine_gradients_wrt_disc_position_match_finite_differences(beam):
    rng = np.random.default_rng(2)
    pts = jnp.asarray(rng.uniform([-50, -50, -35], [50, 50, -5], (400, 3)))

    def f(centre):
        disc = Disc(centre, jnp.array([0.0, 0.0, 1.0]), 40.0, 6.0)
        return jnp.sum(el.cone_dose_gy(pts, _cone(2, 80.0), beam, FLAT, disc))

    centre = jnp.asarray([1.0, -2.0, -20.3])
    grad = np.asarray(jax.jit(jax.grad(f))(centre))
    h = 1e-6
    fd = jax.jit(jax.vmap(lambda e: (f(centre + e) - f(centre - e)) / (2 * h)))(h * jnp.eye(3))
    np.testing.assert_allclose(grad, np.asarray(fd), rtol=1e-5)
    assert abs(grad[2]) > 1e-3  # the disc's depth changes the dose (backscatter above it)


def test_engine_shadow_follows_scatter_from_the_field_edge(beam):
    """Below the disc, just beyond its rim, the dose arrives by lateral scatter from the field and
    crossed the disc on the way: shadowed. Far beyond the rim: open."""
    disc = Disc(jnp.array([0.0, 0.0, -20.0]), jnp.array([0.0, 0.0, 1.0]), 45.0, 6.0)
    pts = jnp.asarray([[45.5, 0.0, -51.0], [0.0, -47.0, -40.0], [90.0, 0.0, -51.0]])
    open_ = np.asarray(el.cone_dose_gy(pts, _cone(3), beam, FLAT))
    shielded = np.asarray(el.cone_dose_gy(pts, _cone(3), beam, FLAT, disc))
    transmission = beam.discs[0].transmission[3]
    assert open_[0] > 0.01 * open_.max()  # the penumbra tail reaches there without a disc
    np.testing.assert_allclose(shielded[:2] / open_[:2], transmission, rtol=1e-5)
    assert shielded[2] == pytest.approx(open_[2], rel=1e-9)
