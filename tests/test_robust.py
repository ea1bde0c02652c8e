"""Robust evaluation and optimisation: aggregations against hand-computed values, the scenario
geometry against independent transforms, the goal bookkeeping, config errors, and the flap
statement of issue 16 on a coarse grid (the 2 mm figures: benchmarks/bench_robust.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt import pipeline
from iortopt.config import parse_config
from iortopt.errors import ConfigError
from iortopt.evaluation import robust_metrics
from iortopt.modalities.hdr_flap import scenarios as sc
from iortopt.optimisation import objectives, robust
from iortopt.outputs.plan_files import GoalSpec
from iortopt.physics.sources import load_source
from iortopt.physics.tg43 import dose_gy, make_kernel

ROOT = Path(__file__).resolve().parents[1]
ZERO = {k: 0.0 for k in sc.DEFAULTS}


# -- aggregations ---------------------------------------------------------------------------------


def test_expected_is_the_mean():
    assert float(robust.expected(jnp.array([1.0, 2.0, 6.0]))) == pytest.approx(3.0)


def test_smooth_worst_hand_value_and_limits():
    v = np.array([1.0, 2.0, 3.0])
    temp = 0.5 * 3.0  # relative temperature 0.5 of the largest value
    hand = temp * np.log(np.mean(np.exp(v / temp)))
    assert float(robust.smooth_worst(jnp.asarray(v), 0.5)) == pytest.approx(hand, rel=1e-12)
    # T -> 0: the maximum; T -> infinity: the mean; 0: exactly the maximum
    # log-mean-exp lies within T log S below the maximum
    for rel in (1e-1, 1e-2, 1e-3):
        got = float(robust.smooth_worst(jnp.asarray(v), rel))
        assert 3.0 - rel * 3.0 * np.log(3) - 1e-12 <= got <= 3.0
    assert float(robust.smooth_worst(jnp.asarray(v), 1e4)) == pytest.approx(2.0, abs=1e-3)
    assert float(robust.smooth_worst(jnp.asarray(v), 0.0)) == 3.0
    assert float(robust.smooth_worst(jnp.asarray(v), 0.1)) <= 3.0


def test_identical_or_single_scenarios_aggregate_exactly():
    x = 0.123456789
    for kind in ("expected", "worst", "cvar"):
        assert float(robust.aggregate(jnp.full(7, x), kind, 0.1, 0.3)) == pytest.approx(x, 1e-15)
        assert float(robust.aggregate(jnp.array([x]), kind, 0.1, 0.3)) == x
    assert float(robust.smooth_worst(jnp.full(5, x), 0.1)) == x


@pytest.mark.parametrize(
    ("alpha", "hand"),
    [(1.0, 2.5), (0.5, 3.5), (0.25, 4.0), (0.1, 4.0), (0.3, (4.0 + 0.2 * 3.0) / 1.2)],
)
def test_cvar_against_hand_values(alpha, hand):
    v = jnp.array([2.0, 4.0, 1.0, 3.0])
    assert float(robust.cvar(v, alpha)) == pytest.approx(hand, rel=1e-12)


def test_unknown_aggregate_and_bad_alpha_are_refused():
    with pytest.raises(ValueError, match="aggregate"):
        robust.aggregator("median")
    with pytest.raises(ValueError, match="alpha"):
        robust.cvar_weights(4, 0.0)


def test_robust_objective_sums_weighted_aggregates():
    from iortopt.config import Objective

    w = jnp.ones(3)
    terms = objectives.build_terms(
        [
            Objective(type="underdose", structure="T", dose_gy=10.0, weight=2.0),
            Objective(type="mean_dose", structure="T", dose_gy=0.0, weight=0.5),
        ],
        {"T": w},
        0.1,
        np.zeros((0, 2), int),
        10.0,
    )
    doses = jnp.array([[10.0, 10.0, 10.0], [8.0, 9.0, 10.0], [5.0, 10.0, 12.0]])
    t = jnp.ones(2)
    params = objectives.term_params(terms, jnp.float64)
    under = [np.mean(np.maximum(10 - d, 0) ** 2) / 100 for d in np.asarray(doses)]
    mean = [np.mean(d) ** 2 / 100 for d in np.asarray(doses)]
    got = robust.robust_objective(terms, lambda v: jnp.max(v))(doses, t, params)
    assert float(got) == pytest.approx(2 * max(under) + 0.5 * max(mean), rel=1e-12)
    nominal = objectives.combine(terms)(doses[0], t, params)
    one = robust.robust_objective(terms, robust.aggregator("worst"))(doses[:1], t, params)
    assert float(one) == float(nominal)


# -- HDR scenarios --------------------------------------------------------------------------------


def test_zero_magnitudes_give_only_the_nominal_scenario():
    s = sc.build(ZERO, 3, 5)
    assert s.names == ("nominal",) and len(s) == 1
    assert len(sc.build(ZERO, 3, 5, "sampled", 10)) == 1
    pos = np.random.default_rng(0).normal(size=(5, 3))
    axes = np.tile([0.0, 0.0, 1.0], (5, 1))
    moved, moved_axes = sc.moved_dwells(pos, axes, axes, np.zeros(5, int), pos.mean(0), s)
    assert np.array_equal(moved[0], pos) and np.array_equal(moved_axes[0], axes)


def test_default_plus_minus_set_counts_and_one_sided_lift_off():
    sigma = {k: v["value"] for k, v in sc.DEFAULTS.items()}
    s = sc.build(sigma, 8, 10)
    # nominal + 2 x (3 shifts + 3 rotations + source + time + scale) + 1 lift-off
    assert len(s) == 1 + 2 * 9 + 1
    assert "lift_off+" in s.names and "lift_off-" not in s.names
    assert np.all(s.lift_mm >= 0)
    sampled = sc.build(sigma, 8, 10, "sampled", 12, seed=3)
    again = sc.build(sigma, 8, 10, "sampled", 12, seed=3)
    assert len(sampled) == 12 and np.array_equal(sampled.shift_mm, again.shift_mm)
    assert np.all(sampled.lift_mm >= 0)


def test_moved_dwells_follow_independent_transforms():
    pos = np.array([[10.0, 0.0, 0.0], [0.0, 20.0, 5.0]])
    axes = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    sigma = dict(ZERO, rotation_deg=90.0, lift_off_mm=2.0, source_position_mm=1.5)
    s = sc.build(sigma, 2, 2)
    moved, moved_axes = sc.moved_dwells(pos, axes, normals, np.array([0, 1]), np.zeros(3), s)
    k = s.names.index("rotation_z+")  # +90 deg about z: (x, y) -> (-y, x)
    np.testing.assert_allclose(moved[k], [[0.0, 10.0, 0.0], [-20.0, 0.0, 5.0]], atol=1e-12)
    np.testing.assert_allclose(moved_axes[k], [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-12)
    k = s.names.index("lift_off+")
    np.testing.assert_allclose(moved[k], pos + [0.0, 0.0, 2.0])
    k = s.names.index("source_position-")
    np.testing.assert_allclose(moved[k], pos - 1.5 * axes)


def test_tissue_normals_point_away_from_the_target():
    target = np.array([[x, y, 0.0] for x in range(-10, 11) for y in range(-10, 11)], float)
    pos = np.array([[0.0, 0.0, 5.0], [3.0, 2.0, 5.0]])
    axes = np.tile([1.0, 0.0, 0.0], (2, 1))
    np.testing.assert_allclose(sc.tissue_normals(pos, axes, target), [[0, 0, 1], [0, 0, 1]])


def test_shifted_scenario_dose_is_the_translated_nominal_dose(no_x64):
    """A rigid shift d of the dwells gives at x the nominal dose at x - d (TG-43 is translation
    invariant), computed independently by moving the points instead of the dwells; the dose
    scale and dwell-time scenarios scale the dose by exactly their factor."""
    kernel = make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=jnp.float32)
    pos = np.array([[0.0, 0.0, z] for z in (-5.0, 0.0, 5.0)])
    axes = np.tile([0.0, 0.0, 1.0], (3, 1))
    points = np.random.default_rng(1).uniform(-20, 20, (50, 3)) + [0.0, 15.0, 0.0]
    t = np.array([3.0, 5.0, 4.0])
    s = sc.build(dict(ZERO, shift_mm=2.0, dose_scale_percent=3.0), 1, 3)
    moved, moved_axes = sc.moved_dwells(pos, axes, axes, np.zeros(3, int), np.zeros(3), s)
    factors = s.time_factor * s.dose_factor[:, None]
    nominal = np.asarray(dose_gy(points, pos, axes, t, kernel, 40000.0, None))
    for k, name in enumerate(s.names):
        d = np.asarray(dose_gy(points, moved[k], moved_axes[k], t * factors[k], kernel, 40000.0))
        shift = s.shift_mm[k]
        ref = np.asarray(dose_gy(points - shift, pos, axes, t, kernel, 40000.0, None))
        ref = ref * s.dose_factor[k]
        np.testing.assert_allclose(d, ref, rtol=2e-5, err_msg=name)
    k = s.names.index("dose_scale-")
    assert s.dose_factor[k] == pytest.approx(0.97)
    assert not np.allclose(nominal, nominal * 0.97)


def test_unknown_magnitude_axis_names_the_field():
    with pytest.raises(ConfigError, match="robust.magnitudes.*tilt_deg"):
        sc.magnitudes({"tilt_deg": 1.0})


# -- goal bookkeeping -----------------------------------------------------------------------------


def test_goal_fractions_and_bands():
    per = [
        {"CTV": {"D90_gy": 10.2}, "bowel": {"D2cc_gy": 11.0}},
        {"CTV": {"D90_gy": 9.8}, "bowel": {"D2cc_gy": 12.5}},
        {"CTV": {"D90_gy": float("nan")}, "bowel": {"D2cc_gy": 11.9}},
        {"CTV": {"D90_gy": 10.0}, "bowel": {"D2cc_gy": 12.0}},
    ]
    goals = [GoalSpec("CTV", "D90_gy", ">=", 10.0), GoalSpec("bowel", "D2cc_gy", "<=", 12.0)]
    ctv, bowel = robust_metrics.goal_fractions(goals, per, ["nominal", "a", "b", "c"])
    assert ctv["not_met_in"] == ["a", "b"] and bowel["not_met_in"] == ["a"]
    assert (ctv["n_met"], ctv["fraction_met"], ctv["met_nominal"]) == (2, 0.5, True)
    assert ctv["worst_value"] == 9.8
    assert (bowel["n_met"], bowel["fraction_met"], bowel["worst_value"]) == (3, 0.75, 12.5)
    bands = robust_metrics.metric_bands(per, (10.0, 90.0))
    row = bands["bowel"]["D2cc_gy"]
    assert row["nominal"] == 11.0 and row["min"] == 11.0 and row["max"] == 12.5
    assert row["p50"] == pytest.approx(np.percentile([11.0, 12.5, 11.9, 12.0], 50))
    assert bands["CTV"]["D90_gy"]["min"] == 9.8  # the nan scenario left out


# -- config ---------------------------------------------------------------------------------------


def _flap_doc(spacing_mm: float = 4.0, **robust_fields) -> dict:
    doc = tomllib.loads((ROOT / "configs" / "flap_robust.toml").read_text())
    doc["case"]["flap"]["spacing_mm"] = spacing_mm
    doc["robust"] |= robust_fields
    return doc


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"aggregate": "median"}, "robust.aggregate"),
        ({"band_percent": [90.0, 10.0]}, "band_percent"),
        ({"cvar_alpha": 0.0}, "robust.cvar_alpha"),
        ({"magnitudes": {"shift_mm": -1.0}}, "robust.magnitudes.shift_mm"),
        ({"n_scenarios": 0}, "robust.n_scenarios"),
    ],
)
def test_bad_robust_fields_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_flap_doc(**fields))


def test_robust_with_shields_is_refused():
    doc = _flap_doc()
    doc["shields"] = [
        {"name": "s", "sizes_mm": [[60.0, 60.0]], "surface": "behind_flap", "thickness_mm": 2.0}
    ]
    with pytest.raises(ConfigError, match="shields"):
        pipeline.prepare(parse_config(doc), jnp.float32)


def test_memory_estimate_counts_the_scenario_axis():
    from iortopt.compute import memory

    one = memory.hdr_plan_estimate(1000, 50000, 100, 5, np.float32, 0, "matrix")
    many = memory.hdr_plan_estimate(1000, 50000, 100, 5, np.float32, 0, "matrix", n_scenarios=20)
    matrix = 50000 * 100 * 4
    assert many.persistent_bytes - one.persistent_bytes >= 19 * matrix
    assert many.sizes["scenarios"] == 20


# -- the flap statement, coarse (5 mm), on the pipeline's own optimisation problem ------------

#: Grid of the coarse statement (2 mm, the shipped grid: benchmarks/bench_robust.py).
STATEMENT_MM = 5.0
STATEMENT_ITERATIONS = 60


@pytest.fixture(scope="module")
def flap_statement():
    """Nominal and robust (smooth worst case) dwell times of the built-in flap case at 5 mm with
    the default scenario set, and the fraction of scenarios meeting CTV D90 >= 10 Gy for each
    (the optimisation of ``optimise_and_write`` without its full-grid dose and files)."""
    from iortopt.modalities.hdr_flap import robust as hdr_robust
    from iortopt.optimisation.optax_loop import minimise

    prepared = pipeline.prepare(parse_config(_flap_doc(STATEMENT_MM, optimise=True)), jnp.float32)
    cfg, dtype = prepared.config, prepared.dtype
    points = prepared.case.grid.points_mm(np.float32)[prepared.opt_mask.reshape(-1)]
    problem = hdr_robust.optimisation_problem(prepared, points, True, 1024, {})
    mats = problem.operands[0]
    params = objectives.term_params(problem.terms, dtype)
    total = objectives.combine(problem.terms)
    init = np.full(len(prepared.dwells), 5.0)

    def run(f):
        kw = dict(
            max_iterations=STATEMENT_ITERATIONS, dtype=dtype, operands=(params, *problem.operands)
        )
        return minimise(f, init, cfg.applicator.max_dwell_time_s, **kw).times_s

    plans = {
        "nominal": run(jax.jit(lambda t, p, m, *_: total(m[0] @ t, t, p))),
        "robust": run(problem.objective_of),
    }
    goals = [GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals]
    weights = {k: np.asarray(v)[problem.rows] for k, v in prepared.weights.items()}
    out = {}
    for name, times in plans.items():
        doses = np.asarray(jnp.einsum("spn,n->sp", mats, jnp.asarray(times, dtype)), np.float64)
        per = robust_metrics.scenario_metrics(
            doses, weights, prepared.case.grid.voxel_volume_cm3, 10.0
        )
        out[name] = {g["structure"]: g for g in robust_metrics.goal_fractions(goals, per)}
    return out, len(prepared.robust.scenarios)


def test_robust_plan_covers_the_ctv_in_90_percent_of_scenarios(flap_statement):
    fractions, n = flap_statement
    assert n == 20
    robust_ctv, nominal_ctv = fractions["robust"]["CTV"], fractions["nominal"]["CTV"]
    assert robust_ctv["fraction_met"] >= 0.9
    assert nominal_ctv["fraction_met"] < robust_ctv["fraction_met"]
    assert nominal_ctv["met_nominal"]  # the nominal plan covers the nominal geometry


# -- the pipeline: outputs, and zero magnitudes = the nominal plan exactly (6 mm, few iterations)


def _pipeline_doc(**robust_fields) -> dict:
    doc = _flap_doc(6.0, **robust_fields)
    doc["optimizer"]["max_iterations"] = 8
    return doc


def _run(doc: dict, out: Path):
    return pipeline.execute(pipeline.prepare(parse_config(doc), jnp.float32), out)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    return _run(_pipeline_doc(optimise=False), tmp_path_factory.mktemp("robust") / "plan")


def test_robust_outputs_written(evaluated_run):
    out = Path(evaluated_run.out_dir)
    assert (out / "dvh_bands.png").stat().st_size > 10_000
    rob = json.loads((out / "summary.json").read_text())["robust"]
    assert rob["magnitudes"]["lift_off_mm"]["assumed"] is True
    assert "TG-56" in rob["magnitudes"]["source_position_mm"]["source"]
    assert len(rob["names"]) == rob["n_scenarios"] == 20
    assert set(rob["metrics"]["CTV"]["D90_gy"]) == {"nominal", "min", "p10", "p50", "p90", "max"}
    # the nominal scenario's metrics are the plan's own (same voxels; matrix-free vs full grid)
    nominal = rob["metrics"]["CTV"]["D90_gy"]["nominal"]
    assert nominal == pytest.approx(evaluated_run.summary["metrics"]["CTV"]["D90_gy"], rel=2e-3)
    assert [g["fraction_met"] for g in rob["goals"]] == [
        np.mean([robust_metrics.goal_met(v, g["op"], g["limit"]) for v in [g["worst_value"]]])
        if g["n_met"] in (0, rob["n_scenarios"]) else g["n_met"] / rob["n_scenarios"]
        for g in rob["goals"]
    ]  # fmt: skip


def test_zero_magnitude_robust_optimisation_is_exactly_the_nominal_plan(evaluated_run, tmp_path):
    zero = _run(_pipeline_doc(optimise=True, magnitudes=ZERO), tmp_path / "zero")
    assert zero.summary["robust"]["n_scenarios"] == 1
    np.testing.assert_array_equal(zero.times_s, evaluated_run.times_s)


# -- X-ray and electron scenarios -----------------------------------------------------------------


def test_axis_scenarios_plus_minus_and_one_sided():
    rows = robust.axis_scenarios(
        (("shift_mm", 3, False), ("gap_mm", 1, True)), {"shift_mm": 2.0, "gap_mm": 1.0}
    )
    names = [n for n, _ in rows]
    assert names[0] == "nominal" and len(rows) == 1 + 6 + 1
    assert "gap_mm+" in names and "gap_mm-" not in names
    assert rows[names.index("shift_mm_y-")][1]["shift_mm"].tolist() == [0.0, -2.0, 0.0]
    assert len(robust.axis_scenarios((("a", 1, False),), {"a": 0.0})) == 1
    sampled = robust.axis_scenarios((("g", 1, True),), {"g": 1.0}, "sampled", 9, seed=2)
    assert len(sampled) == 9 and all(r["g"][0] >= 0 for _, r in sampled)


def test_xray_scenario_dose_is_the_engine_on_moved_tissue(no_x64):
    """Shift: the applicator at c + d gives at x the dose of the planned one at x - d. Gap: a
    point r from the centre gets the planned dose at r + g (same direction); scale: x factor."""
    from iortopt.modalities.xray_sphere import scenarios as xs
    from iortopt.physics.xray import load_xray_beam, sphere_dose_gy

    beam = load_xray_beam("generic_50kV_spheres")
    centre, radius, time_min = np.array([1.0, -2.0, 3.0]), 20.0, 25.0
    rng = np.random.default_rng(4)
    dirs = rng.normal(size=(40, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    r = rng.uniform(21.0, 35.0, (40, 1))
    points = centre + r * dirs
    sigma = {"centre_shift_mm": 2.0, "tissue_gap_mm": 1.5, "dose_scale_percent": 5.0}
    rows = xs.build(sigma)
    doses = xs.scenario_doses(points, centre, radius, time_min, beam, rows, jnp.float32)
    names = [n for n, _ in rows]

    def planned(pts):
        return np.asarray(
            sphere_dose_gy(jnp.asarray(pts, jnp.float32), centre, radius, time_min, beam)
        )

    np.testing.assert_allclose(doses[0], planned(points), rtol=1e-6)
    k = names.index("centre_shift_mm_x+")
    np.testing.assert_allclose(doses[k], planned(points - [2.0, 0, 0]), rtol=1e-5)
    k = names.index("tissue_gap_mm+")
    np.testing.assert_allclose(doses[k], planned(centre + (r + 1.5) * dirs), rtol=1e-5)
    assert np.all(doses[k] < doses[0])
    k = names.index("dose_scale_percent-")
    np.testing.assert_allclose(doses[k], 0.95 * doses[0], rtol=1e-6)


def test_electron_moved_cone_and_disc():
    from iortopt.modalities.electron import scenarios as es
    from iortopt.physics.disc import Disc
    from iortopt.physics.electron import Cone

    f = np.float64
    cone = Cone(
        np.int32(0), np.int32(0), f(60.0), np.array([0.0, 0.0, 10.0]),
        np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0]), f(100.0),
    )  # fmt: skip
    disc = Disc(np.array([0.0, 0.0, -20.0]), np.array([0.0, 0.0, 1.0]), f(45.0), f(6.0))
    e1, e2 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    sigma = {"cone_shift_mm": 2.0, "cone_tilt_deg": 3.0, "disc_shift_mm": 4.0}
    rows = dict(es.build(sigma | {"dose_scale_percent": 2.0}))
    c, d, scale = es.moved(cone, disc, e1, e2, rows["nominal"])
    assert np.array_equal(c.end_mm, cone.end_mm) and np.array_equal(c.axis, cone.axis)
    assert scale == 1.0
    c, _, _ = es.moved(cone, disc, e1, e2, rows["cone_shift_mm_1-"])
    np.testing.assert_allclose(c.end_mm, [0.0, -2.0, 10.0])
    c, _, _ = es.moved(cone, disc, e1, e2, rows["cone_tilt_deg_0+"])
    tilt = np.degrees(np.arccos(-c.axis[2]))
    assert tilt == pytest.approx(3.0) and np.array_equal(c.end_mm, cone.end_mm)
    assert float(c.axis @ c.toe) == pytest.approx(0.0, abs=1e-12)
    _, d, _ = es.moved(cone, disc, e1, e2, rows["disc_shift_mm_0+"])
    np.testing.assert_allclose(d.centre_mm, [4.0, 0.0, -20.0])
    assert es.moved(cone, disc, e1, e2, rows["dose_scale_percent+"])[2] == pytest.approx(1.02)


def test_electron_robust_choice_moves_and_refusals():
    """The modality's check (called first thing by its ``prepare``) names the field."""
    from iortopt.modalities.electron.robust import check as electron_check
    from iortopt.modalities.electron.robust import choice_scenarios
    from iortopt.modalities.xray_sphere.robust import check as xray_check

    doc = tomllib.loads((ROOT / "configs" / "breast_electron_robust.toml").read_text())
    assert electron_check(parse_config(doc))  # the shipped example passes
    assert choice_scenarios(parse_config(doc)) is None
    doc["robust"]["optimise"] = True
    moves, reduce = choice_scenarios(parse_config(doc))
    cone = {"end_mm": np.zeros(3), "axis": np.array([0.0, 0.0, -1.0]),
            "toe": np.array([0.0, -1.0, 0.0]), "diameter_mm": 60.0}  # fmt: skip
    disc = {"centre_mm": np.array([0.0, 0.0, -20.0]), "normal": np.array([0.0, 0.0, 1.0])}
    sets = moves(cone, disc)
    assert len(sets) == 15 and sets[0][2] == 1.0
    assert np.array_equal(sets[0][0]["end_mm"], cone["end_mm"]) and sets[0][0]["diameter_mm"] == 60
    assert float(-reduce(jnp.asarray(-np.array([99.0, 97.0])))) == 97.0
    for config, check in (
        ("breast_electron_robust", electron_check),
        ("breast_xray_robust", xray_check),
    ):
        doc = tomllib.loads((ROOT / "configs" / f"{config}.toml").read_text())
        doc["robust"] = {"magnitudes": {"shift_mm": 1.0}}
        with pytest.raises(ConfigError, match="robust.magnitudes"):
            check(parse_config(doc))


def test_xray_robust_choice_ranks_by_the_aggregate_of_scenario_scores():
    from iortopt.modalities.xray_sphere.choice import _choose
    from iortopt.modalities.xray_sphere.robust import choice_scenarios

    doc = tomllib.loads((ROOT / "configs" / "breast_xray_robust.toml").read_text())
    assert choice_scenarios(parse_config(doc)) is None  # optimise = false: nominal choice
    doc["robust"] |= {"optimise": True, "aggregate": "worst", "temperature": 0.0}
    scenario_points, reduce = choice_scenarios(parse_config(doc))
    pts = np.random.default_rng(0).normal(size=(6, 3)) * 30
    sets = scenario_points(pts, np.zeros(3))
    assert len(sets) == 10 and np.allclose(sets[0][0], pts) and sets[0][1] == 1.0
    scores = np.array([90.0, 70.0, 85.0])  # one size's score in three scenarios
    assert float(-reduce(jnp.asarray(-scores))) == 70.0  # worst case = the lowest score
    base = {"fits_cavity": True, "skin_flag": False, "target_coverage_percent": 100.0,
            "skin_distance_mm": 10.0, "skin_max_gy": 5.0, "wall_gap_mm": 1.0}  # fmt: skip
    rows = [
        base | {"diameter_cm": 3.5, "score": 88.0, "score_robust": 80.0},
        base | {"diameter_cm": 4.0, "score": 92.0, "score_robust": 75.0},
    ]
    assert _choose(rows, 5.0, 5.0)[0] == 1
    best, reason, _ = _choose(rows, 5.0, 5.0, "score_robust")
    assert best == 0 and "robust score (80.0)" in reason


# -- robust X-ray time and centre -----------------------------------------------------------------


def test_xray_robust_time_rule_against_hand_values():
    """Dose is linear in time: the robust time is Rx over the aggregated scenario rate, the rate
    of a gap g being the depth dose at g (surface mode), times the scale."""
    from iortopt.modalities.xray_sphere.choice import robust_time_min
    from iortopt.physics.xray import depth_dose_gy, load_xray_beam, surface_dose_rate_gy_min

    beam, a = load_xray_beam("generic_50kV_spheres"), 20.0
    gap, scale = np.array([0.0, 1.5, 0.0]), np.array([1.0, 1.0, 0.95])
    surface = float(surface_dose_rate_gy_min(a, beam))
    hand = np.array([surface, float(depth_dose_gy(jnp.asarray(1.5), a, 1.0, beam)), 0.95 * surface])
    worst, rates = robust_time_min(a, "surface", 10.0, beam, 20.0, gap, scale, jnp.max)
    np.testing.assert_allclose(rates, hand, rtol=1e-12)
    assert worst == pytest.approx(20.0 / hand.min(), rel=1e-12)
    assert (rates * worst).min() == pytest.approx(20.0, rel=1e-12)  # the worst scenario gets Rx
    mean, _ = robust_time_min(
        a, "surface", 10.0, beam, 20.0, gap, scale, robust.aggregator("expected")
    )
    assert mean == pytest.approx(20.0 / hand.mean(), rel=1e-12) and mean < worst
    depth, rates = robust_time_min(a, "depth", 10.0, beam, 5.0, gap[:2], scale[:2], jnp.max)
    assert rates[1] == pytest.approx(float(depth_dose_gy(jnp.asarray(11.5), a, 1.0, beam)))
    assert depth == pytest.approx(5.0 / rates[1], rel=1e-12)
    one, _ = robust_time_min(a, "surface", 10.0, beam, 20.0, [0.0], [1.0], jnp.max)
    assert one == 20.0 / surface  # zero magnitudes: the nominal time bit for bit


def test_xray_zero_magnitudes_keep_the_nominal_time_and_centre():
    from types import SimpleNamespace

    from iortopt.modalities.xray_sphere import robust as xray_robust
    from iortopt.modalities.xray_sphere.choice import robust_time_and_centre
    from iortopt.physics.xray import load_xray_beam

    doc = tomllib.loads((ROOT / "configs" / "breast_xray_robust.toml").read_text())
    doc["robust"] |= {"optimise": True, "magnitudes": {k: 0.0 for k in (
        "centre_shift_mm", "tissue_gap_mm", "dose_scale_percent")}}  # fmt: skip
    spec = xray_robust.pose_scenarios(parse_config(doc))
    assert spec["shift_mm"].shape == (1, 3)
    ctx = SimpleNamespace(beam=load_xray_beam("generic_50kV_spheres"), prescription_gy=20.0)
    centre, row = np.array([0.3, -0.1, 0.2]), {"score": 1.0}
    got_row, got_centre, t, report = robust_time_and_centre(
        ctx, None, spec, None, mode="surface", depth_mm=10.0, best=1, diameters=[3.5, 4.0],
        radii=[17.5, 20.0], times=[21.0, 25.0], centre_mm=centre, nominal_row=row,
        max_shift_mm=3.0, iterations=5,
    )  # fmt: skip
    assert got_row is row and t == 25.0 and np.array_equal(got_centre, centre)
    assert report["robust"] == report["nominal"]


@pytest.fixture(scope="module")
def xray_pose(tmp_path_factory):
    """The shipped robust X-ray config, optimise = true, at 4 mm: summary ``robust.pose``."""
    doc = tomllib.loads((ROOT / "configs" / "breast_xray_robust.toml").read_text())
    doc["case"]["breast"]["spacing_mm"] = 4.0
    doc["robust"]["optimise"] = True
    out = tmp_path_factory.mktemp("xray_pose") / "plan"
    run = _run(doc, out)
    return run.summary


def test_xray_robust_time_and_centre_optimise_what_they_claim(xray_pose):
    pose = xray_pose["robust"]["pose"]
    rates = np.array(pose["prescription_rate_gy_min_per_scenario"])
    assert pose["robust"]["time_min"] == pytest.approx(20.0 / rates.min(), rel=1e-9)
    assert pose["robust"]["time_min"] > pose["nominal"]["time_min"]
    assert xray_pose["chosen_applicator"]["time_min"] == pose["robust"]["time_min"]
    assert pose["centre_optimised"] and pose["centre_kept"]
    assert pose["objective_at_robust_centre"] < pose["objective_at_nominal_centre"]
    assert pose["robust_score_at_robust_centre"] >= pose["robust_score_at_nominal_centre"]
    nominal, robust_plan = (
        {(g["structure"], g["metric"]): g for g in pose[k]}
        for k in ("goals_nominal_plan", "goals_robust_plan")
    )
    key = ("PTV_shell", "D90_gy")
    # the worst-case target D90 improves on the nominal plan (4 mm: 6.45 -> 7.55 Gy)
    assert robust_plan[key]["worst_value"] > nominal[key]["worst_value"] + 0.5


# -- robust electron pose and MU ------------------------------------------------------------------


def test_electron_robust_mu_rule_and_rotation_against_hand_values():
    from iortopt.modalities.electron.choice import robust_mu, rotate

    per_mu, scale = np.array([0.010, 0.0098, 0.0101]), np.array([1.0, 1.0, 0.98])
    hand = 23.0 / min(0.010, 0.0098, 0.0101 * 0.98)
    assert robust_mu(per_mu, scale, 23.0, jnp.max) == pytest.approx(hand, rel=1e-12)
    mean = robust_mu(per_mu, scale, 23.0, robust.aggregator("expected"))
    assert mean == pytest.approx(23.0 / np.mean(per_mu * scale), rel=1e-12)
    assert robust_mu([0.0098], [1.0], 23.0, jnp.max) == 23.0 / 0.0098  # one scenario: nominal
    v = jnp.array([0.0, 0.0, -1.0])
    np.testing.assert_array_equal(rotate(v, jnp.zeros(3)), v)
    got = rotate(v, jnp.array([np.deg2rad(3.0), 0.0, 0.0]))  # 3 degrees about x
    np.testing.assert_allclose(got, [0.0, np.sin(np.deg2rad(3.0)), -np.cos(np.deg2rad(3.0))],
                               atol=1e-7)  # fmt: skip


def _electron_doc(**robust_fields) -> dict:
    doc = tomllib.loads((ROOT / "configs" / "breast_electron_robust.toml").read_text())
    doc["case"]["eliot"]["spacing_mm"] = 5.0
    doc["electron"] |= {"iterations": 40, "energies_mev": [12.0], "cone_diameters_cm": [6.0],
                        "bevels_deg": [0.0]}  # fmt: skip
    doc["robust"] |= {"optimise": True, **robust_fields}
    return doc


@pytest.fixture(scope="module")
def electron_pose(tmp_path_factory):
    """The shipped robust electron config, optimise = true, 5 mm, its chosen row only (12 MeV,
    6 cm, flat), 40 Adam steps, cone shift and dose scale scenarios (7): ``robust.pose``."""
    doc = _electron_doc(magnitudes={"cone_tilt_deg": 0.0, "disc_shift_mm": 0.0})
    return _run(doc, tmp_path_factory.mktemp("electron_pose") / "plan").summary


def test_electron_robust_pose_and_mu_optimise_what_they_claim(electron_pose):
    pose = electron_pose["robust"]["pose"]
    rates = np.array(pose["dose_per_mu_gy_per_scenario"])
    d100 = electron_pose["d100_gy"]
    assert pose["robust"]["mu"] == pytest.approx(d100 / rates.min(), rel=1e-9)
    assert electron_pose["chosen_applicator"]["mu"] == pose["robust"]["mu"] > pose["nominal"]["mu"]
    assert pose["pose_optimised"] and pose["objective_min"] < pose["objective_first"]
    if pose["pose_kept"]:
        assert pose["robust_score_optimised_pose"] >= pose["robust_score_nominal_pose"]
    nominal, robust_plan = (
        {(g["structure"], g["metric"]): g for g in pose[k]}
        for k in ("goals_nominal_plan", "goals_robust_plan")
    )
    key = ("PTV_gland", "V100_percent")
    # the worst-case target coverage does not get worse than the nominal plan's
    assert robust_plan[key]["worst_value"] >= nominal[key]["worst_value"]


def test_electron_zero_magnitudes_keep_the_nominal_pose_and_mu():
    from types import SimpleNamespace

    from iortopt.modalities.electron import robust as electron_robust
    from iortopt.modalities.electron.choice import robust_pose_stage

    zero = {
        k: 0.0 for k in ("cone_shift_mm", "cone_tilt_deg", "disc_shift_mm", "dose_scale_percent")
    }
    spec = electron_robust.pose_scenarios(parse_config(_electron_doc(magnitudes=zero)))
    assert spec["scale"].tolist() == [1.0]
    geometry = SimpleNamespace(surface_point_mm=np.zeros(3), surface_normal=np.array([0.0, 0, 1]))
    ctx = SimpleNamespace(geometry=geometry)
    row = {"mu": 2381.4, "score": 99.7}
    cone = {"end_mm": np.zeros(3), "axis": np.array([0.0, 0, -1]), "toe": np.array([0.0, -1, 0])}
    disc = {"centre_mm": np.array([0.0, 0, -20]), "normal": np.array([0.0, 0, 1])}
    out = robust_pose_stage(ctx, None, (None, None), spec, row, cone, disc, True, {}, 5)
    assert out[0] is row and out[1] is cone and out[2] is disc
    assert out[3]["robust"] == out[3]["nominal"] and out[3]["nominal"]["mu"] == 2381.4
