"""Benchmark whole plans: setup, compile, optimisation and full-dose wall times, peak memory.

Usage::

    python benchmarks/bench_plan.py                       # built-in case
    python benchmarks/bench_plan.py configs/flap_large_gpu.toml --device gpu
    python benchmarks/bench_plan.py configs/flap_256_500_gpu.toml --case-param spacing_mm=4 \
        --case-param supersampling=1 --max-iterations 10         # the same case, coarse (dry run)

Prints a summary and writes ``benchmarks/results/plan_<name>_<device>_<utc>.json`` (via a temporary
name), plus a markdown row for ``benchmarks/RESULTS.md``.

Whole CLI processes, cold and warm (issue 18: what a user waits for)::

    python benchmarks/bench_plan.py --processes                  # every shipped CPU config
    python benchmarks/bench_plan.py --processes configs/flap_default.toml --repeats 3

For each config: ``iortopt run`` in a new process with an empty compilation cache (cold), then
again with the cache that run filled (warm), ``--repeats`` times each; the process wall time and
summary.json's split (imports, JAX start-up, case build, compiles, optimisation, writing). Writes
``benchmarks/results/plan_processes_<device>_<utc>.json``. "Cold" means an empty compilation
cache; the operating system's file cache (Python modules already read once) is not emptied.
A third phase, "watch", is the second plan of the config in one process (what ``iortopt run
--watch`` does after a save): its wall time is the plan's alone (the process start-up is paid
once, before the first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_tg43 import device_peak_mib, host_peak_rss_mib, save_json_atomic  # noqa: E402


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``), None where unknown: the figures of two
    machines called "2-core CPU" differ by up to 1.7x."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def case_param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for the built-in phantom's parameters (``[case.flap]`` etc.); VALUE is a
    TOML/JSON number, boolean or quoted string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"{key}: {value!r} is not a number or quoted string"
        ) from None


SHIPPED_CPU_CONFIGS = sorted(
    p for p in (HERE.parent / "configs").glob("*.toml") if not p.stem.endswith("_gpu")
)


def _cli_run(config: Path, out: Path, cache: Path) -> tuple[float, dict]:
    """One ``iortopt run`` process: (wall time s, its summary.json)."""
    import subprocess

    env = {**os.environ, "IORTOPT_CACHE_DIR": str(cache)}
    env.pop("IORTOPT_NO_COMPILE_CACHE", None)
    cmd = [sys.executable, "-m", "iortopt.cli", "run", str(config), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = done.stderr[-2000:]
        raise SystemExit(f"{config}: iortopt run failed ({done.returncode}):\n{tail}")
    return wall, json.loads((out / "summary.json").read_text())


def _watch_replan(config: Path, out: Path, cache: Path) -> tuple[float, dict]:
    """The second of two plans of ``config`` in one new process, as ``iortopt run --watch``
    makes them (the CLI's own plan function): (its wall time s, its summary.json)."""
    import subprocess

    env = {**os.environ, "IORTOPT_CACHE_DIR": str(cache)}
    env.pop("IORTOPT_NO_COMPILE_CACHE", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--watch-worker", str(config), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise SystemExit(f"{config}: in-process replan failed ({done.returncode}):\n{tail}")
    wall = float(done.stdout.strip().splitlines()[-1])
    return wall, json.loads((out / "summary.json").read_text())


def _watch_worker(config: Path, out: Path) -> None:
    """Plan ``config`` twice in this process with the CLI's plan step; print the second's wall
    time (s) last."""
    from iortopt.cli import main as cli
    from iortopt.compute.compile_cache import enable_compile_cache
    from iortopt.compute.runtime import configure, start_backend

    dtype = configure(None, "float32")
    start_backend()
    cache = enable_compile_cache(True)
    plan = dict(out=out, overwrite=False, dtype=dtype, quiet=True, compile_cache=str(cache))
    cli._plan_once(config, startup={}, **plan)
    t0 = time.perf_counter()
    cli._plan_once(config, startup={}, **plan)
    print(f"{time.perf_counter() - t0:.6f}")


def bench_processes(configs: list[Path], repeats: int, out_dir: Path) -> dict:
    """Cold and warm whole-process runs of each config (see the module docstring)."""
    from iortopt.compute.runtime import device_info

    rows = []
    for config in configs:
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(tmp) / "cache"
                for phase in ("cold", "warm", "watch"):
                    run = _watch_replan if phase == "watch" else _cli_run
                    wall, s = run(config, Path(tmp) / phase, cache)
                    rows.append(
                        {
                            "config": config.name,
                            "repeat": rep,
                            "phase": phase,
                            "process_wall_s": wall,
                            "wall_times_s": s["wall_times_s"],
                            "grid_shape_zyx": s["grid_shape_zyx"],
                            "goals_all_met": s["goals_all_met"],
                        }
                    )
                    print(f"{config.name} {phase} #{rep}: {wall:.2f} s", flush=True)
    record = {
        "benchmark": "plan_processes",
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        # set in some containers: without bytecode files in src/ every run compiles iortopt anew
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "repeats": repeats,
        "runs": rows,
    }
    stamp = record["utc"].replace(":", "").replace("-", "")
    path = save_json_atomic(
        out_dir / f"plan_processes_{record['device']['platform']}_{stamp}.json", record
    )
    print(f"\nwrote {path}\n")
    print("| config | phase | process wall s (median) | split (median of repeats) |")
    print("|---|---|---|---|")
    for config in configs:
        for phase in ("cold", "warm", "watch"):
            mine = [r for r in rows if r["config"] == config.name and r["phase"] == phase]
            walls = sorted(r["process_wall_s"] for r in mine)
            keys = mine[0]["wall_times_s"].keys()
            split = {
                k: sorted(r["wall_times_s"].get(k) or 0.0 for r in mine)[len(mine) // 2]
                for k in keys
            }
            text = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in split.items())
            print(f"| {config.name} | {phase} | {walls[len(walls) // 2]:.2f} | {text} |")
    return record


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--watch-worker"]:
        _watch_worker(Path(argv[1]), Path(argv[2]))
        return {"watch_worker": str(argv[1])}
    if "--processes" in argv:
        proc = argparse.ArgumentParser(description="cold/warm whole-process runs")
        proc.add_argument("--processes", action="store_true")
        proc.add_argument("configs", nargs="*", type=Path)
        proc.add_argument("--repeats", type=int, default=1)
        proc.add_argument("--out", default=str(HERE / "results"))
        a = proc.parse_args(argv)
        return bench_processes(a.configs or SHIPPED_CPU_CONFIGS, a.repeats, Path(a.out))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "config", nargs="?", default=None, help="plan config (default: built-in case)"
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None)
    parser.add_argument("--precision", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--max-iterations", type=int, default=None, help="override optimizer.max_iterations"
    )
    parser.add_argument(
        "--case-param",
        type=case_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a built-in case parameter, e.g. spacing_mm=4 (repeatable)",
    )
    args = parser.parse_args(argv)

    from iortopt.compute.runtime import configure, device_info

    t_start = time.perf_counter()
    dtype = configure(args.device, args.precision)
    import jax

    from iortopt.config import load_config
    from iortopt.pipeline import execute, prepare

    cfg = load_config(args.config)
    if args.max_iterations is not None:
        optimizer = cfg.optimizer.model_copy(update={"max_iterations": args.max_iterations})
        cfg = cfg.model_copy(update={"optimizer": optimizer})
    if args.case_param:
        section = {"builtin_flap": "flap", "builtin_breast": "breast", "builtin_eliot": "eliot"}
        name = section.get(cfg.case.kind)
        if name is None:
            parser.error(f"--case-param needs a built-in case, not {cfg.case.kind!r}")
        params = {**getattr(cfg.case, name), **dict(args.case_param)}
        cfg = cfg.model_copy(update={"case": cfg.case.model_copy(update={name: params})})
    prepared = prepare(cfg, dtype)
    case = prepared.case if hasattr(prepared, "case") else None
    with tempfile.TemporaryDirectory() as tmp:
        result = execute(prepared, Path(tmp) / "plan")
    case = case or result.case
    total = time.perf_counter() - t_start
    s = result.summary
    record = {
        "benchmark": "plan",
        "config": args.config or "built-in flap_default",
        "plan": cfg.plan.name,
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "precision": args.precision,
        "grid_shape_zyx": s["grid_shape_zyx"],
        "n_voxels": int(case.grid.n_voxels),
        **{k: s[k] for k in ("optimisation_voxels", "n_dwells_active", "influence") if k in s},
        "iterations": s.get("iterations"),
        "max_iterations": cfg.optimizer.max_iterations,
        "chosen_applicator": s.get("chosen_applicator"),
        "goals_all_met": s["goals_all_met"],
        "wall_times_s": s["wall_times_s"],
        "total_wall_s_incl_imports_and_compile": total,
        "peak_host_rss_mib": host_peak_rss_mib(),
        "peak_device_mib": device_peak_mib(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
    }
    w = s["wall_times_s"]
    print(json.dumps(record, indent=2))
    stamp = record["utc"].replace(":", "").replace("-", "")
    name = f"plan_{cfg.plan.name}_{record['device']['platform']}_{stamp}.json"
    path = save_json_atomic(Path(args.out) / name, record)
    print(f"\nwrote {path}")
    size = f"{'x'.join(map(str, s['grid_shape_zyx']))} ({record['n_voxels']} vox)"
    if "n_dwells_active" in s:
        size += f", {s['n_dwells_active']} dwells, {s['optimisation_voxels']} opt vox"
    print(
        f"| {record['utc'][:10]} | plan {cfg.plan.name} | {record['device']['device_kind']} | "
        f"{size} | "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in w.items())
        + f", total {total:.1f} s | RSS {record['peak_host_rss_mib']:.0f} MiB |"
    )
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
