"""Robust evaluation of an electron plan: the chosen energy, cone, MU and disc in every scenario
of :mod:`.scenarios`, metrics per scenario, goal fractions and DVH bands.

    check(cfg) -> magnitudes                    ConfigError for what is not supported
    choice_scenarios(cfg) -> robust argument of optimise_electron (robust row choice) or None
    pose_scenarios(cfg) -> robust_pose argument of optimise_electron (robust pose, MU) or None
    evaluate(cfg, case, final_pose, dtype, then, nominal_pose, pose) -> (summary, extra_writer)
"""

from __future__ import annotations

import jax
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


def pose_scenarios(cfg: PlanConfig) -> dict | None:
    """``robust_pose`` of :func:`~iortopt.modalities.electron.choice.optimise_electron` for
    ``[robust] optimise = true`` (None otherwise): the stacked scenario deviations, the config's
    smooth aggregate (``temperature``: the gradient) and ``across`` (the in-plane directions of
    a cone axis, :func:`.scenarios.across`)."""
    from iortopt.optimisation.robust import aggregator

    r = cfg.robust
    if r is None or not r.optimise:
        return None
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    return {
        "cone_shift_mm": np.stack([row["cone_shift_mm"] for _, row in rows]),
        "cone_tilt_deg": np.stack([row["cone_tilt_deg"] for _, row in rows]),
        "disc_shift_mm": np.stack([row["disc_shift_mm"] for _, row in rows]),
        "scale": 1.0 + np.array([row["dose_scale_percent"][0] for _, row in rows]) / 100.0,
        "smooth_reduce": aggregator(r.aggregate, r.temperature, r.cvar_alpha),
        "across": sc.across,
    }


def _scenario_doses(case, pose: tuple, rows, dtype):
    """(doses (S, P) Gy, weights) of the plan ``pose`` = (context, Cone, Disc) on every
    structure's voxels in every scenario (planned MU)."""
    ctx, cone, disc = pose
    e1, e2 = sc.across(np.asarray(cone.axis, float))
    inside = np.zeros(case.grid.n_voxels, bool)
    for s in case.structures:
        inside |= s.occupancy.reshape(-1) > 0
    # put on the device as they are (jnp.asarray would lower a copy program per shape) and
    # passed as an argument: a captured points array would be a large constant of the program
    points = jax.device_put(
        np.asarray(case.grid.points_mm()[inside], jax.dtypes.canonicalize_dtype(dtype))
    )
    weights = {s.name: s.occupancy.reshape(-1)[inside] for s in case.structures}
    one = jax.jit(
        lambda p, c, d: cone_dose_gy(
            p, c, ctx.beam, ctx.surface, d, ctx.disc_index, ctx.disc_edge_mm
        )
    )
    doses = []
    for _, row in rows:
        cone_s, disc_s, scale = sc.moved(cone, disc, e1, e2, row)
        c = jax.tree_util.tree_map(jax.device_put, cone_s)
        d = jax.tree_util.tree_map(jax.device_put, disc_s)
        doses.append(np.asarray(one(points, c, d), np.float64) * scale)
    return np.stack(doses), weights


def evaluate(cfg: PlanConfig, case, final_pose: tuple, dtype, then=None, nominal_pose=None,
             pose=None):  # fmt: skip
    """The summary ``robust`` dict and an ``extra_writer`` adding dvh_bands.png (then ``then``).
    ``final_pose``: (context, Cone, Disc) of the plan (``ElectronPlanResult.final_pose``).
    ``nominal_pose``, ``pose``: the nominal plan and ``optimisation["robust"]`` of a robust pose
    and MU; the nominal plan is then evaluated on the same scenarios and the summary gets
    ``pose`` = nominal against robust pose, MU, goal fractions and worst values."""
    from iortopt.evaluation.robust_metrics import (
        pose_comparison,
        scenario_metrics,
        scenario_set_record,
    )
    from iortopt.outputs.plan_files import GoalSpec
    from iortopt.outputs.robust_figures import case_bands_writer, robust_summary

    r = cfg.robust
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    doses, weights = _scenario_doses(case, final_pose, rows, dtype)
    vv, rx = case.grid.voxel_volume_cm3, cfg.prescription.dose_gy
    per_scenario = scenario_metrics(doses, weights, vv, rx)
    goals = [GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals]
    extra = None
    if pose is not None and nominal_pose is not None:
        names = [name for name, _ in rows]
        per_nominal = scenario_metrics(_scenario_doses(case, nominal_pose, rows, dtype)[0],
                                       weights, vv, rx)  # fmt: skip
        extra = {"pose": pose_comparison(pose, goals, per_nominal, per_scenario, names)}
    scenario_set = scenario_set_record(
        "electron",
        r,
        [name for name, _ in rows],
        mags,
        [],
        "the catalogue row (energy, cone, bevel), by the aggregate of its "
        "score over the scenarios at its planned MU (score_robust in "
        "catalogue_comparison); then the cone pose and disc, by the joint optimiser on "
        "the aggregate of its dose terms over the scenarios (vmapped), and the MU, by "
        "the aggregate of the scenario doses at the normalisation point (= D100) "
        "(pose: nominal against robust)",
        "voxel centres of every structure (no sub-sampling at tissue "
        "boundaries), planned MU kept, so the nominal scenario differs slightly from the plan",
    )
    summary = robust_summary(scenario_set, per_scenario, goals, tuple(r.band_percent), extra)
    writer = case_bands_writer(
        doses, weights, case.structures, vv, tuple(r.band_percent), rx, cfg.plan.name, then
    )
    return summary, writer
