"""Pareto-set throughput on the built-in flap case: K = 10, 100, 1000 plans in one program.

The built-in HDR flap plan (``configs/flap_default.toml``: 2 mm grid, 116 active dwells) with
``[pareto] objectives = ["CTV", "bowel", "ureter"]``: the influence matrix and the nominal plan
are computed once, then for each K the set of :func:`iortopt.modalities.hdr_flap.pareto.
compute_set` (optimisation of all K plans, non-dominated filter, per-plan metrics). Reported per
K: wall time including compilation, compile time, optimisation and metrics time, plans/s, the
non-dominated count, peak host RSS (``resource.getrusage``, the process peak so far: K ascending)
and the device's ``peak_bytes_in_use`` where the backend reports it. With ``--quality N``, N
plans of the largest K are re-optimised one by one with the single-plan L-BFGS
(:func:`iortopt.optimisation.optax_loop.minimise`, exact sorted D_v) on the same weighted
objective, and the relative objective gap of the batched plan is reported.

Prints a table and writes ``benchmarks/results/bench_pareto_<time>_<platform>.json`` (temporary
name, then rename). ``python benchmarks/bench_pareto.py [--plans 10,100,1000] [--quality 5]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tg43 import _ensure_iortopt_importable, device_peak_mib, host_peak_rss_mib  # noqa: E402

GROUPS = ["CTV", "bowel", "ureter"]


def _config(n_plans: int, iterations: int | None, optimizer: str | None, block: int = 0):
    from iortopt.config import load_config, parse_config

    doc = load_config(Path(__file__).resolve().parents[1] / "configs" / "flap_default.toml")
    doc = doc.model_dump(mode="json", exclude_none=True)
    pareto = {"objectives": GROUPS, "n_plans": n_plans, "block_plans": block}
    if iterations is not None:
        pareto["iterations"] = iterations
    if optimizer is not None:
        pareto["optimizer"] = optimizer
    doc["pareto"] = pareto
    return parse_config(doc, "bench_pareto")


def _nominal(prepared, jnp):
    """Influence matrix (Gy/s) on the optimisation voxels and the nominal optimum (s)."""
    from iortopt.modalities.hdr_flap.pipeline import _influence_matrix, _initial_time_s
    from iortopt.optimisation import objectives
    from iortopt.optimisation.optax_loop import minimise

    cfg = prepared.config
    points = prepared.case.grid.points_mm(np.float32)[prepared.opt_mask.reshape(-1)]
    matrix, _, _ = _influence_matrix(
        points, prepared.dwells, prepared.kernel, prepared.sk_U, prepared.dtype
    )
    weights = {k: jnp.asarray(v) for k, v in prepared.weights.items()}
    terms = objectives.build_terms(
        cfg.objectives,
        weights,
        prepared.case.grid.voxel_volume_cm3,
        prepared.dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
    )
    total = objectives.combine(terms)
    t_max = cfg.applicator.max_dwell_time_s
    unit = np.asarray(matrix @ jnp.ones(matrix.shape[1], matrix.dtype))
    target = prepared.weights[cfg.prescription.structure]
    init = np.full(matrix.shape[1], _initial_time_s(unit, target, cfg.prescription.dose_gy, t_max))
    result = minimise(
        lambda t, params, a: total(a @ t, t, params),
        init,
        t_max,
        max_iterations=cfg.optimizer.max_iterations,
        tolerance=cfg.optimizer.tolerance,
        operands=(objectives.term_params(terms), matrix),
    )
    return matrix, result.times_s


def _quality(prepared, matrix, pset, n: int, jnp) -> list[dict]:
    """Relative gap of ``n`` batched plans to the single-plan L-BFGS on the same objective."""
    from iortopt.modalities.hdr_flap import pareto as hp
    from iortopt.optimisation import objectives
    from iortopt.optimisation.optax_loop import minimise
    from iortopt.optimisation.pareto import grouped_objective

    cfg = prepared.config
    rows, weights = hp._compact_problem(cfg, prepared.weights, np.asarray(matrix))
    terms = objectives.build_terms(
        cfg.objectives,
        {k: jnp.asarray(v) for k, v in weights.items()},
        prepared.case.grid.voxel_volume_cm3,
        prepared.dwells.neighbour_pairs(),
        cfg.prescription.dose_gy,
    )
    _, groups = hp.group_indices(cfg)
    groups_fn, rest_fn = grouped_objective(terms, groups)
    params = objectives.term_params(terms)
    a = jnp.asarray(rows)
    g = len(groups)

    def objective(t, w, params, a):
        d = a @ t
        return g * jnp.dot(w, groups_fn(d, t, params)) + rest_fn(d, t, params)

    k = pset.weights.shape[0]
    picks = sorted({0, *range(1, min(g + 1, k)), *np.linspace(0, k - 1, n).astype(int)})[:n]
    out = []
    nominal_value = float(
        objective(
            jnp.asarray(pset.times_s[0], jnp.float32), jnp.asarray(pset.weights[0]), params, a
        )
    )
    for i in picks:
        w = jnp.asarray(pset.weights[i], jnp.float32)
        ref = minimise(
            lambda t, params, a, w=w: objective(t, w, params, a),
            pset.times_s[i],
            cfg.applicator.max_dwell_time_s,
            max_iterations=1000,
            tolerance=1e-9,
            operands=(params, a),
        )
        batched = float(objective(jnp.asarray(pset.times_s[i], jnp.float32), w, params, a))
        out.append(
            {
                "plan": int(i),
                "weights": [float(x) for x in pset.weights[i]],
                "batched": batched,
                "single_lbfgs": ref.objective,
                "absolute_gap": batched - ref.objective,
                # relative to the nominal plan's objective: OAR-only vertices have optimum ~0
                "gap_of_nominal_objective": (batched - ref.objective) / nominal_value,
            }
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plans", default="10,100,1000", help="comma-separated K values")
    p.add_argument("--iterations", type=int, default=None, help="default: the config default")
    p.add_argument("--optimizer", choices=("adam", "lbfgs"), default=None)
    p.add_argument("--block", type=int, default=0, help="plans per block (0: auto)")
    p.add_argument("--quality", type=int, default=0, help="plans re-checked by L-BFGS")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    _ensure_iortopt_importable()
    import jax
    import jax.numpy as jnp

    from iortopt.modalities.hdr_flap import pareto as hp
    from iortopt.pipeline import prepare

    plans = [int(v) for v in args.plans.split(",")]
    cfg = _config(plans[0], args.iterations, args.optimizer)
    prepared = prepare(cfg, jnp.float32)
    t0 = time.perf_counter()
    matrix, nominal = _nominal(prepared, jnp)
    setup_s = time.perf_counter() - t0
    device = jax.devices()[0]
    cases, pset = [], None
    for k in sorted(plans):
        run = dataclasses.replace(
            prepared, config=_config(k, args.iterations, args.optimizer, args.block)
        )
        c0 = time.process_time()
        pset = hp.compute_set(run, matrix, nominal)
        cpu_s = time.process_time() - c0
        s = hp.summary(pset)
        cases.append(
            {
                "n_plans": k,
                "wall_s": s["wall_s"],
                "compile_s": s["compile_s"],
                "optimise_s": s["optimise_s"],
                "metrics_s": s["metrics_s"],
                "process_cpu_s": cpu_s,
                "plans_per_s": s["plans_per_s"],
                "n_non_dominated": s["n_non_dominated"],
                "iterations": s["iterations"],
                "optimizer": s["optimizer"],
                "block_plans": s["block_plans"],
                "peak_rss_mib": host_peak_rss_mib(),
                "device_peak_mib": device_peak_mib(device),
            }
        )
    quality = _quality(run, matrix, pset, args.quality, jnp) if args.quality else []
    meta = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "problem": (
            f"built-in flap case, {prepared.case.grid.shape_zyx} grid, {len(prepared.dwells)} "
            f"dwells, groups {GROUPS}, float32"
        ),
        "setup_s": setup_s,
    }
    print(f"Pareto sets, {meta['device_kind']} ({meta['platform']}), {meta['problem']}")
    print(f"{'K':>6}{'wall s':>9}{'compile s':>11}{'plans/s':>9}{'non-dom':>9}{'RSS MiB':>9}")
    for c in cases:
        print(
            f"{c['n_plans']:>6}{c['wall_s']:>9.2f}{c['compile_s']:>11.2f}"
            f"{c['plans_per_s']:>9.1f}{c['n_non_dominated']:>9}{c['peak_rss_mib']:>9.0f}"
        )
    for q in quality:
        print(
            f"plan {q['plan']} weights {np.round(q['weights'], 3)}: objective {q['batched']:.5g} "
            f"vs single-plan L-BFGS {q['single_lbfgs']:.5g} (gap "
            f"{100 * q['gap_of_nominal_objective']:+.3f} % of the nominal objective)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = meta["timestamp_utc"].replace(":", "").replace("-", "")
    final = args.out / f"bench_pareto_{stamp}Z_{meta['platform']}.json"
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=final.name + ".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"meta": meta, "cases": cases, "quality": quality}, fh, indent=2)
    os.replace(tmp, final)
    print(f"JSON: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
