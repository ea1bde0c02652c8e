"""Benchmark batch planning: plans per minute of a sweep on a local Dask cluster, with 1 and 2
workers, and the JAX persistent compilation cache on vs off.

The sweep is the built-in flap plan with the bowel-sparing objective weight varied (every job has
the same grid and dwell count, so every job compiles the same programs). Runs, each into a fresh
store and (for "cold") a fresh cache folder:

    workers=1, cache cold       the first job fills the cache, the others read it
    workers=N, cache cold       the same with N worker processes (for each N in --workers)
    workers=1, cache off        every job compiles everything
    workers=1, cache warm       a second sweep reusing the first sweep's cache

Usage::

    python benchmarks/bench_batch.py                       # 6 jobs, 2 mm grid, workers 1 and 2
    python benchmarks/bench_batch.py --jobs 4 --spacing-mm 3 --workers 1,2,4

Prints a summary, writes ``benchmarks/results/batch_<device>_<utc>.json`` (via a temporary name)
and prints markdown rows for ``benchmarks/RESULTS.md``. Wall times include starting the Dask
cluster and its worker processes (imports, JAX start-up), as a user running ``iortopt batch`` sees.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_tg43 import save_json_atomic  # noqa: E402


def manifest_text(name: str, n_jobs: int, spacing_mm: float, max_iterations: int | None) -> str:
    """A sweep of ``n_jobs`` bowel-objective weights over the built-in plan."""
    weights = [round(1.0 + 99.0 * k / max(n_jobs - 1, 1), 3) for k in range(n_jobs)]
    lines = [
        "[batch]",
        f'name = "{name}"',
        "[batch.set]",
        f'"case.flap.spacing_mm" = {spacing_mm}',
    ]
    if max_iterations is not None:
        lines.append(f'"optimizer.max_iterations" = {max_iterations}')
    lines += ["[sweep]", f'"objectives.5.weight" = {weights}']
    return "\n".join(lines) + "\n"


def run_sweep(folder: Path, label: str, workers: int, cache_dir: Path | None, args) -> dict:
    from iortopt.batch import collect_rows, load_manifest, run_batch, with_settings

    manifest = folder / f"{label}.toml"
    manifest.write_text(manifest_text(label, args.jobs, args.spacing_mm, args.max_iterations))
    batch = with_settings(
        load_manifest(manifest),
        device=args.device,
        compilation_cache=cache_dir is not None,
        jax_cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    store = folder / f"store-{label}"
    t0 = time.perf_counter()
    outcome = run_batch(batch, store, workers=workers, processes=True)
    wall = time.perf_counter() - t0
    rows = sorted(collect_rows(store), key=lambda r: r.get("finished_utc") or "")
    done = [r for r in rows if r["status"] == "done"]
    job_walls = [r["wall_s"] for r in done]
    compiles = [r.get("compile_s", 0.0) for r in done]
    result = {
        "label": label,
        "workers": workers,
        "cache": "off" if cache_dir is None else label.split("-")[-1],
        "jobs": len(rows),
        "done": outcome.done,
        "failed": outcome.failed,
        "wall_s": wall,
        "plans_per_minute": 60.0 * outcome.done / wall,
        "job_wall_s": job_walls,
        "job_compile_s": compiles,
        "first_job_wall_s": job_walls[0] if job_walls else None,
        "later_jobs_median_wall_s": statistics.median(job_walls[1:]) if len(done) > 1 else None,
        "first_job_compile_s": compiles[0] if compiles else None,
        "later_jobs_median_compile_s": statistics.median(compiles[1:]) if len(done) > 1 else None,
        "grid_shape_zyx": None,
    }
    summary = store / "files" / done[0]["job_id"] / "summary.json" if done else None
    if summary is not None and summary.exists():
        s = json.loads(summary.read_text())
        result["grid_shape_zyx"] = s["grid_shape_zyx"]
        result["n_dwells_active"] = s.get("n_dwells_active")
        result["device"] = s.get("device")
    print(
        f"{label}: {outcome.done}/{len(rows)} done in {wall:.1f} s = "
        f"{result['plans_per_minute']:.1f} plans/min; job wall first "
        f"{result['first_job_wall_s']:.1f} s, later median "
        f"{result['later_jobs_median_wall_s'] or float('nan'):.1f} s; compile first "
        f"{result['first_job_compile_s']:.2f} s, later median "
        f"{result['later_jobs_median_compile_s'] or float('nan'):.2f} s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the sweep")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--spacing-mm", type=float, default=2.0, help="dose grid spacing")
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for workers in worker_counts:
            cache = folder / f"cache-w{workers}"
            runs.append(run_sweep(folder, f"w{workers}-cold", workers, cache, args))
        runs.append(run_sweep(folder, "w1-off", 1, None, args))
        runs.append(run_sweep(folder, "w1-warm", 1, folder / "cache-w1", args))

    record = {
        "benchmark": "batch",
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sweep": f"built-in flap, objectives.5.weight x {args.jobs}",
        "spacing_mm": args.spacing_mm,
        "max_iterations": args.max_iterations,
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    platform = (runs[0].get("device") or {}).get("platform", "unknown")
    stamp = record["utc"].replace(":", "").replace("-", "")
    path = save_json_atomic(Path(args.out) / f"batch_{platform}_{stamp}.json", record)
    print(f"\nwrote {path}\n")
    kind = (runs[0].get("device") or {}).get("device_kind", platform)
    grid = "x".join(map(str, runs[0].get("grid_shape_zyx") or []))
    for r in runs:
        print(
            f"| {record['utc'][:10]} | {kind} | {r['jobs']} x flap {grid} | {r['workers']} | "
            f"{r['cache']} | {r['wall_s']:.1f} | **{r['plans_per_minute']:.1f}** | "
            f"{r['first_job_wall_s']:.1f} / {r['later_jobs_median_wall_s']:.1f} | "
            f"{r['first_job_compile_s']:.2f} / {r['later_jobs_median_compile_s']:.2f} | "
            f"{path.name} |"
        )
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
