"""The ``[pareto]`` set of an HDR flap plan: K weighted plans around the nominal one.

    check_usable(cfg, use_matrix, shields)     ConfigError unless the dose is an explicit matrix
    compute_set(prepared, matrix, times_s)     ParetoSet: the K plans, their group objectives,
                                               metrics and non-dominated mask
    summary(pset)                              the summary.json ``pareto`` entry
    writer(pset, ...)                          writes plan.zarr/pareto and pareto.png into a plan's
                                               temporary output folder

Groups (``pareto.objectives``): a structure name stands for every ``[[objectives]]`` term on it,
an index for that term alone; the other terms stay in every plan at their weight
(:mod:`iortopt.optimisation.pareto`). The K plans are optimised on the voxels the terms use (not
the optimisation margin), a structure used only by mean-dose terms collapsed to one row (its
mean dose is linear in the dwell times), starting from the nominal optimum. Their metrics are
those of the plan's evaluation (:mod:`iortopt.evaluation.batched_dvh`) on the optimisation
voxels, where every structure lies, from the same influence matrix; a picked plan's full-grid
dose reproduces them (``iortopt pareto pick``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from iortopt.config import PlanConfig
from iortopt.errors import ConfigError

#: Metrics stored per Pareto plan and structure (``structure.metric`` columns).
PLAN_METRICS = ("D98_gy", "D90_gy", "D2cc_gy", "D0.1cc_gy", "mean_gy", "max_gy", "V100_percent")


@dataclass
class ParetoSet:
    group_names: list[str]
    group_terms: list[list[str]]  # term names of each group
    weights: np.ndarray  # (K, G) on the simplex; row 0 = the nominal weights
    times_s: np.ndarray  # (K, N)
    group_values: np.ndarray  # (K, G) each group's weighted objective (minimised)
    objective: np.ndarray  # (K,) each plan's own weighted objective
    non_dominated: np.ndarray  # (K,) bool, in the group values
    metric_columns: list[str]  # "structure.metric"
    metrics: np.ndarray  # (K, M)
    timings_s: dict[str, float]
    settings: dict


def check_usable(cfg: PlanConfig, use_matrix: bool, n_points: int, n_dwells: int) -> None:
    """A Pareto set needs the dose as an explicit influence matrix (dose linear in the dwell
    times) and no shield stage.

    Raises:
        ConfigError: naming ``pareto`` and what to change.
    """
    if cfg.pareto is None:
        return
    if cfg.shields:
        raise ConfigError(
            "pareto: a Pareto set is computed for plans without [[shields]] (the shield "
            "stage moves the shield, so dose is not linear in the dwell times alone)"
        )
    if not use_matrix:
        raise ConfigError(
            f"pareto: a Pareto set needs the explicit influence matrix ({n_points} voxels x "
            f"{n_dwells} dwells); set optimizer.influence = 'matrix' or a larger "
            "optimizer.influence_memory_mb, or a coarser grid"
        )


def group_indices(cfg: PlanConfig) -> tuple[list[str], list[list[int]]]:
    """Names and ``[[objectives]]`` indices of the ``pareto.objectives`` groups.

    Raises:
        ConfigError: a term in two groups.
    """
    names, groups, owner = [], [], {}
    for k, entry in enumerate(cfg.pareto.objectives):
        if isinstance(entry, int):
            obj = cfg.objectives[entry]
            names.append(f"{entry}:{obj.type}" + (f":{obj.structure}" if obj.structure else ""))
            members = [entry]
        else:
            names.append(entry)
            members = [i for i, o in enumerate(cfg.objectives) if o.structure == entry]
        for i in members:
            if i in owner:
                raise ConfigError(
                    f"pareto.objectives[{k}]: objective term {i} is already in group "
                    f"pareto.objectives[{owner[i]}]"
                )
            owner[i] = k
        groups.append(members)
    return names, groups


def structure_blocks(
    cfg: PlanConfig, weights: dict[str, np.ndarray], matrix: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """structure -> (matrix rows, weights) of the voxels the objective terms read, in the order
    of the structures' names: the voxels of positive weight, or for a structure used only by
    mean-dose terms one row holding its occupancy-weighted mean (exact for those terms)."""
    used = sorted({o.structure for o in cfg.objectives if o.structure})
    mean_only = {
        s for s in used if all(o.type == "mean_dose" for o in cfg.objectives if o.structure == s)
    }
    out = {}
    for name in used:
        w = np.asarray(weights[name], np.float64)
        if name in mean_only:
            out[name] = ((w @ matrix / np.sum(w))[None, :], np.ones(1))
        else:
            rows = np.flatnonzero(w > 0)
            out[name] = (matrix[rows], w[rows])
    return out


def term_blocks(
    cfg: PlanConfig, weights: dict[str, np.ndarray], matrix: np.ndarray, dtype=np.float32
):
    """(matrix rows, weights) for the objective terms alone: each structure's voxels as its own
    contiguous block of rows (so every term takes a slice of the dose, not a gather), and a
    structure used only by mean-dose terms as one row holding its occupancy-weighted mean
    (exact for those terms). Voxels of no term (the optimisation margin) are left out. The rows
    come in ``dtype``."""
    blocks = structure_blocks(cfg, weights, matrix)
    used = list(blocks)
    values = [blocks[name][1] for name in used]
    sizes = [len(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    compact = {}
    for k, name in enumerate(used):
        column = np.zeros(offsets[-1], np.float32)
        column[offsets[k] : offsets[k + 1]] = values[k]
        compact[name] = column
    rows = np.concatenate([blocks[name][0] for name in used], axis=0)
    return rows.astype(dtype), compact


def _plan_metrics(prepared, matrix: np.ndarray, times_s: np.ndarray):
    """Columns ``structure.metric`` and (K, M) values of every non-"other" structure."""
    from iortopt.evaluation.batched_dvh import structure_metrics_batched

    case, cfg = prepared.case, prepared.config
    columns, values = [], []
    for s in case.structures:
        if s.role == "other":
            continue
        w = prepared.weights[s.name]
        rows = np.flatnonzero(w > 0)
        if rows.size == 0:
            continue
        dose = np.asarray(jnp.asarray(times_s, jnp.float32) @ jnp.asarray(matrix)[rows].T)
        m = structure_metrics_batched(
            dose, w[rows], case.grid.voxel_volume_cm3, cfg.prescription.dose_gy
        )
        for key in PLAN_METRICS:
            columns.append(f"{s.name}.{key}")
            values.append(m[key])
    return columns, np.stack(values, axis=1)


def _block(block_plans: int) -> int | None:
    """Plans per block: the config's, else ``CPU_BLOCK`` on a CPU and all on an accelerator."""
    import jax

    from iortopt.optimisation.pareto import CPU_BLOCK

    if block_plans > 0:
        return block_plans
    return CPU_BLOCK if jax.default_backend() == "cpu" else None


def compute_set(prepared, matrix, nominal_times_s: np.ndarray) -> ParetoSet:
    """The ``[pareto]`` set of a prepared plan from its influence matrix (optimisation voxels x
    dwells, Gy/s) and the nominal optimum (the start of every plan)."""
    from iortopt.optimisation import objectives
    from iortopt.optimisation import pareto as po

    cfg = prepared.config
    p = cfg.pareto
    t0 = time.perf_counter()
    names, groups = group_indices(cfg)
    matrix_np = np.asarray(matrix)
    rows, weights = term_blocks(cfg, prepared.weights, matrix_np)
    terms = objectives.build_terms(
        cfg.objectives,
        {k: jnp.asarray(v, prepared.dtype) for k, v in weights.items()},
        prepared.case.grid.voxel_volume_cm3,
        prepared.dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
        dv_fn=po.dose_at_volume_bisect,
    )
    w = po.simplex_weights(p.n_plans, len(groups), p.seed)
    run = po.optimise_set(
        rows,
        terms,
        groups,
        w,
        nominal_times_s,
        cfg.applicator.max_dwell_time_s,
        iterations=p.iterations,
        optimizer=p.optimizer,
        learning_rate=p.learning_rate,
        dtype=prepared.dtype,
        block=_block(p.block_plans),
    )
    t1 = time.perf_counter()
    mask = po.non_dominated(run.group_values)
    columns, values = _plan_metrics(prepared, matrix, run.times_s)
    t2 = time.perf_counter()
    return ParetoSet(
        group_names=names,
        group_terms=[[terms[i].name for i in g] for g in groups],
        weights=w,
        times_s=run.times_s,
        group_values=run.group_values,
        objective=run.objective,
        non_dominated=mask,
        metric_columns=columns,
        metrics=values,
        timings_s={
            "compile_s": run.compile_s,
            "optimise_s": run.run_s,
            "metrics_s": t2 - t1,
            "wall_s": t2 - t0,
        },
        settings={
            "method": p.method,
            "optimizer": p.optimizer,
            "iterations": p.iterations,
            "learning_rate": p.learning_rate,
            "seed": p.seed,
            "block_plans": _block(p.block_plans) or p.n_plans,
            "optimisation_rows": int(rows.shape[0]),
        },
    )


def summary(pset: ParetoSet) -> dict:
    """The summary.json ``pareto`` entry: sizes, timings, groups and the metric ranges of the
    non-dominated plans."""
    k = pset.weights.shape[0]
    wall = pset.timings_s["wall_s"]
    keep = pset.non_dominated
    ranges = {}
    for j, column in enumerate(pset.metric_columns):
        v = pset.metrics[keep, j]
        v = v[np.isfinite(v)]
        ranges[column] = [float(v.min()), float(v.max())] if v.size else None
    return {
        "n_plans": k,
        "n_non_dominated": int(np.count_nonzero(keep)),
        "groups": dict(zip(pset.group_names, pset.group_terms, strict=True)),
        **pset.settings,
        **{key: float(v) for key, v in pset.timings_s.items()},
        "plans_per_s": k / wall if wall > 0 else None,
        "nominal_index": 0,
        "metric_ranges_non_dominated": ranges,
        "store": "plan.zarr/pareto",
        "figure": "pareto.png",
    }


def store_arrays(pset: ParetoSet) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and attributes of ``plan.zarr/pareto``."""
    arrays = {
        "times_s": pset.times_s,
        "weights": pset.weights,
        "group_values": pset.group_values,
        "objective": pset.objective,
        "non_dominated": pset.non_dominated,
        "metrics": pset.metrics,
    }
    attrs = {
        "groups": pset.group_names,
        "group_terms": pset.group_terms,
        "metric_columns": pset.metric_columns,
        "nominal_index": 0,
    }
    return arrays, attrs


def figure_axes(pset: ParetoSet, cfg: PlanConfig) -> list[str]:
    """Up to three metric columns for the trade-off figure: the prescription structure's D90,
    then for each other group's structure the metric of its first clinical goal (else D2cc,
    else D0.1cc, else the mean), where defined for every plan."""
    target = cfg.prescription.structure
    chosen = [f"{target}.D90_gy"]
    for name in pset.group_names:
        structure = name.split(":")[-1]
        if structure == target:
            continue
        goals = [g.metric for g in cfg.goals if g.structure == structure]
        for metric in (*goals, "D2cc_gy", "D0.1cc_gy", "mean_gy"):
            column = f"{structure}.{metric}"
            if column in pset.metric_columns and np.all(
                np.isfinite(pset.metrics[:, pset.metric_columns.index(column)])
            ):
                chosen.append(column)
                break
    return [c for c in chosen if c in pset.metric_columns][:3]


def writer(pset: ParetoSet, cfg: PlanConfig, then=None):
    """``write(tmp_folder)``: adds ``plan.zarr/pareto`` and ``pareto.png`` to a plan's output
    under construction, then calls ``then(tmp_folder)`` (e.g. the DICOM writer) if given."""
    from iortopt.io.store import add_group
    from iortopt.outputs.pareto_figures import plot_tradeoff

    def write(tmp: Path) -> None:
        arrays, attrs = store_arrays(pset)
        add_group(tmp / "plan.zarr", "pareto", arrays, attrs)
        axes = figure_axes(pset, cfg)
        columns = [pset.metrics[:, pset.metric_columns.index(c)] for c in axes]
        plot_tradeoff(
            columns,
            axes,
            pset.non_dominated,
            tmp / "pareto.png",
            title=f"{cfg.plan.name}: {pset.weights.shape[0]} Pareto plans "
            f"({np.count_nonzero(pset.non_dominated)} non-dominated)",
        )
        if then is not None:
            then(tmp)

    return write


def load_set(out_dir: str | Path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """The stored set of a plan output: (``pareto/`` arrays, their attributes, the store's root
    attributes, which hold the plan config).

    Raises:
        ConfigError: no plan.zarr or no ``pareto`` group in it (naming the folder).
    """
    from iortopt.io.store import read_attrs, read_group

    store = Path(out_dir) / "plan.zarr"
    if not store.is_dir():
        raise ConfigError(f"{out_dir}: no plan.zarr (not a plan output folder)")
    try:
        arrays, attrs = read_group(store, "pareto")
    except KeyError:
        raise ConfigError(
            f"{store}: no pareto group (the plan was run without a [pareto] section)"
        ) from None
    return arrays, attrs, read_attrs(store)


def picked_config(root_attrs: dict, index: int, origin: str) -> PlanConfig:
    """The stored plan config without ``[pareto]``, named ``<plan>-pick<index>``: the config of
    one plan of the set, written with its dwell times fixed."""
    from iortopt.config import parse_config

    doc = dict(root_attrs["config"])
    doc.pop("pareto", None)
    doc["plan"] = dict(doc["plan"]) | {"name": f"{doc['plan']['name']}-pick{index}"}
    return parse_config(_without_nulls(doc), origin)


def _without_nulls(value):
    """A JSON config dump without its null entries (absent optional fields)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
