"""Robust evaluation of an electron plan: the chosen energy, cone, MU and disc in every scenario
of :mod:`.scenarios`, metrics per scenario, goal fractions and DVH bands.

    check(cfg) -> magnitudes                    ConfigError for what is not supported
    choice_scenarios(cfg) -> robust argument of optimise_electron (robust row choice) or None
    evaluate(cfg, case, final_pose, dtype, then) -> (summary dict, extra_writer)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities.electron import scenarios as sc
from iortopt.optimisation.robust import check_magnitudes
from iortopt.physics.electron import cone_dose_gy


def check(cfg: PlanConfig) -> dict:
    """The magnitudes of ``[robust]`` (ConfigError naming the field for what is not supported)."""
    if cfg.case.kind == "dicom":
        raise ConfigError(
            "robust: not available yet for electron plans on DICOM cases (the CT's ray-marched "
            "surface); remove [robust] or plan the built-in ELIOT case"
        )
    try:
        return check_magnitudes("electron", sc.DEFAULTS, cfg.robust.magnitudes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def choice_scenarios(cfg: PlanConfig):
    """``robust`` of :func:`~iortopt.modalities.electron.choice.optimise_electron` for
    ``[robust] optimise = true`` (None otherwise): ``moves(cone, disc)`` -> [(cone, disc, dose
    factor)] per scenario (catalogue dicts) and the aggregate."""
    from iortopt.optimisation.robust import aggregator

    r = cfg.robust
    if r is None or not r.optimise:
        return None
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)

    def moves(cone: dict, disc: dict):
        e1, e2 = sc.across(cone["axis"])
        return [sc.moved_dicts(cone, disc, e1, e2, row) for _, row in rows]

    # a choice needs no gradient: the worst case is the exact worst score (temperature 0)
    return moves, aggregator(r.aggregate, 0.0, r.cvar_alpha)


def evaluate(cfg: PlanConfig, case, final_pose: tuple, dtype, then=None):
    """The summary ``robust`` dict and an ``extra_writer`` adding dvh_bands.png (then ``then``).
    ``final_pose``: (context, Cone, Disc) of the plan (``ElectronPlanResult.final_pose``)."""
    from iortopt.evaluation.robust_metrics import scenario_metrics
    from iortopt.outputs.plan_files import GoalSpec
    from iortopt.outputs.robust_figures import case_bands_writer, robust_summary

    r = cfg.robust
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    ctx, cone, disc = final_pose
    e1, e2 = sc.across(np.asarray(cone.axis, float))
    inside = np.zeros(case.grid.n_voxels, bool)
    for s in case.structures:
        inside |= s.occupancy.reshape(-1) > 0
    points = jnp.asarray(case.grid.points_mm()[inside], dtype)
    weights = {s.name: s.occupancy.reshape(-1)[inside] for s in case.structures}
    one = jax.jit(
        lambda c, d: cone_dose_gy(
            points, c, ctx.beam, ctx.surface, d, ctx.disc_index, ctx.disc_edge_mm
        )
    )
    doses = []
    for _, row in rows:
        cone_s, disc_s, scale = sc.moved(cone, disc, e1, e2, row)
        c = jax.tree_util.tree_map(jnp.asarray, cone_s)
        d = jax.tree_util.tree_map(jnp.asarray, disc_s)
        doses.append(np.asarray(one(c, d), np.float64) * scale)
    doses = np.stack(doses)
    vv, rx = case.grid.voxel_volume_cm3, cfg.prescription.dose_gy
    per_scenario = scenario_metrics(doses, weights, vv, rx)
    goals = [GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals]
    scenario_set = {
        "modality": "electron",
        "kind": r.scenarios,
        "names": [name for name, _ in rows],
        "magnitudes": mags,
        "one_sided": [],
        "optimise": bool(r.optimise),
        **(
            {
                "aggregate": r.aggregate,
                "temperature": 0.0,
                "cvar_alpha": r.cvar_alpha,
                "optimised": "the catalogue row (energy, cone, bevel), by the aggregate of its "
                "score over the scenarios at its planned MU (score_robust in "
                "catalogue_comparison); the joint pose optimisation stays nominal",
            }
            if r.optimise
            else {}
        ),
        "seed": r.seed if r.scenarios == "sampled" else None,
        "dose_points": "voxel centres of every structure (no sub-sampling at tissue "
        "boundaries), planned MU kept, so the nominal scenario differs slightly from the plan",
    }
    summary = robust_summary(scenario_set, per_scenario, goals, tuple(r.band_percent))
    writer = case_bands_writer(
        doses, weights, case.structures, vv, tuple(r.band_percent), rx, cfg.plan.name, then
    )
    return summary, writer
