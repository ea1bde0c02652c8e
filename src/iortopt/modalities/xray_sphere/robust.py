"""Robust evaluation of a sphere plan: the chosen applicator, centre and time in every scenario
of :mod:`.scenarios`, metrics per scenario, goal fractions and DVH bands.

    check(cfg) -> magnitudes                    ConfigError for what is not supported
    choice_scenarios(cfg) -> robust argument of plan_spheres (robust size choice) or None
    pose_scenarios(cfg) -> robust_pose argument of plan_spheres (robust time, centre) or None
    evaluate(cfg, case, chosen, beam, dtype, then, pose) -> (summary dict, extra_writer)
"""

from __future__ import annotations

import numpy as np

from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities.xray_sphere import scenarios as sc
from iortopt.optimisation.robust import check_magnitudes


def check(cfg: PlanConfig) -> dict:
    """The magnitudes of ``[robust]`` (ConfigError naming the field for what is not supported)."""
    r = cfg.robust
    if cfg.xray.anisotropy > 0:
        raise ConfigError(
            "robust: xray.anisotropy > 0 is not supported by the robust evaluation yet"
        )
    if cfg.shields:
        raise ConfigError("robust: robust planning with [[shields]] is not supported yet")
    try:
        return check_magnitudes("xray_sphere", sc.DEFAULTS, r.magnitudes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def choice_scenarios(cfg: PlanConfig):
    """``robust`` of :func:`~iortopt.modalities.xray_sphere.choice.plan_spheres` for
    ``[robust] optimise = true`` (None otherwise): the scenario points and the aggregate."""
    from iortopt.optimisation.robust import aggregator

    r = cfg.robust
    if r is None or not r.optimise:
        return None
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    moved = sc.stacked(rows)

    def scenario_points(points_mm, centre_mm):
        return [
            (sc.moved_points(points_mm, centre_mm, shift, gap), scale)
            for shift, gap, scale in zip(
                moved["shift_mm"], moved["gap_mm"], moved["scale"], strict=True
            )
        ]

    # a choice needs no gradient: the worst case is the exact worst score (temperature 0)
    return scenario_points, aggregator(r.aggregate, 0.0, r.cvar_alpha)


def pose_scenarios(cfg: PlanConfig) -> dict | None:
    """``robust_pose`` of :func:`~iortopt.modalities.xray_sphere.choice.plan_spheres` for
    ``[robust] optimise = true`` (None otherwise): the stacked scenario deviations, the exact
    aggregate (time rule, acceptance) and the config's smooth one (``temperature``, gradient)."""
    from iortopt.optimisation.robust import aggregator

    r = cfg.robust
    if r is None or not r.optimise:
        return None
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    return sc.stacked(rows) | {
        "reduce": aggregator(r.aggregate, 0.0, r.cvar_alpha),
        "smooth_reduce": aggregator(r.aggregate, r.temperature, r.cvar_alpha),
    }


def _plan_in_scenarios(case, centre_mm, radius_mm, time_min, beam, rows, dtype, rx):
    """(doses (S, P), weights, per-scenario metrics) of one applicator on every structure."""
    from iortopt.evaluation.robust_metrics import scenario_metrics

    inside = np.zeros(case.grid.n_voxels, bool)
    for s in case.structures:
        inside |= s.occupancy.reshape(-1) > 0
    points = case.grid.points_mm()[inside]
    weights = {s.name: s.occupancy.reshape(-1)[inside] for s in case.structures}
    doses = sc.scenario_doses(points, centre_mm, radius_mm, time_min, beam, rows, dtype)
    return doses, weights, scenario_metrics(doses, weights, case.grid.voxel_volume_cm3, rx)


def evaluate(cfg: PlanConfig, case, chosen: dict, beam, dtype, then=None, pose=None):
    """The summary ``robust`` dict and an ``extra_writer`` adding dvh_bands.png (then ``then``).

    ``pose``: ``XrayPlanResult.robust_pose`` of a robust time/centre; the nominal plan (same
    size, nominal time and centre) is then evaluated on the same scenarios too, and the summary
    gets ``pose`` = nominal against robust time, centre, goal fractions and worst values."""
    from iortopt.evaluation.robust_metrics import pose_comparison, scenario_set_record
    from iortopt.outputs.plan_files import GoalSpec
    from iortopt.outputs.robust_figures import case_bands_writer, robust_summary

    r = cfg.robust
    mags = check(cfg)
    rows = sc.build({k: v["value"] for k, v in mags.items()}, r.scenarios, r.n_scenarios, r.seed)
    vv, rx = case.grid.voxel_volume_cm3, cfg.prescription.dose_gy
    radius_mm = 10.0 * float(chosen["diameter_cm"]) / 2.0
    doses, weights, per_scenario = _plan_in_scenarios(
        case, chosen["centre_mm"], radius_mm, float(chosen["time_min"]), beam, rows, dtype, rx
    )
    goals = [GoalSpec(g.structure, g.metric, g.op, g.value) for g in cfg.goals]
    extra = None
    if pose is not None:
        nom = pose["nominal"]
        _, _, per_nominal = _plan_in_scenarios(
            case, nom["centre_mm"], radius_mm, nom["time_min"], beam, rows, dtype, rx
        )
        names = [name for name, _ in rows]
        extra = {"pose": pose_comparison(pose, goals, per_nominal, per_scenario, names)}
    scenario_set = scenario_set_record(
        "xray_sphere",
        r,
        [name for name, _ in rows],
        mags,
        ["tissue_gap_mm"],
        "the catalogue size, by the aggregate of its score over the "
        "scenarios (score_robust in applicator_comparison); then the time, by the "
        "aggregate of the scenario prescription doses (= Rx), and the centre (with "
        "xray.optimise_position), by the aggregate of the smooth score over the "
        "scenarios (pose: nominal against robust)",
        "voxel centres of every structure (no sub-sampling at the applicator "
        "surface), so the nominal scenario differs slightly from the plan's metrics",
    )
    summary = robust_summary(scenario_set, per_scenario, goals, tuple(r.band_percent), extra)
    writer = case_bands_writer(
        doses, weights, case.structures, vv, tuple(r.band_percent), rx, cfg.plan.name, then
    )
    return summary, writer
