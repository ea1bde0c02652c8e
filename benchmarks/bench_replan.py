"""Benchmark in-memory replanning of an HDR flap plan (``iortopt.pipeline.replan_session``).

Usage::

    python benchmarks/bench_replan.py                          # the built-in flap plan
    python benchmarks/bench_replan.py configs/flap_default.toml --repeats 3

In one process: the session build (case, influence matrix), the first optimisation (compiles,
or loads the persistent compilation cache), the same again, then one replan after each kind of
change a physicist makes: an objective's dose (+5 %), the active dwells (the first six
catheters only), an objective's weight (x2), a goal's limit. Each change is undone before the
next, so every replan starts from the plan of the unchanged config. Prints the times and writes
``benchmarks/results/replan_<device>_<utc>.json`` (via a temporary name).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_tg43 import save_json_atomic  # noqa: E402

BUILTIN = HERE.parent / "configs" / "flap_default.toml"


def _timed(label: str, replan) -> dict:
    return {
        "change": label,
        "wall_s": replan.wall_s,
        "iterations": replan.iterations,
        "objective": replan.objective,
        "goals_met": sum(bool(g["met"]) for g in replan.goals),
    }


def bench(config: Path, repeats: int) -> dict:
    """Session build and replan times of ``config`` (see the module docstring)."""
    from iortopt.compute.compile_cache import enable_compile_cache
    from iortopt.compute.runtime import configure, device_info, start_backend
    from iortopt.pipeline import replan_session

    dtype = configure(None, "float32")
    start_backend()
    enable_compile_cache(True)
    t0 = time.perf_counter()
    session = replan_session(config, dtype)
    build_s = time.perf_counter() - t0
    cfg = session.config()
    first = session.optimise(warm_start=False)
    rows = [_timed("first", first)]
    catheters = session.catheters
    dose_k = 0
    weight_k = next(k for k, o in enumerate(cfg.objectives) if o.type == "dvh_max")
    for _ in range(repeats):
        rows.append(_timed("same again", session.optimise()))
        session.set_objective(dose_k, dose_gy=1.05 * cfg.objectives[dose_k].dose_gy)
        rows.append(_timed("objective dose +5 %", session.optimise()))
        session.set_objective(dose_k, dose_gy=cfg.objectives[dose_k].dose_gy)
        session.optimise()
        session.set_active_catheters(catheters[:6])
        rows.append(_timed("first 6 catheters only", session.optimise()))
        session.set_active_catheters(catheters)
        session.optimise()
        session.set_objective(weight_k, weight=2.0 * cfg.objectives[weight_k].weight)
        rows.append(_timed("objective weight x2", session.optimise()))
        session.set_objective(weight_k, weight=cfg.objectives[weight_k].weight)
        session.optimise()
        session.set_goal(0, cfg.goals[0].value + 0.5)
        rows.append(_timed("goal limit +0.5", session.optimise()))
        session.set_goal(0, cfg.goals[0].value)
        session.optimise()
    record = {
        "benchmark": "replan",
        "config": str(config),
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "cpu_count": os.cpu_count(),
        "session_build_s": build_s,
        "repeats": repeats,
        "replans": rows,
    }
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", type=Path, default=BUILTIN)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    a = parser.parse_args(argv)
    record = bench(a.config, a.repeats)
    stamp = record["utc"].replace(":", "").replace("-", "")
    path = save_json_atomic(a.out / f"replan_{record['device']['platform']}_{stamp}.json", record)
    print(f"session build {record['session_build_s']:.2f} s")
    for r in record["replans"]:
        print(f"{r['change']:<24} {r['wall_s']:.3f} s  {r['iterations']:>3} it  "
              f"objective {r['objective']:.6g}  goals met {r['goals_met']}")  # fmt: skip
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
