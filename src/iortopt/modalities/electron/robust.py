"""Robust evaluation of an electron plan: the chosen energy, cone, MU and disc in every scenario
of :mod:`.scenarios`, metrics per scenario, goal fractions and DVH bands.

    check(cfg) -> magnitudes                    ConfigError for what is not supported
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
    if cfg.robust.optimise:
        raise ConfigError(
            "robust.optimise: robust choice of cone, MU and disc is not available yet for "
            "electron plans; set optimise = false to evaluate the plan in every scenario"
        )
    try:
        return check_magnitudes("electron", sc.DEFAULTS, cfg.robust.magnitudes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _across(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the beam ``axis`` and to each other (the directions a
    cone slides and tilts in; on a flush cone, the tissue surface's)."""
    axis = axis / np.linalg.norm(axis)
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)


def evaluate(cfg: PlanConfig, case, final_pose: tuple, dtype, then=None):
    """The summary ``robust`` dict and an ``extra_writer`` adding dvh_bands.png (then ``then``).
    ``final_pose``: (context, Cone, Disc) of the plan (``ElectronPlanResult.final_pose``)."""
    from iortopt.evaluation.robust_metrics import scenario_metrics
    from iortopt.outputs.figures import structure_colours
    from iortopt.outputs.plan_files import GoalSpec
    from iortopt.outputs.robust_figures import bands_writer, robust_summary

    r = cfg.robust
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    ctx, cone, disc = final_pose
    e1, e2 = _across(np.asarray(cone.axis, float))
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
        "optimise": False,
        "seed": r.seed if r.scenarios == "sampled" else None,
        "dose_points": "voxel centres of every structure (no sub-sampling at tissue "
        "boundaries), planned MU kept, so the nominal scenario differs slightly from the plan",
    }
    summary = robust_summary(scenario_set, per_scenario, goals, tuple(r.band_percent))
    clinical = {s.name for s in case.structures if s.role != "other"}
    writer = bands_writer(
        doses,
        {k: v for k, v in weights.items() if k in clinical},
        vv,
        tuple(r.band_percent),
        rx,
        f"{cfg.plan.name}: DVH bands over {len(rows)} scenarios",
        structure_colours([s.name for s in case.structures]),
        then=then,
    )
    return summary, writer
