"""Robust evaluation: metrics of every uncertainty scenario, goal-satisfaction fractions, bands.

Pure functions of per-scenario doses on the optimisation voxels (every structure voxel is one, so
the metrics equal the full-grid ones of that scenario); scenario 0 is the nominal one.

    scenario_metrics(doses, weights, voxel_volume_cm3, rx)   -> [{structure: metrics}] per scenario
    goal_met(value, op, limit)                                -> bool (a nan value is not met)
    goal_fractions(goals, per_scenario)                       -> per goal: fraction of scenarios met
    metric_bands(per_scenario, band_percent)                  -> nominal/min/pLow/p50/pHigh/max
    dvh_bands(doses, weights, voxel_volume_cm3, band_percent) -> DVH volume bands per structure
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from iortopt.evaluation.dvh import cumulative_dvh, structure_metrics


def scenario_metrics(
    doses_gy: np.ndarray,
    weights: Mapping[str, np.ndarray],
    voxel_volume_cm3: float,
    prescription_gy: float,
) -> list[dict[str, dict[str, float]]]:
    """Per scenario (rows of ``doses_gy`` (S, P), Gy) the metrics of every structure
    (:func:`iortopt.evaluation.dvh.structure_metrics`; ``weights``: name -> (P,) occupancy)."""
    doses = np.asarray(doses_gy, np.float64)
    return [
        {
            name: structure_metrics(d, w, voxel_volume_cm3, prescription_gy)
            for name, w in weights.items()
        }
        for d in doses
    ]


def goal_met(value: float, op: str, limit: float) -> bool:
    """Whether ``value op limit`` holds (``op``: ``>=`` or ``<=``); a non-finite value is not met,
    as in :func:`iortopt.outputs.plan_files.evaluate_plan`."""
    if not np.isfinite(value):
        return False
    return bool(value >= limit if op == ">=" else value <= limit)


def goal_fractions(
    goals: Sequence, per_scenario: Sequence[Mapping], names: Sequence[str] | None = None
) -> list[dict]:
    """For each goal (``structure``, ``metric``, ``op``, ``value``), in how many scenarios it is
    met: ``n_met``, ``fraction_met`` (of all scenarios), ``met_nominal`` (scenario 0), the
    worst value over the scenarios (the smallest for ``>=``, the largest for ``<=``) and, with
    the scenario ``names``, ``not_met_in`` (the names of the scenarios that fail it)."""
    out = []
    for g in goals:
        values = np.array([m[g.structure][g.metric] for m in per_scenario], np.float64)
        met = [goal_met(v, g.op, g.value) for v in values]
        finite = values[np.isfinite(values)]
        worst = float("nan")
        if finite.size:
            worst = float(finite.min() if g.op == ">=" else finite.max())
        out.append(
            {
                "structure": g.structure,
                "metric": g.metric,
                "op": g.op,
                "limit": g.value,
                "n_met": int(sum(met)),
                "fraction_met": float(np.mean(met)) if met else float("nan"),
                "met_nominal": bool(met[0]) if met else False,
                "worst_value": worst,
            }
        )
        if names is not None:
            out[-1]["not_met_in"] = [n for n, ok in zip(names, met, strict=True) if not ok]
    return out


def metric_bands(
    per_scenario: Sequence[Mapping], band_percent: tuple[float, float] = (10.0, 90.0)
) -> dict[str, dict[str, dict[str, float]]]:
    """structure -> metric -> ``nominal``, ``min``, ``p<low>``, ``p50``, ``p<high>``, ``max`` over
    the scenarios (percentiles linear between scenarios; nan values left out)."""
    low, high = band_percent
    keys = (f"p{low:g}", "p50", f"p{high:g}")
    out: dict = {}
    for name, metrics in per_scenario[0].items():
        out[name] = {}
        for metric, nominal in metrics.items():
            values = np.array([m[name][metric] for m in per_scenario], np.float64)
            values = values[np.isfinite(values)]
            row = {"nominal": float(nominal)}
            if values.size:
                pct = np.percentile(values, [low, 50.0, high])
                row |= {"min": float(values.min())}
                row |= {k: float(v) for k, v in zip(keys, pct, strict=True)}
                row |= {"max": float(values.max())}
            out[name][metric] = row
    return out


def dvh_bands(
    doses_gy: np.ndarray,
    weights: Mapping[str, np.ndarray],
    voxel_volume_cm3: float,
    band_percent: tuple[float, float] = (10.0, 90.0),
    n_bins: int = 400,
) -> dict[str, dict[str, np.ndarray]]:
    """Per structure the cumulative DVHs of every scenario on one dose axis: ``dose_gy`` (bins),
    ``nominal``, ``low``, ``high`` (the ``band_percent`` percentiles), ``min``, ``max`` as
    volume fractions (0-1), scenario 0 being the nominal one."""
    doses = np.asarray(doses_gy, np.float64)
    out = {}
    for name, w in weights.items():
        inside = np.asarray(w) > 0
        if not inside.any():
            continue
        top = float(doses[:, inside].max())
        width = top / n_bins if top > 0 else 1.0
        curves = []
        for d in doses:
            h = cumulative_dvh(d, w, voxel_volume_cm3, bin_width_gy=width, max_dose_gy=top)
            curves.append(h.volume_fraction)
        n = min(len(c) for c in curves)
        stack = np.stack([c[:n] for c in curves])
        low, high = np.percentile(stack, list(band_percent), axis=0)
        out[name] = {
            "dose_gy": np.arange(n) * width,
            "nominal": stack[0],
            "low": low,
            "high": high,
            "min": stack.min(axis=0),
            "max": stack.max(axis=0),
        }
    return out


def pose_comparison(pose: dict, goals, per_nominal, per_robust, names) -> dict:
    """``pose`` (the nominal and the robust pose/time of an X-ray or electron plan) with the
    goal fractions of the nominal and the robust plan over the same scenarios."""
    return pose | {
        "goals_nominal_plan": goal_fractions(goals, per_nominal, names),
        "goals_robust_plan": goal_fractions(goals, per_robust, names),
    }


def scenario_set_record(
    modality: str,
    robust,
    names: list[str],
    magnitudes: dict,
    one_sided: list[str],
    optimised: str,
    dose_points: str,
) -> dict:
    """The scenario set as summary.json ``robust`` states it for a plan whose robust choice is
    scored with the exact aggregate (temperature 0). ``robust``: the ``[robust]`` settings
    (scenarios, optimise, aggregate, cvar_alpha, seed)."""
    record = {
        "modality": modality,
        "kind": robust.scenarios,
        "names": names,
        "magnitudes": magnitudes,
        "one_sided": one_sided,
        "optimise": bool(robust.optimise),
    }
    if robust.optimise:
        record |= {
            "aggregate": robust.aggregate,
            "temperature": 0.0,
            "cvar_alpha": robust.cvar_alpha,
            "optimised": optimised,
        }
    record["seed"] = robust.seed if robust.scenarios == "sampled" else None
    record["dose_points"] = dose_points
    return record
