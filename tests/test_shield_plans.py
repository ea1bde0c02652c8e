"""Shields in plans: config checks, the joint HDR optimum against a brute-force pose search, and
`iortopt run` with [[shields]] for HDR flaps and X-ray spheres (small grids to keep CI fast)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import parse_config
from iortopt.errors import ConfigError
from iortopt.modalities.hdr_flap import shields as hdr_shields
from iortopt.modalities.hdr_flap.pipeline import _influence_matrix
from iortopt.optimisation import objectives
from iortopt.optimisation import shield_placement as shl
from iortopt.pipeline import prepare_modality

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


def _doc(name: str) -> dict:
    with (CONFIGS / name).open("rb") as fh:
        return tomllib.load(fh)


def _small_flap(shield_overrides: dict | None = None, **optimizer) -> dict:
    doc = _doc("flap_shield.toml")
    doc["case"]["flap"] |= {"spacing_mm": 4.0, "supersampling": 2, "n_catheters": 4}
    doc["shields"][0] |= shield_overrides or {}
    doc["optimizer"] |= {"max_iterations": 40} | optimizer
    doc["goals"] = [g for g in doc["goals"] if g["structure"] != "ureter"]
    doc["objectives"] = [o for o in doc["objectives"] if o.get("structure") != "ureter"]
    doc["radiobiology"] = {}
    return doc


@pytest.mark.parametrize(
    "change, message",
    [
        ({"plan": {"modality": "electron"}, "case": {"kind": "builtin_eliot"}}, "protective disc"),
        ({"case": {"kind": "builtin_breast"}, "plan": {"modality": "xray_sphere"}},
         "needs case.kind 'builtin_flap'"),
    ],
)  # fmt: skip
def test_shields_that_do_not_fit_the_plan_are_refused(change, message):
    doc = _doc("flap_shield.toml")
    doc = {k: v for k, v in doc.items() if k in ("plan", "case", "shields")}
    for key, value in change.items():
        doc[key] = doc.get(key, {}) | value
    doc["case"] = {"kind": doc["case"]["kind"]}
    with pytest.raises(ConfigError, match=message):
        parse_config(doc, "test.toml")


def test_unknown_material_and_protected_structure_name_the_field():
    doc = _small_flap({"material": "gold"})
    with pytest.raises(ConfigError, match=r"shields.0 \(bowel_shield\).material: .*gold"):
        prepare_modality(parse_config(doc), jnp.float32)
    doc = _small_flap({"protects": ["colon"]})
    with pytest.raises(ConfigError, match=r"protects: no structure \['colon'\]"):
        prepare_modality(parse_config(doc), jnp.float32)


@pytest.fixture(scope="module")
def small_problem():
    """The small flap case with one shield of one size: prepared plan, matrix and objective."""
    cfg = parse_config(
        _small_flap(
            {
                "sizes_mm": [[40.0, 40.0]],
                "range_u_mm": [-12.0, 12.0],
                "range_v_mm": [-12.0, 12.0],
                "min_target_distance_mm": 0.0,
            }
        )  # fmt: skip
    )
    prepared = prepare_modality(cfg, jnp.float64)
    grid = prepared.case.grid
    points = grid.points_mm(np.float64)[prepared.opt_mask.reshape(-1)]
    matrix, _, _ = _influence_matrix(
        points, prepared.dwells, prepared.kernel, prepared.sk_U, jnp.float64
    )
    weights = {k: jnp.asarray(v) for k, v in prepared.weights.items()}
    terms = objectives.build_terms(
        cfg.objectives, weights, grid.voxel_volume_cm3, prepared.dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
    )  # fmt: skip
    return prepared, points, matrix, terms


def test_joint_optimum_beats_a_brute_force_pose_search(small_problem):
    """Brute force: on a 5 x 5 grid of shield positions, the best dwell times for each position
    from an independent solver (scipy L-BFGS-B with bounds); the joint optimiser must do at
    least as well as the best grid point."""
    from scipy.optimize import minimize

    prepared, points, matrix, terms = small_problem
    cfg, specs = prepared.config, prepared.shield_specs
    total = objectives.combine(terms)
    params = objectives.term_params(terms, jnp.float64)
    t_max = cfg.applicator.max_dwell_time_s
    pos = prepared.dwells.positions_mm
    start = np.full(len(pos), 10.0)
    value_and_grad = jax.jit(jax.value_and_grad(lambda t, m: total(m @ t, t, params)))

    def best_times_objective(matrix_now):
        res = minimize(
            lambda t: tuple(np.asarray(x, np.float64) for x in value_and_grad(t, matrix_now)),
            start, jac=True, method="L-BFGS-B", bounds=[(0.0, t_max)] * len(start),
            options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-10},
        )  # fmt: skip
        return float(res.fun)

    def shielded(offsets):
        placed = shl.shields_at(specs, jnp.asarray(offsets), jnp.asarray(specs[0].half_sizes_mm))
        return matrix * shl.transmission_factor(pos[None], points[:, None], placed, specs)

    grid_values = [
        best_times_objective(shielded(np.array([[u, v, 0.0]])))
        for u in np.linspace(-12, 12, 5)
        for v in np.linspace(-12, 12, 5)
    ]
    optimum = hdr_shields.optimise_with_shields(
        specs, total, params, matrix, points, pos, start, t_max,
        np.zeros(prepared.case.grid.shape_zyx, np.float32), prepared.case.grid,
        cfg.optimizer.model_copy(update={"max_iterations": 400, "tolerance": 1e-10}),
        jnp.float64,
    )  # fmt: skip
    unshielded = best_times_objective(matrix)
    assert min(grid_values) < 0.98 * unshielded  # the shield matters in this problem
    assert max(grid_values) > 1.01 * min(grid_values)  # and so does its position
    assert optimum.objective <= min(grid_values) * (1 + 2e-3)
    # the reported objective is reproduced by the reported pose and times
    t = jnp.asarray(optimum.times_s)
    check = float(total(shielded(optimum.pose) @ t, t, params))
    assert check == pytest.approx(optimum.objective, rel=1e-6)


def test_shielded_dose_never_exceeds_the_open_dose(small_problem):
    prepared, _, _, _ = small_problem
    specs = prepared.shield_specs
    stage = hdr_shields.ShieldStage(
        specs,
        None,
        shl.shields_at(specs, jnp.asarray([[3.0, -4.0, 0.0]]), jnp.asarray(specs[0].half_sizes_mm)),
        None,
    )
    times = np.linspace(1.0, 30.0, len(prepared.dwells))
    shielded = hdr_shields.full_dose_gy(prepared, times, stage)
    open_dose = hdr_shields.full_dose_gy(prepared, times)
    assert np.all(shielded <= open_dose * (1 + 1e-9) + 1e-12)
    bowel = prepared.case.structure("bowel").occupancy > 0.5
    assert shielded[bowel].mean() < 0.8 * open_dose[bowel].mean()
    ctv = prepared.case.structure("CTV").occupancy > 0.5
    np.testing.assert_allclose(shielded[ctv], open_dose[ctv], rtol=1e-9)


def _write_toml(doc: dict, path: Path) -> None:
    """Minimal TOML writer for the config dicts used here (tables, arrays of tables, scalars)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    lines = []

    def table(name, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) or name == ""}
        subs = {k: v for k, v in d.items() if isinstance(v, dict) and name != ""}
        lines.append(f"[{name}]")
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in scalars.items())
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for key, val in doc.items():
        if isinstance(val, dict):
            table(key, val)
        elif isinstance(val, list) and val and isinstance(val[0], dict):
            for item in val:
                lines.append(f"[[{key}]]")
                lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in item.items())
        else:
            lines.insert(0, f"{json.dumps(key)} = {value(val)}")
    path.write_text("\n".join(lines) + "\n")


def _run(doc: dict, folder: Path) -> tuple[Path, dict]:
    """``iortopt run`` on the config ``doc`` written into ``folder``: (out folder, summary)."""
    config = folder / "config.toml"
    _write_toml(doc, config)
    out = folder / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def hdr_shield_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flap_shield")
    doc = _small_flap({"sizes_mm": [[60.0, 60.0], [80.0, 80.0]]})
    return _run(doc, folder)


def test_hdr_run_places_the_shield_and_protects_the_bowel(hdr_shield_run):
    out, summary = hdr_shield_run
    (shield,) = summary["shields"]
    assert shield["name"] == "bowel_shield" and shield["size_mm"] in ([60.0, 60.0], [80.0, 80.0])
    assert -15.0 <= shield["offset_uv_mm"][0] <= 15.0 and -15.0 <= shield["offset_uv_mm"][1] <= 15
    assert shield["distance_ok"] and shield["min_target_distance_mm"] >= 5.0
    cmp = summary["shield_comparison"]
    with_s, without = cmp["with_shields"], cmp["optimised_without_shields"]
    # measurably lower bowel dose at (at least) equal target coverage
    assert with_s["bowel"]["D2cc_gy"] < 0.7 * without["bowel"]["D2cc_gy"]
    assert with_s["bowel"]["mean_gy"] < 0.7 * without["bowel"]["mean_gy"]
    assert with_s["CTV"]["D90_gy"] >= without["CTV"]["D90_gy"] - 0.1
    # the same dwell times without the shield give the bowel more dose
    removed = cmp["same_times_shields_removed"]
    assert removed["bowel"]["D2cc_gy"] > with_s["bowel"]["D2cc_gy"]
    assert len(summary["shield_optimisation"]["size_trials"]) == 2
    store = zarr.open_group(str(out / "plan.zarr"), mode="r")
    outline = np.asarray(store["shield_bowel_shield"]["outline_mm"])
    assert outline.shape[1] == 3 and np.all(np.isfinite(outline))
    assert (out / "dose_slices.png").stat().st_size > 0
    assert not list(out.parent.glob(".*checkpoint*"))  # removed once the outputs are complete


@pytest.fixture(scope="module")
def xray_shield_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xray_shield")
    doc = _doc("breast_xray_shield.toml")
    doc["case"]["breast"] |= {"spacing_mm": 3.0, "supersampling": 2}
    doc["xray"] |= {"catalogue_diameters_cm": [3.5, 4.0], "optimise_position": False}
    return _run(doc, folder)


def test_xray_run_places_the_shield_and_protects_the_chest_wall(xray_shield_run):
    out, summary = xray_shield_run
    (shield,) = summary["shields"]
    assert shield["material"] == "tungsten_rubber" and shield["distance_ok"]
    assert shield["normal"] == [0.0, 0.0, 1.0]
    cmp = summary["shield_comparison"]
    with_s, removed = cmp["with_shields"], cmp["same_plan_shields_removed"]
    assert with_s["chest_wall"]["D2cc_gy"] < 0.8 * removed["chest_wall"]["D2cc_gy"]
    assert with_s["lung"]["mean_gy"] < removed["lung"]["mean_gy"]
    assert with_s["PTV_shell"]["D90_gy"] == pytest.approx(removed["PTV_shell"]["D90_gy"], rel=1e-6)
    rows = summary["applicator_comparison"]
    assert all("without_shields" in r for r in rows)
    assert all(r["chest_wall_D2cc_gy"] <= r["without_shields"]["chest_wall_D2cc_gy"] for r in rows)
    assert "shield_chest_wall_shield" in zarr.open_group(str(out / "plan.zarr"), mode="r")


def test_memory_estimate_counts_the_shield_stage():
    from iortopt.pipeline import plan_memory, prepare_modality

    with_shield = parse_config(_small_flap())
    without = with_shield.model_copy(update={"shields": []})
    est_with = plan_memory(prepare_modality(with_shield, jnp.float32)).estimate
    est_without = plan_memory(prepare_modality(without, jnp.float32)).estimate
    stage = est_with.stages["shields: joint optimisation"]
    pairs = est_with.sizes["optimisation_voxels"] * est_with.sizes["dwells"]
    assert sum(stage.values()) >= pairs * 4 * 6  # at least the crossings of every pair
    assert est_with.peak_bytes > est_without.peak_bytes
    assert "shields: joint optimisation" not in est_without.stages


def test_in_plane_rotation_is_optimised_for_a_plane_rectangle():
    """A long, narrow lead strip under a point source, free to turn: to shield points along a line
    at 30 degrees it must turn to 30 degrees (the pose's rotation gets a gradient)."""
    from scipy.optimize import minimize

    from iortopt.cases.case import Case
    from iortopt.grid import Grid

    doc = _doc("flap_shield.toml")
    doc["shields"] = [
        {"name": "strip", "material": "lead", "thickness_mm": 10.0, "shape": "rectangle",
         "sizes_mm": [[80.0, 4.0]], "surface": "plane", "origin_mm": [0.0, 0.0, -20.0],
         "normal": [0.0, 0.0, 1.0], "axis_u": [1.0, 0.0, 0.0],
         "rotation_range_deg": [-80.0, 80.0], "edge_mm": 1.0}
    ]  # fmt: skip
    cfg = parse_config(doc)
    case = Case("empty", Grid((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), ())
    (spec,) = shl.build_specs(cfg.shields, case, cfg.plan.modality, jnp.float64)
    assert spec.free and spec.range_rotation_rad == pytest.approx((-1.3963, 1.3963), abs=1e-4)
    angle = np.radians(30.0)
    s = np.linspace(-60.0, 60.0, 61)  # the shadow on the plane is 60 mm long, the strip 4 mm wide
    points = np.column_stack([s * np.cos(angle), s * np.sin(angle), np.full(61, -40.0)])
    low, high = (jnp.asarray(a) for a in shl.pose_ranges([spec]))
    half = jnp.asarray(spec.half_sizes_mm)

    def dose(z):
        placed = shl.shields_at([spec], shl.pose_from_z(z.reshape(1, 3), low, high), half)
        return jnp.sum(shl.transmission_factor(jnp.zeros(3), jnp.asarray(points), placed, [spec]))

    value_and_grad = jax.jit(jax.value_and_grad(dose))
    z0 = shl.z_from_pose(shl.start_pose([spec]), [spec]).ravel()

    def fun(z):
        return tuple(np.asarray(v, float) for v in value_and_grad(jnp.asarray(z)))

    res = minimize(fun, z0, jac=True, method="L-BFGS-B")
    pose = np.asarray(shl.pose_from_z(jnp.asarray(res.x).reshape(1, 3), low, high))[0]
    # optimum: a plateau where the whole 30 mm half-shadow stays within the strip's fully
    # occupied core (half width 2 - edge 1 = 1 mm): |rotation - 30 deg| <= asin(1/30) = 1.9 deg
    assert np.degrees(pose[2]) == pytest.approx(30.0, abs=2.0)
    at_30 = shl.z_from_pose(np.array([[0.0, 0.0, angle]]), [spec]).ravel()
    assert float(dose(jnp.asarray(res.x))) == pytest.approx(
        float(dose(jnp.asarray(at_30))), rel=1e-6
    )
    assert float(dose(jnp.asarray(res.x))) < 0.6 * float(dose(jnp.asarray(z0)))
    bad = _doc("flap_shield.toml")
    bad["shields"][0]["rotation_range_deg"] = [-10.0, 10.0]
    with pytest.raises(ConfigError, match="plane shields only"):
        parse_config(bad)


def test_shield_stage_resumes_from_its_checkpoint(small_problem, tmp_path):
    prepared, points, matrix, terms = small_problem
    cfg, specs = prepared.config, prepared.shield_specs
    total = objectives.combine(terms)
    params = objectives.term_params(terms, jnp.float64)
    path = tmp_path / "shields.checkpoint.npz"
    args = (specs, total, params, matrix, points, prepared.dwells.positions_mm,
            np.full(len(prepared.dwells), 10.0), cfg.applicator.max_dwell_time_s,
            np.zeros(prepared.case.grid.shape_zyx, np.float32), prepared.case.grid)  # fmt: skip

    def optimiser(n):
        return cfg.optimizer.model_copy(update={"max_iterations": n, "tolerance": 1e-12})

    first = hdr_shields.optimise_with_shields(
        *args, optimiser(30), jnp.float64, checkpoint_path=path, checkpoint_key="k1"
    )
    assert path.exists() and first.size_trials == []
    resumed = hdr_shields.optimise_with_shields(
        *args, optimiser(5), jnp.float64, checkpoint_path=path, checkpoint_key="k1"
    )
    assert resumed.size_trials == [{"resumed_from_iteration": 25}]
    assert resumed.objective <= first.objective * 1.05  # from iteration 25, not from scratch
    fresh = hdr_shields.optimise_with_shields(
        *args, optimiser(5), jnp.float64, checkpoint_path=path, checkpoint_key="other plan"
    )
    assert fresh.size_trials == [] and fresh.objective > resumed.objective
