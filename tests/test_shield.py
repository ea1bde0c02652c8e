"""Photon shields (iortopt.physics.shield): exact ray/slab lengths in the hard limit, convergence
of the soft edges, gradients, transmission tables and the rule that a shield never adds dose."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.errors import SourceDataError
from iortopt.physics import shield as sh
from iortopt.physics.shield_materials import (
    load_shield_materials,
    packaged_shield_materials,
    parse_shield_materials,
)


def _shield(
    origin=(0.0, 0.0, 0.0),
    axis_u=(1.0, 0.0, 0.0),
    axis_w=(0.0, 0.0, 1.0),
    radius=0.0,
    offset=(0.0, 0.0),
    rotation=0.0,
    half=(20.0, 20.0),
    thickness=3.0,
):
    f = functools.partial(jnp.asarray, dtype=jnp.float64)
    return sh.Shield(
        f(origin), f(axis_u), f(axis_w), f(radius), f(offset), f(rotation), f(half), f(thickness)
    )


PLANE = _shield()
ROTATED_RECT = _shield(offset=(5.0, -3.0), rotation=0.4, half=(25.0, 10.0), thickness=2.0)
# a lead sheet on a cylinder of mid radius 60 mm about the x axis through (0, 0, 70); arc
# coordinates from the bottom (-z direction)
CYLINDER = _shield(
    origin=(0.0, 0.0, 70.0), axis_w=(0.0, 0.0, -1.0), radius=60.0, half=(30.0, 35.0), thickness=2.0
)

_jit_length = jax.jit(sh.path_length_mm, static_argnames=("shape", "surface", "edge_mm"))


def _marched_length(src, pt, shield, shape, surface, n=40001):
    """Reference: length of the segment inside the exact solid, by dense sampling, and whether
    the samples inside the slab are all inside or all outside the patch laterally (no rim
    crossing within the metal)."""
    t = (np.arange(n) + 0.5) / n
    pts = jnp.asarray(src[None] + t[:, None] * (pt - src)[None])
    inside = np.asarray(sh.contains_hard(pts, shield, shape, surface))
    in_slab = np.asarray(
        sh.contains_hard(
            pts, shield._replace(half_size_mm=shield.half_size_mm * 1e3), shape, surface
        )
    )
    lateral = np.asarray(
        sh.contains_hard(
            pts, shield._replace(thickness_mm=shield.thickness_mm * 1e3), shape, surface
        )
    )
    consistent = in_slab.sum() == 0 or len(set(lateral[in_slab].tolist())) == 1
    return inside.mean() * np.linalg.norm(pt - src), consistent


def test_full_crossing_is_thickness_over_cosine():
    rng = np.random.default_rng(1)
    big = _shield(half=(1e4, 1e4), thickness=3.0)
    src = np.array([0.0, 0.0, 40.0])
    pts = np.column_stack([rng.uniform(-60, 60, 50), rng.uniform(-60, 60, 50), -30 * np.ones(50)])
    length = np.asarray(_jit_length(src, pts, big, shape="rectangle", surface="plane", edge_mm=0.0))
    d = pts - src
    cos = np.abs(d[:, 2]) / np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(length, 3.0 / cos, rtol=1e-12)


@pytest.mark.parametrize(
    "shield, shape, surface",
    [
        (PLANE, "disc", "plane"),
        (ROTATED_RECT, "rectangle", "plane"),
        (CYLINDER, "rectangle", "cylinder"),
        (CYLINDER, "disc", "cylinder"),
    ],
)
def test_hard_limit_matches_marched_exact_solid(shield, shape, surface):
    """Away from the rim band (thickness * tan(incidence)), the hard model is the exact solid."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        if surface == "plane":
            src = np.array([*rng.uniform(-40, 40, 2), rng.uniform(5, 40)])
            pt = np.array([*rng.uniform(-50, 50, 2), rng.uniform(-40, 1.2)])
        else:  # source outside the shell (radius 61+), points inside or beyond it
            a_s, a_p = rng.uniform(-0.6, 0.6, 2)
            r_s, r_p = rng.uniform(61.5, 70), rng.uniform(30, 62)
            src = np.array([rng.uniform(-40, 40), r_s * math.sin(a_s), 70 - r_s * math.cos(a_s)])
            pt = np.array([rng.uniform(-50, 50), r_p * math.sin(a_p), 70 - r_p * math.cos(a_p)])
        exact, consistent = _marched_length(src, pt, shield, shape, surface)
        model = float(_jit_length(src, pt, shield, shape=shape, surface=surface, edge_mm=0.0))
        if not consistent:  # the ray crosses the rim inside the metal: the documented approximation
            continue
        checked += 1
        assert model == pytest.approx(exact, abs=2e-3 * np.linalg.norm(pt - src) + 1e-9)
    assert checked > 100


def test_soft_edges_converge_to_hard():
    rng = np.random.default_rng(3)
    src = np.array([0.0, 0.0, 30.0])
    pts = np.column_stack([rng.uniform(-40, 40, 2000), rng.uniform(-40, 40, 2000), -np.ones(2000)])
    pts = pts * np.array([1, 1, 20])
    hard = np.asarray(_jit_length(src, pts, PLANE, shape="disc", surface="plane", edge_mm=0.0))
    errors = []
    for w in (2.0, 0.5, 0.1, 0.01):
        soft = np.asarray(_jit_length(src, pts, PLANE, shape="disc", surface="plane", edge_mm=w))
        errors.append(np.mean(np.abs(soft - hard)))
        # outside the rim band of width w the soft model is exactly the hard one
        rho = np.hypot(*(src[:2] + (pts[:, :2] - src[:2]) * (30 / (30 - pts[:, 2:3]))).T)
        far = np.abs(rho - 20.0) > w + 1e-9
        np.testing.assert_allclose(soft[far], hard[far], rtol=1e-12, atol=1e-12)
    # the mean error falls in proportion to the band width (2 mm -> 0.01 mm: 200x)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 * errors[0]


def _fd(f, x, eps=1e-5):
    x = np.asarray(x, float)
    out = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        out.flat[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


@pytest.mark.parametrize("shield, shape, surface", [
    (ROTATED_RECT, "rectangle", "plane"), (PLANE, "disc", "plane"),
    (CYLINDER._replace(offset_mm=jnp.asarray([3.0, 2.0]), half_size_mm=jnp.asarray([8.0, 6.0])),
     "rectangle", "cylinder"),
])  # fmt: skip
def test_gradient_matches_finite_differences(shield, shape, surface):
    table = load_shield_materials().table("lead", "Ir-192", jnp.float64)
    rng = np.random.default_rng(11)
    if surface == "plane":
        src = jnp.asarray([3.0, -2.0, 25.0])
        pts = jnp.asarray(np.column_stack([rng.uniform(-45, 45, (400, 2)), -10 * np.ones(400)]))
    else:
        src = jnp.asarray([0.0, 0.0, 5.0])
        ang = rng.uniform(-1.0, 1.0, 400)
        pts = jnp.asarray(
            np.column_stack([rng.uniform(-45, 45, 400), 45 * np.sin(ang), 70 - 45 * np.cos(ang)])
        )

    def total(offset, half):
        s = shield._replace(offset_mm=offset, half_size_mm=half)
        return jnp.sum(sh.shield_factor(src, pts, s, table, shape, surface, 3.0))

    g_off, g_half = jax.grad(total, argnums=(0, 1))(shield.offset_mm, shield.half_size_mm)
    fd_off = _fd(lambda o: float(total(jnp.asarray(o), shield.half_size_mm)), shield.offset_mm)
    fd_half = _fd(lambda h: float(total(shield.offset_mm, jnp.asarray(h))), shield.half_size_mm)
    assert np.abs(np.asarray(g_off)).max() > 1e-3  # the test sees a real dependence
    np.testing.assert_allclose(g_off, fd_off, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_half, fd_half, rtol=1e-4, atol=1e-6)


def test_a_shield_never_increases_dose():
    rng = np.random.default_rng(5)
    mats = load_shield_materials()
    for material, spectrum in mats.tables:
        table = mats.table(material, spectrum, jnp.float64)
        for shield, shape, surface in [(ROTATED_RECT, "rectangle", "plane"),
                                       (CYLINDER, "disc", "cylinder")]:  # fmt: skip
            src = rng.uniform(-80, 80, (500, 3))
            pts = rng.uniform(-80, 80, (500, 3))
            f = np.asarray(sh.shield_factor(src, pts, shield, table, shape, surface, 1.0))
            assert np.all(np.isfinite(f)) and np.all(f <= 1.0) and np.all(f > 0.0)
            assert f.min() < 0.9  # some rays do cross the metal


def test_transmission_is_log_linear_and_exact_for_an_exponential():
    table = load_shield_materials().table("lead", "Ir-192", jnp.float64)
    x = np.array([0.0, 0.5, 3.0, 7.5, 15.0, 33.0, 60.0])
    t = np.asarray(sh.transmission(jnp.asarray(x), table))
    # the packaged lead/Ir-192 table is 10^(-x/16 mm), rounded to 4 significant figures
    np.testing.assert_allclose(t, 10 ** (-x / 16.0), rtol=2e-3)
    assert float(sh.transmission(jnp.asarray(0.0), table)) == 1.0


def test_packaged_materials_load_and_are_labelled():
    assert "generic_shield_materials" in packaged_shield_materials()
    mats = load_shield_materials()
    assert mats.illustrative
    assert {"lead", "tungsten", "tungsten_rubber"} <= set(mats.materials)
    with pytest.raises(KeyError, match="tungsten_rubber"):
        mats.table("tungsten_rubber", "Ir-192")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("materials"), r"\[materials\]: missing"),
        (lambda d: d["material"][0]["transmission"][0].update(transmission=[0.9, 0.5]),
         "must be 1 at thickness 0"),
        (lambda d: d["material"][0]["transmission"][0].update(transmission=[1.0, 1.2]),
         "non-increasing"),
        (lambda d: d["material"][0]["transmission"][0].update(thickness_mm=[0.0, 1.0, 2.0]),
         "has 3 entries"),
        (lambda d: d["material"][0]["transmission"][0].update(thickness_mm=["0", 1.0]),
         "expected numbers"),
        (lambda d: d["material"][0].update(name=""), "name: expected a non-empty string"),
    ],
)  # fmt: skip
def test_bad_materials_file_names_the_field(mutate, message):
    doc = {
        "materials": {"name": "m", "illustrative": True},
        "material": [
            {"name": "lead", "transmission": [
                {"spectrum": "Ir-192", "thickness_mm": [0.0, 1.0], "transmission": [1.0, 0.8]}]}
        ],
    }  # fmt: skip
    mutate(doc)
    with pytest.raises(SourceDataError, match=message):
        parse_shield_materials(doc, "bad.toml")


def test_missing_materials_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceDataError, match="not found"):
        load_shield_materials(tmp_path / "nope.toml")
