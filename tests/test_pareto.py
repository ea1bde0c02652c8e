"""Pareto sets (`[pareto]`, iortopt.optimisation.pareto): every plan optimal for its own weights
against scipy's L-BFGS-B on the same objective written in numpy, the non-dominated filter against
a brute-force check, K = 1 at the nominal weights against the single-plan optimiser, the batched
metrics against evaluation.dvh, the pick parser, the config errors, and `iortopt run` +
`iortopt pareto pick` end to end on a coarse flap case."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import Objective, parse_config
from iortopt.errors import ConfigError
from iortopt.evaluation import dvh
from iortopt.evaluation.batched_dvh import structure_metrics_batched
from iortopt.optimisation import objectives
from iortopt.optimisation import pareto as po
from iortopt.optimisation import pareto_navigation as nav
from iortopt.optimisation.optax_loop import minimise

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()

# --- a small synthetic dose-linear problem: 3 structures, 6 dwells ------------------------------

T_MAX = 20.0
RX = 10.0


def _problem():
    rng = np.random.default_rng(3)
    n_dwells, sizes = 6, {"target": 40, "oar1": 25, "oar2": 30}
    blocks, weights, start = [], {}, 0
    total = sum(sizes.values())
    for k, (name, n) in enumerate(sizes.items()):
        # the target sits near every dwell, the OARs near dwells 0-2 and 3-5
        near = np.ones(n_dwells) if k == 0 else np.r_[np.ones(3), 0.2 * np.ones(3)][:: (-1) ** k]
        blocks.append(rng.uniform(0.3, 1.0, (n, n_dwells)) * near * 0.4)
        w = np.zeros(total, np.float32)
        w[start : start + n] = rng.uniform(0.5, 1.0, n)
        weights[name] = w
        start += n
    cfg_terms = [
        Objective(type="underdose", structure="target", dose_gy=RX, weight=10.0),
        Objective(type="overdose", structure="target", dose_gy=1.5 * RX, weight=1.0),
        Objective(type="max_dose", structure="oar1", dose_gy=6.0, weight=0.2),
        Objective(type="mean_dose", structure="oar2", dose_gy=0.0, weight=1.0),
    ]
    return np.concatenate(blocks).astype(np.float32), weights, cfg_terms


GROUPS = [[0, 1], [2], [3]]


def _numpy_objective(a, weights, w_groups):
    """The weighted objective G * sum_g w_g f_g, written out in numpy (independent of JAX)."""
    wt, w1, w2 = (weights[k].astype(np.float64) for k in ("target", "oar1", "oar2"))
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731

    def f(t):
        d = a.astype(np.float64) @ t
        m = wt > 0
        under = np.sum(wt[m] * relu(RX - d[m]) ** 2) / wt.sum() / RX**2
        over = np.sum(wt[m] * relu(d[m] - 1.5 * RX) ** 2) / wt.sum() / (1.5 * RX) ** 2
        hot = np.sum(w1 * relu(d - 6.0) ** 2) / 36.0
        mean = (np.sum(w2 * d) / w2.sum()) ** 2 / RX**2
        groups = np.array([10.0 * under + over, 0.2 * hot, mean])
        return 3.0 * float(np.dot(w_groups, groups))

    return f


@pytest.fixture(scope="module")
def small():
    a, weights, cfg_terms = _problem()
    terms = objectives.build_terms(
        cfg_terms, {k: jnp.asarray(v) for k, v in weights.items()}, 0.001, np.zeros((0, 2)), RX
    )
    w = po.simplex_weights(7, 3, seed=1)
    runs = {
        opt: po.optimise_set(
            a, terms, GROUPS, w, np.full(a.shape[1], 5.0), T_MAX, iterations=its, optimizer=opt,
            learning_rate=0.05,
        )
        for opt, its in (("adam", 600), ("lbfgs", 60))
    }  # fmt: skip
    return a, weights, terms, w, runs


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_each_plan_is_optimal_for_its_weights_against_scipy(small, optimizer):
    a, weights, _, w, runs = small
    run = runs[optimizer]
    nominal = _numpy_objective(a, weights, w[0])(run.times_s[0])
    for k in range(w.shape[0]):
        f = _numpy_objective(a, weights, w[k])
        ref = minimize(f, np.full(a.shape[1], 5.0), method="L-BFGS-B", bounds=[(0, T_MAX)] * 6,
                       options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000})  # fmt: skip
        ours = f(run.times_s[k])
        # the JAX terms and the numpy formulas agree on the value
        assert run.objective[k] == pytest.approx(ours, rel=1e-4, abs=1e-7)
        # within 1 % of scipy's optimum (of the nominal objective where the optimum is ~0: an
        # OAR-only vertex, whose optimum is t = 0, reached only asymptotically through sin^2)
        assert ours <= ref.fun + 0.01 * max(ref.fun, 0.01 * nominal) + 1e-9, (k, ours, ref.fun)
        assert np.all(run.times_s[k] >= 0) and np.all(run.times_s[k] <= T_MAX)


def test_one_plan_at_the_nominal_weights_is_the_single_plan_optimum(small):
    a, _, terms, w, _ = small
    single = minimise(
        lambda t, params, m: objectives.combine(terms)(m @ t, t, params),
        np.full(a.shape[1], 5.0),
        T_MAX,
        max_iterations=200,
        tolerance=1e-9,
        operands=(objectives.term_params(terms), jnp.asarray(a)),
    )
    one = po.optimise_set(a, terms, GROUPS, w[:1], np.full(a.shape[1], 5.0), T_MAX,
                          iterations=60, optimizer="lbfgs")  # fmt: skip
    assert w[0] == pytest.approx(np.full(3, 1 / 3))
    assert one.objective[0] == pytest.approx(single.objective, rel=1e-3)
    np.testing.assert_allclose(one.times_s[0], single.times_s, atol=0.02 * T_MAX)


def test_non_dominated_filter_against_brute_force():
    rng = np.random.default_rng(0)
    values = rng.random((120, 3))
    values[7] = values[8]  # duplicates: neither dominates the other
    keep = po.non_dominated(values, block=16)

    def dominates(j, i):
        return np.all(values[j] <= values[i]) and np.any(values[j] < values[i])

    for i in range(len(values)):
        dominated = any(dominates(j, i) for j in range(len(values)))
        assert keep[i] == (not dominated)
    kept = np.flatnonzero(keep)
    assert not any(dominates(j, i) for i in kept for j in kept)
    assert keep[7] == keep[8]


def test_simplex_design_is_deterministic_with_vertices_and_centroid():
    w = po.simplex_weights(50, 3, seed=2)
    assert w.shape == (50, 3) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[0], 1 / 3)
    np.testing.assert_allclose(w[1:4], np.eye(3))
    np.testing.assert_array_equal(w, po.simplex_weights(50, 3, seed=2))
    assert not np.allclose(w[4:], po.simplex_weights(50, 3, seed=3)[4:])
    assert len(np.unique(w.round(9), axis=0)) == 50


def test_bisected_dose_at_volume_matches_the_sorted_one():
    rng = np.random.default_rng(5)
    d = rng.gamma(4.0, 2.5, 500).astype(np.float32)
    w = rng.uniform(0.2, 1.0, 500).astype(np.float32)
    span = float(d.max() - d.min())
    volumes = jnp.asarray([2.0, 0.5 * w.sum(), 0.9 * w.sum(), 1.5 * w.sum()])
    both = jax.jit(jax.vmap(lambda v, d, w: (objectives.dose_at_volume(d, w, v),
                                             po.dose_at_volume_bisect(d, w, v)),
                            in_axes=(0, None, None)))  # fmt: skip
    ref, got = (np.asarray(x) for x in both(volumes, jnp.asarray(d), jnp.asarray(w)))
    assert np.all(got >= ref - span / 2**po.BISECT_STEPS - 1e-5) and np.all(got <= ref + 1e-5)
    assert got[-1] == pytest.approx(d.min())  # more than the structure: its minimum dose


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_metrics_equal_the_evaluation_metrics(dtype):
    rng = np.random.default_rng(6)
    doses = rng.gamma(3.0, 3.0, (4, 300)).astype(dtype)
    doses[:, :20] = doses[:, 20:40]  # ties
    w = np.where(rng.random(300) < 0.2, 0.0, rng.uniform(0.1, 1.0, 300))
    got = structure_metrics_batched(doses, w, 0.008, 10.0)
    for k in range(4):
        ref = dvh.structure_metrics(doses[k], w, 0.008, 10.0)
        for key, values in got.items():
            np.testing.assert_allclose(values[k], ref[key], rtol=1e-6, equal_nan=True)


# --- navigation -----------------------------------------------------------------------------

COLUMNS = ["CTV.D90_gy", "bowel.D2cc_gy", "ureter.D0.1cc_gy"]


def test_pick_parser_reads_conditions_and_aims():
    c = nav.parse_condition("  bowel.D2cc_gy<=10.5 ", COLUMNS)
    assert (c.column, c.op, c.value) == ("bowel.D2cc_gy", "<=", 10.5)
    assert nav.parse_condition("ureter.D0.1cc_gy > -1e1", COLUMNS).value == -10.0
    assert nav.parse_aim("CTV.D90_gy", COLUMNS) == "CTV.D90_gy"
    for bad, message in [
        ("bowel.D2cc_gy =< 10", "expected 'structure.metric OP number'"),
        ("bowel.D2cc_gy <= ten", "expected"),
        ("bowel.D2cc_gy <= 10; import os", "expected"),
        ("colon.D2cc_gy <= 10", "unknown 'colon.D2cc_gy'"),
    ]:
        with pytest.raises(nav.BadExpression, match=message):
            nav.parse_condition(bad, COLUMNS)
    with pytest.raises(nav.BadExpression, match="unknown 'CTV.D91_gy'"):
        nav.parse_aim("CTV.D91_gy", COLUMNS)


def test_choose_meets_the_conditions_and_reports_the_closest_when_infeasible():
    metrics = np.array(
        [[10.5, 11.0, 9.0], [10.0, 10.0, 8.0], [9.5, 9.0, 7.0], [9.9, 9.5, 9.5], [11.0, 8.0, 8.0]]
    )
    front = np.array([True, True, True, True, False])  # plan 4 would win, but is not on the front
    conds = [nav.parse_condition("bowel.D2cc_gy <= 10", COLUMNS)]
    assert nav.choose(COLUMNS, metrics, front, conds, "CTV.D90_gy") == 1
    assert nav.choose(COLUMNS, metrics, front, conds, "ureter.D0.1cc_gy", maximise=False) == 2
    conds.append(nav.parse_condition("CTV.D90_gy >= 10.2", COLUMNS))
    with pytest.raises(nav.NoFeasiblePlan) as info:
        nav.choose(COLUMNS, metrics, front, conds, "CTV.D90_gy")
    closest = [i for i, _, _ in info.value.closest]
    assert closest[0] in (0, 1) and 4 not in closest and len(closest) == 3


# --- config -----------------------------------------------------------------------------------


def _doc(name: str = "flap_pareto.toml") -> dict:
    with (CONFIGS / name).open("rb") as fh:
        return tomllib.load(fh)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"plan": {"modality": "xray_sphere"}}, "pareto: Pareto sets need dose linear"),
        ({"pareto": {"objectives": ["CTV", "colon"]}}, r"pareto.objectives\[1\]: no \[\[objec"),
        ({"pareto": {"objectives": ["CTV", 9]}}, r"pareto.objectives\[1\]: index 9"),
        ({"pareto": {"objectives": ["CTV"]}}, "pareto.objectives"),
        ({"pareto": {"objectives": ["CTV", "bowel"], "method": "epsilon"}}, "pareto.method"),
    ],
)
def test_pareto_config_errors_name_the_field(change, message):
    doc = _doc()
    for key, value in change.items():
        doc[key] = doc[key] | value
    with pytest.raises(ConfigError, match=message):
        parse_config(doc, "test.toml")


def test_a_term_in_two_groups_is_refused():
    from iortopt.modalities.hdr_flap.pareto import group_indices

    doc = _doc()
    doc["pareto"]["objectives"] = ["CTV", 0]
    with pytest.raises(ConfigError, match=r"pareto.objectives\[1\]: objective term 0"):
        group_indices(parse_config(doc))


# --- end to end: iortopt run with [pareto], then iortopt pareto pick -------------------------


@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    doc = _doc()
    doc["case"]["flap"] |= {"spacing_mm": 4.0, "supersampling": 2, "n_catheters": 4}
    doc["optimizer"] |= {"max_iterations": 40}
    doc["radiobiology"] = {}
    doc["pareto"] |= {"n_plans": 12, "iterations": 30}
    root = tmp_path_factory.mktemp("pareto")
    config = root / "small_pareto.toml"
    import tomli_w

    config.write_bytes(tomli_w.dumps(doc).encode())
    out = root / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_the_set_into_the_store_summary_and_figure(pareto_run):
    from iortopt.io.store import read_group

    summary = json.loads((pareto_run / "summary.json").read_text())["pareto"]
    assert summary["n_plans"] == 12 and 1 <= summary["n_non_dominated"] <= 12
    assert set(summary["groups"]) == {"CTV", "bowel", "ureter"}
    assert summary["plans_per_s"] > 0 and summary["compile_s"] > 0
    arrays, attrs = read_group(pareto_run / "plan.zarr", "pareto")
    n_dwells = json.loads((pareto_run / "summary.json").read_text())["n_dwells_active"]
    assert arrays["times_s"].shape == (12, n_dwells)
    assert arrays["weights"].shape == arrays["group_values"].shape == (12, 3)
    assert arrays["metrics"].shape == (12, len(attrs["metric_columns"]))
    assert np.array_equal(arrays["non_dominated"], po.non_dominated(arrays["group_values"]))
    assert (pareto_run / "pareto.png").stat().st_size > 10_000


def test_pick_writes_the_chosen_plan_with_its_stored_metrics(pareto_run, tmp_path):
    from iortopt.io.store import read_group

    arrays, attrs = read_group(pareto_run / "plan.zarr", "pareto")
    columns = attrs["metric_columns"]
    limit = float(np.median(arrays["metrics"][arrays["non_dominated"], columns.index(
        "bowel.D2cc_gy")]))  # fmt: skip
    picked = tmp_path / "picked"
    args = ["pareto", "pick", str(pareto_run), "--where", f"bowel.D2cc_gy <= {limit}",
            "--maximise", "CTV.D90_gy", "--out", str(picked), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((picked / "summary.json").read_text())
    k = summary["pareto_pick"]["plan_index"]
    assert arrays["non_dominated"][k]
    assert summary["iterations"] == 0
    for column, stored in summary["pareto_pick"]["stored_metrics"].items():
        structure, metric = column.split(".", 1)
        if stored is None:  # undefined (NaN), e.g. D2cc of a structure under 2 cm3
            assert summary["metrics"][structure][metric] is None
            continue
        assert summary["metrics"][structure][metric] == pytest.approx(stored, rel=1e-4, abs=1e-4)
    assert summary["metrics"]["bowel"]["D2cc_gy"] <= limit + 1e-4
    assert {"plan.zarr", "dvh.png", "dose_slices.png"} <= {p.name for p in picked.iterdir()}
    # infeasible: exit 1 with the closest plans; a bad expression: exit 2 naming it
    bad = runner.invoke(app, ["pareto", "pick", str(pareto_run), "--where",
                              "bowel.D2cc_gy <= 0.001", "--maximise", "CTV.D90_gy"])  # fmt: skip
    assert bad.exit_code == 1 and "closest" in bad.output
    bad = runner.invoke(app, ["pareto", "pick", str(pareto_run), "--maximise", "CTV.D9O_gy"])
    assert bad.exit_code == 2 and "CTV.D9O_gy" in bad.output


def test_a_set_needs_the_influence_matrix_and_no_shields():
    from iortopt.modalities.hdr_flap.pareto import check_usable

    cfg = parse_config(_doc())
    check_usable(cfg, True, 100, 10)
    with pytest.raises(ConfigError, match="pareto: a Pareto set needs the explicit influence"):
        check_usable(cfg, False, 100, 10)
    doc = _doc()
    doc["shields"] = _doc("flap_shield.toml")["shields"]
    with pytest.raises(ConfigError, match=r"pareto: .*\[\[shields\]\]"):
        check_usable(parse_config(doc), True, 100, 10)
