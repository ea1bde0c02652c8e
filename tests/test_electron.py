"""Electron beam data and dose engine (iortopt.physics.electron).

Textbook rules of thumb for electron PDDs in water (E in MeV, depths in cm): R90 ~ E/3.2,
R80 ~ E/2.8, R50 ~ E/2.33, practical range Rp ~ E/2; surface dose 75-95 %, higher for higher
energy. The generic data were shaped from them; here they are checked on the engine's output with
our own analysis (linear interpolation of the sampled curve, tangent at the steepest point).
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.errors import SourceDataError
from iortopt.physics import electron as el

#: Tolerances of the generic PDDs against the rules (relative): ranges and practical range.
RANGE_TOLERANCE = 0.02
RP_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def beam():
    return el.load_electron_beam("generic_IOERT")


@pytest.fixture(scope="module")
def raw():
    """The packaged file as plain TOML (numbers straight from the file, not from the loader)."""
    path = resources.files("iortopt") / "data" / "electron" / "generic_IOERT.toml"
    with path.open("rb") as fh:
        return tomllib.load(fh)


FLAT = el.PlaneSurface(jnp.zeros(3), jnp.array([0.0, 0.0, 1.0]))


def _cone(energy_index, diameter_mm, mu=100.0, bevel_index=0, end=(0, 0, 0), axis=(0, 0, -1)):
    return el.Cone(
        jnp.int32(energy_index),
        jnp.int32(bevel_index),
        jnp.asarray(float(diameter_mm)),
        jnp.asarray(end, float),
        jnp.asarray(axis, float),
        jnp.asarray([0.0, -1.0, 0.0]),
        jnp.asarray(float(mu)),
    )


def _on_axis(depths_mm):
    d = np.asarray(depths_mm, float)
    return jnp.asarray(np.stack([0 * d, 0 * d, -d], axis=-1))


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------

DEPTHS = [0, 5, 10, 15, 20, 30]
VALID = {
    "beam": {"name": "test", "illustrative": True},
    "cones": {"diameters_cm": [4, 6], "bevels_deg": [0, 30]},
    "energy": [
        {
            "nominal_MeV": 6,
            "virtual_source_distance_mm": 500,
            "depth_mm": DEPTHS,
            "pdd_percent": [82, 97, 100, 80, 20, 1],
            "penumbra_sigma_mm": [2, 2.5, 3, 4, 5, 6],
        }
    ],
    "output": [
        {"nominal_MeV": 6, "bevel_deg": 0, "cGy_per_MU": [0.95, 1.0]},
        {"nominal_MeV": 6, "bevel_deg": 30, "cGy_per_MU": [0.9, 0.95]},
    ],
    "disc": [
        {
            "name": "d",
            "thickness_mm": 6,
            "nominal_MeV": [6],
            "transmission": [0.01],
            "backscatter_percent": [5],
            "backscatter_decay_mm": [2],
        }
    ],
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _write(tmp_path, doc) -> str:
    lines = []
    for section in ("beam", "cones"):
        if section in doc:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in doc[section].items()]
    for section in ("energy", "output", "disc"):
        for entry in doc.get(section, []):
            lines.append(f"[[{section}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    path = tmp_path / "beam.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _doc():
    return {
        "beam": dict(VALID["beam"]),
        "cones": dict(VALID["cones"]),
        "energy": [dict(VALID["energy"][0])],
        "output": [dict(o) for o in VALID["output"]],
        "disc": [dict(VALID["disc"][0])],
    }


def test_valid_file_loads(tmp_path):
    beam = el.load_electron_beam(_write(tmp_path, _doc()))
    assert beam.name == "test" and beam.illustrative
    assert beam.energies_mev == (6.0,) and beam.diameters_cm == (4.0, 6.0)
    assert beam.bevels == (0.0, 30.0) and beam.discs[0].name == "d"
    np.testing.assert_allclose(beam.output_gy_per_mu[0, 1], [0.009, 0.0095])
    assert float(beam.dmax_mm[0]) == 10.0


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("beam", "name", "", "name"),
        ("beam", "illustrative", "yes", "illustrative"),
        ("cones", "diameters_cm", [6, 4], "diameters_cm"),
        ("cones", "bevels_deg", [15, 30], "bevels_deg"),
        ("cones", "bevels_deg", [0, 75], "bevels_deg"),
        ("energy", "nominal_MeV", -6, "nominal_MeV"),
        ("energy", "virtual_source_distance_mm", None, "virtual_source_distance_mm"),
        ("energy", "depth_mm", [1, 5, 10, 15, 20, 30], "depth_mm"),
        ("energy", "depth_mm", [0, 5, 10, 10, 20, 30], "depth_mm"),
        ("energy", "pdd_percent", [82, 97, 100, 80, 20], "pdd_percent"),
        ("energy", "pdd_percent", [82, 97, 90, 80, 20, 1], "pdd_percent"),  # max not 100
        ("energy", "pdd_percent", [82, 97, 100, 80, 40, 20], "pdd_percent"),  # range not covered
        ("energy", "pdd_percent", [0, 97, 100, 80, 20, 1], "pdd_percent"),
        ("energy", "penumbra_sigma_mm", [2, 2.5, 0, 4, 5, 6], "penumbra_sigma_mm"),
        ("output", "cGy_per_MU", [0.95], "cGy_per_MU"),
        ("output", "cGy_per_MU", [0.95, -1.0], "cGy_per_MU"),
        ("output", "bevel_deg", 45, "bevel_deg"),
        ("output", "nominal_MeV", 9, "nominal_MeV"),
        ("disc", "nominal_MeV", [9], "nominal_MeV"),
        ("disc", "transmission", [1.5], "transmission"),
        ("disc", "backscatter_percent", [60], "backscatter_percent"),
        ("disc", "backscatter_decay_mm", [0], "backscatter_decay_mm"),
        ("disc", "thickness_mm", None, "thickness_mm"),
    ],
)
def test_malformed_files_name_file_and_field(tmp_path, section, key, value, expected):
    doc = _doc()
    target = doc[section] if isinstance(doc[section], dict) else doc[section][0]
    if value is None:
        del target[key]
    else:
        target[key] = value
    path = _write(tmp_path, doc)
    with pytest.raises(SourceDataError) as err:
        el.load_electron_beam(path)
    message = str(err.value)
    assert path in message and expected in message


def test_missing_tables_duplicates_and_names(tmp_path):
    doc = _doc()
    doc["output"] = doc["output"][:1]
    with pytest.raises(SourceDataError, match="missing the table for 6 MeV, bevel 30"):
        el.load_electron_beam(_write(tmp_path, doc))
    doc = _doc()
    doc["output"].append(dict(doc["output"][0]))
    with pytest.raises(SourceDataError, match="appears twice"):
        el.load_electron_beam(_write(tmp_path, doc))
    doc = _doc()
    doc["energy"].append(dict(doc["energy"][0]))
    with pytest.raises(SourceDataError, match="appears twice"):
        el.load_electron_beam(_write(tmp_path, doc))
    for section in ("beam", "cones"):
        doc = _doc()
        del doc[section]
        with pytest.raises(SourceDataError, match=rf"\[{section}\]"):
            el.load_electron_beam(_write(tmp_path, doc))
    with pytest.raises(SourceDataError, match="unknown electron beam"):
        el.load_electron_beam("no_such_beam")
    with pytest.raises(SourceDataError, match="not found"):
        el.load_electron_beam(str(tmp_path / "absent.toml"))
    (tmp_path / "broken.toml").write_text("[beam\nname = 1\n")
    with pytest.raises(SourceDataError, match="not valid TOML"):
        el.load_electron_beam(str(tmp_path / "broken.toml"))


# ----------------------------------------------------------------------------------------------
# Generic data against the rules they were shaped from
# ----------------------------------------------------------------------------------------------


def test_generic_data_is_labelled(beam):
    assert beam.illustrative and "NOT FOR CLINICAL USE" in beam.notes
    assert beam.energies_mev == (4.0, 6.0, 9.0, 12.0)
    assert beam.diameters_cm == tuple(float(d) for d in range(3, 11))
    assert beam.bevels == (0.0, 15.0, 30.0, 45.0)
    assert "generic_IOERT" in el.packaged_electron_beams()


def _pdd_analysis(depth_mm, pdd_percent, background_percent):
    """Surface dose, dmax, R90/R80/R50 (linear interpolation past the maximum) and Rp (tangent at
    the steepest point of the fall-off meets the background)."""
    i = int(np.argmax(pdd_percent))
    d, p = depth_mm[i:], pdd_percent[i:]

    def r(level):
        j = int(np.argmax(p < level))
        return d[j - 1] + (level - p[j - 1]) * (d[j] - d[j - 1]) / (p[j] - p[j - 1])

    slope = np.gradient(pdd_percent, depth_mm)
    k = i + int(np.argmin(slope[i:]))
    rp = depth_mm[k] + (pdd_percent[k] - background_percent) / -slope[k]
    return pdd_percent[0], depth_mm[i], r(90.0), r(80.0), r(50.0), rp


@pytest.mark.parametrize("energy_index", range(4))
def test_generic_pdd_follows_the_rules(beam, energy_index):
    energy = beam.energies_mev[energy_index]
    depth = np.arange(0.0, 80.0, 0.01)
    # Central axis of the largest flush cone: the engine's PDD (r = 0, no air gap).
    dose = np.asarray(el.cone_dose_gy(_on_axis(depth), _cone(energy_index, 100.0), beam, FLAT))
    pdd = 100.0 * dose / dose.max()
    background = float(pdd[-1])
    surface, dmax, r90, r80, r50, rp = _pdd_analysis(depth, pdd, background)
    rules = {"R90": energy / 3.2, "R80": energy / 2.8, "R50": energy / 2.33}
    for name, got in (("R90", r90), ("R80", r80), ("R50", r50)):
        assert got / 10.0 == pytest.approx(rules[name], rel=RANGE_TOLERANCE), name
    assert rp / 10.0 == pytest.approx(energy / 2.0, rel=RP_TOLERANCE)
    assert 75.0 <= surface <= 95.0
    assert 3.0 <= dmax <= 25.0  # "a few mm to 2 cm"
    assert 0.0 < background < 2.0  # bremsstrahlung tail


def test_surface_dose_rises_with_energy(beam):
    surface = [float(el.relative_depth_dose(0.0, k, beam)) for k in range(4)]
    assert np.all(np.diff(surface) > 0)


def test_output_at_dmax_is_the_tabulated_dose_per_mu(beam, raw):
    """Flush cone, central axis, dmax: dose = MU x the file's cGy/MU, for every table entry."""
    cones, points, expected = [], [], []
    for entry in raw["output"]:
        k = beam.index_of_energy(entry["nominal_MeV"])
        b = beam.index_of_bevel(entry["bevel_deg"])
        end, axis, toe = el.flush_pose(np.zeros(3), [0, 0, 1], entry["bevel_deg"], [0, -1, 0])
        for diameter_cm, cgy in zip(raw["cones"]["diameters_cm"], entry["cGy_per_MU"], strict=True):
            cones.append((k, b, 10.0 * diameter_cm, end, axis, toe, 250.0))
            points.append(end + float(beam.dmax_mm[k]) * axis)
            expected.append(cgy / 100.0)
    batch = el.Cone(*(jnp.asarray(np.array(v)) for v in zip(*cones, strict=True)))
    batch = batch._replace(energy_index=batch.energy_index.astype(jnp.int32))
    batch = batch._replace(bevel_index=batch.bevel_index.astype(jnp.int32))

    def one(cone, point):
        dose = el.cone_dose_gy(point[None], cone, beam, FLAT)[0]
        return dose, el.reference_dose_per_mu_gy(cone, beam, FLAT)

    dose, per_mu = jax.jit(jax.vmap(one))(batch, jnp.asarray(np.array(points)))
    assert len(expected) == 128
    np.testing.assert_allclose(np.asarray(dose), 250.0 * np.array(expected), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(per_mu), np.array(expected), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap_mm", [2.0, 10.0, 30.0])
def test_inverse_square_air_gap(beam, raw, gap_mm):
    """A cone lifted by g: D_gap(d) / D_flush(d) = ((vsd + d) / (vsd + g + d))^2 on the axis of a
    large cone (whose lateral factor stays 1 while the field diverges)."""
    k = 2
    vsd = raw["energy"][k]["virtual_source_distance_mm"]
    depth = np.array([0.5, 5.0, 16.0, 25.0, 35.0])
    flush = np.asarray(el.cone_dose_gy(_on_axis(depth), _cone(k, 100.0), beam, FLAT))
    lifted_cone = _cone(k, 100.0, end=(0.0, 0.0, gap_mm))
    lifted = np.asarray(el.cone_dose_gy(_on_axis(depth), lifted_cone, beam, FLAT))
    np.testing.assert_allclose(lifted / flush, ((vsd + depth) / (vsd + gap_mm + depth)) ** 2)
    geometry = el.beam_geometry(_on_axis(depth), lifted_cone, beam, FLAT)
    np.testing.assert_allclose(np.asarray(geometry["air_gap"]), gap_mm)
    np.testing.assert_allclose(np.asarray(geometry["depth"]), depth)


def test_dose_is_linear_in_mu(beam):
    pts = jnp.asarray(np.random.default_rng(0).uniform([-40, -40, -60], [40, 40, 0], (300, 3)))
    d1 = np.asarray(el.cone_dose_gy(pts, _cone(1, 60.0, mu=150.0), beam, FLAT))
    d3 = np.asarray(el.cone_dose_gy(pts, _cone(1, 60.0, mu=450.0), beam, FLAT))
    np.testing.assert_allclose(d3, 3.0 * d1, rtol=1e-12)


def test_field_edge_is_half_the_axis_dose(beam, raw):
    """At the diverged field radius the erf profile of a wide cone is 1/2 of the axis value."""
    k, diameter, depth = 3, 80.0, 12.0
    vsd = raw["energy"][k]["virtual_source_distance_mm"]
    edge = 0.5 * diameter * (vsd + depth) / vsd
    pts = jnp.asarray([[0.0, 0.0, -depth], [edge, 0.0, -depth], [0.0, edge + 30.0, -depth]])
    dose = np.asarray(el.cone_dose_gy(pts, _cone(k, diameter), beam, FLAT))
    assert dose[1] / dose[0] == pytest.approx(0.5, abs=1e-6)
    assert dose[2] / dose[0] < 1e-6
    assert np.all(
        np.asarray(el.cone_dose_gy(jnp.asarray([[0, 0, 0.5]]), _cone(k, 80), beam, FLAT)) == 0
    )


def test_depth_is_measured_along_the_axis(beam):
    # Oblique axis through a flat surface: depth along the axis = perpendicular depth / cos.
    angle = math.radians(25.0)
    axis = np.array([0.0, -math.sin(angle), -math.cos(angle)])
    cone = _cone(2, 60.0, axis=axis)
    perpendicular = np.array([3.0, 10.0, 20.0])
    pts = jnp.asarray(perpendicular[:, None] * axis / math.cos(angle))
    depth = np.asarray(el.beam_geometry(pts, cone, beam, FLAT)["depth"])
    np.testing.assert_allclose(depth, perpendicular / math.cos(angle), rtol=1e-12)
    # A convex spherical surface (radius 100 mm, top at z = 0): on the axis, x = 20 mm off the
    # top, the surface is at z_s = sqrt(100^2 - 20^2) - 100.
    sphere = el.SphereSurface(jnp.array([0.0, 0.0, -100.0]), jnp.asarray(100.0))
    cone = _cone(2, 60.0, end=(20.0, 0.0, 5.0))
    pts = jnp.asarray([[20.0, 0.0, -10.0], [20.0, 0.0, -30.0]])
    z_s = math.sqrt(100.0**2 - 20.0**2) - 100.0
    depth = np.asarray(el.beam_geometry(pts, cone, beam, sphere)["depth"])
    np.testing.assert_allclose(depth, [z_s + 10.0, z_s + 30.0], rtol=1e-12)
    # The same surface as a user function gives the same dose.
    fn = el.SurfaceFunction(lambda p, a: el.depth_below_surface_mm(sphere, p, a))
    np.testing.assert_allclose(
        np.asarray(el.cone_dose_gy(pts, cone, beam, fn)),
        np.asarray(el.cone_dose_gy(pts, cone, beam, sphere)),
        rtol=1e-12,
    )


def test_bevelled_cone_lies_flush_and_skews_toward_the_heel(beam, raw):
    k, b = 2, beam.index_of_bevel(30.0)
    end, axis, toe = el.flush_pose(np.zeros(3), [0, 0, 1], 30.0, [0, -1, 0])
    cone = el.Cone(jnp.int32(k), jnp.int32(b), 60.0, end, axis, toe, 100.0)
    # Surface points under the cone: depth 0 and no air gap (the end face lies on the surface).
    surface_pts = jnp.asarray([[0.0, y, 0.0] for y in (-20.0, -5.0, 10.0, 20.0)])
    g = el.beam_geometry(surface_pts, cone, beam, FLAT)
    np.testing.assert_allclose(np.asarray(g["depth"]), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g["air_gap"]), 0.0, atol=1e-9)
    # Toe (-y) and heel (+y) points at the same depth along the axis and distance from it: the
    # toe is further from the virtual source, so it gets (vsd + z_heel)^2 / (vsd + z_toe)^2 less.
    vsd = raw["energy"][k]["virtual_source_distance_mm"]
    lateral = np.array([0.0, -math.cos(math.radians(30)), -math.sin(math.radians(30))])
    lateral = lateral - (lateral @ axis) * axis
    lateral /= np.linalg.norm(lateral)
    depth, r = 10.0, 15.0
    z_toe, z_heel = r * math.tan(math.radians(30)), -r * math.tan(math.radians(30))
    toe_pt = (z_toe + depth) * axis + r * lateral
    heel_pt = (z_heel + depth) * axis - r * lateral
    dose = np.asarray(el.cone_dose_gy(jnp.asarray([toe_pt, heel_pt]), cone, beam, FLAT))
    ratio = ((vsd + z_heel + depth) / (vsd + z_toe + depth)) ** 2
    # Same depth and the same r; the field radius diverges with z, which the erf sees at 1e-4.
    assert dose[0] / dose[1] == pytest.approx(ratio, rel=1e-4)
    assert dose[0] < dose[1]


def test_reference_dose_per_mu_equals_the_engine(beam):
    """The written-out normalisation matches the engine at the reference point, with a gap and a
    tilted axis, for a small cone (lateral factor < 1)."""
    angle = math.radians(12.0)
    axis = np.array([math.sin(angle), 0.0, -math.cos(angle)])
    cone = _cone(3, 30.0, mu=1.0, end=(1.0, 2.0, 4.0), axis=axis)
    point = el.reference_point_mm(cone, beam, FLAT)
    engine = float(el.cone_dose_gy(point[None], cone, beam, FLAT)[0])
    assert float(el.reference_dose_per_mu_gy(cone, beam, FLAT)) == pytest.approx(engine, rel=1e-12)
    assert el.mu_for_dose(20.0, cone, beam, FLAT) == pytest.approx(20.0 / engine, rel=1e-12)


def test_catalogue_batch_equals_a_loop(beam):
    rng = np.random.default_rng(3)
    pts = jnp.asarray(rng.uniform([-40, -40, -50], [40, 40, 2], (400, 3)))
    k = 6
    cones = el.Cone(
        jnp.asarray(rng.integers(0, 4, k), jnp.int32),
        jnp.asarray(rng.integers(0, 4, k), jnp.int32),
        jnp.asarray(rng.uniform(30, 100, k)),
        jnp.asarray(rng.normal(0, 2, (k, 3))),
        jnp.asarray(np.array([0.0, 0.0, -1.0]) + rng.normal(0, 0.1, (k, 3))),
        jnp.asarray(np.tile([0.0, -1.0, 0.0], (k, 1))),
        jnp.asarray(rng.uniform(100, 300, k)),
    )
    from iortopt.physics.disc import Disc

    discs = Disc(
        jnp.asarray(np.array([0.0, 0.0, -20.0]) + rng.normal(0, 2, (k, 3))),
        jnp.asarray(np.tile([0.0, 0.0, 1.0], (k, 1))),
        jnp.full(k, 40.0),
        jnp.full(k, 6.0),
    )
    batch = np.asarray(el.catalogue_dose_gy(pts, cones, beam, FLAT, discs, batch_size=4))
    single = jax.jit(lambda c, d: el.cone_dose_gy(pts, c, beam, FLAT, d))
    loop = np.stack(
        [
            np.asarray(
                single(
                    jax.tree_util.tree_map(lambda x, i=i: x[i], cones),
                    jax.tree_util.tree_map(lambda x, i=i: x[i], discs),
                )
            )
            for i in range(k)
        ]
    )
    assert batch.shape == (k, 400)
    np.testing.assert_allclose(batch, loop, rtol=1e-12, atol=1e-15)


def test_gradients_match_finite_differences_in_float64(beam):
    rng = np.random.default_rng(5)
    pts = jnp.asarray(rng.uniform([-35, -35, -45], [35, 35, -1], (200, 3)))
    weights = jnp.asarray(rng.uniform(0.5, 1.5, 200))

    def f(x):
        # x = end (3), axis (3), diameter, MU
        cone = el.Cone(
            jnp.int32(2), jnp.int32(1), x[6], x[:3], x[3:6], jnp.array([0, -1.0, 0]), x[7]
        )
        return jnp.sum(weights * el.cone_dose_gy(pts, cone, beam, FLAT))

    x = jnp.asarray([0.7, -0.4, 1.3, 0.05, -0.1, -1.0, 57.0, 210.0])
    grad = np.asarray(jax.jit(jax.grad(f))(x))
    h = 1e-5
    steps = h * jnp.eye(8)
    fd = np.asarray(jax.jit(jax.vmap(lambda e: (f(x + e) - f(x - e)) / (2 * h)))(steps))
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    assert grad[7] == pytest.approx(float(f(x)) / 210.0, rel=1e-9)  # linear in MU


def test_float32_engine(beam, no_x64):
    pts = np.random.default_rng(2).uniform([-40, -40, -60], [40, 40, 0], (500, 3))
    cone = el.Cone(
        jnp.int32(3),
        jnp.int32(0),
        jnp.float32(60.0),
        jnp.zeros(3, jnp.float32),
        jnp.asarray([0.0, 0.0, -1.0], jnp.float32),
        jnp.asarray([0.0, -1.0, 0.0], jnp.float32),
        jnp.float32(2000.0),
    )
    surface = el.PlaneSurface(jnp.zeros(3, jnp.float32), jnp.asarray([0.0, 0.0, 1.0], jnp.float32))
    dose = el.cone_dose_gy(jnp.asarray(pts, jnp.float32), cone, beam, surface)
    assert dose.dtype == jnp.float32
    with jax.enable_x64(True):
        ref = el.cone_dose_gy(jnp.asarray(pts), _cone(3, 60.0, mu=2000.0), beam, FLAT)
    np.testing.assert_allclose(np.asarray(dose), np.asarray(ref), rtol=1e-4, atol=1e-4)
