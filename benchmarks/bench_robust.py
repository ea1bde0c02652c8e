"""Cost of robust planning against the nominal plan, per modality, and the flap statement.

For each robust config (``configs/*_robust.toml``) three runs of the whole plan (``pipeline.
prepare`` + ``execute``, outputs into a temporary folder), after one unrecorded warm-up run of
the nominal plan: the nominal plan (``[robust]`` removed), its robust evaluation (``optimise =
false``) and the robust optimisation (``optimise = true``: HDR dwell times, X-ray size,
electron energy/cone/bevel, then the X-ray time and centre and the electron pose and MU).
Prints wall times, scenario counts, the ratio to the nominal plan and the fraction of scenarios
in which each clinical goal is met, and writes
``benchmarks/results/bench_robust_<time>_<platform>.json`` (temporary name, then rename).

    python benchmarks/bench_robust.py [--only flap_robust] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tg43 import _ensure_iortopt_importable, host_peak_rss_mib  # noqa: E402

CONFIGS = ("flap_robust", "breast_xray_robust", "breast_electron_robust")


def _plan(doc: dict, out: Path) -> tuple[float, dict]:
    import jax.numpy as jnp

    from iortopt import pipeline
    from iortopt.config import parse_config

    t0 = time.perf_counter()
    result = pipeline.execute(pipeline.prepare(parse_config(doc), jnp.float32), out)
    return time.perf_counter() - t0, result.summary


def _goals(summary: dict) -> dict:
    rob = summary.get("robust")
    if rob is None:
        return {}
    return {
        f"{g['structure']} {g['metric']} {g['op']} {g['limit']:g}": {
            "n_met": g["n_met"],
            "fraction_met": g["fraction_met"],
            "worst_value": g["worst_value"],
            "nominal_value": rob["metrics"][g["structure"]][g["metric"]]["nominal"],
        }
        for g in rob["goals"]
    }


def bench_config(name: str, tmp: Path) -> dict:
    doc = tomllib.loads((ROOT / "configs" / f"{name}.toml").read_text())
    nominal_doc = {k: v for k, v in doc.items() if k != "robust"}
    _plan(nominal_doc, tmp / f"{name}_warmup")  # imports and first compilations, not recorded
    runs = {"nominal": _plan(nominal_doc, tmp / f"{name}_nominal")}
    runs["evaluation"] = _plan(
        nominal_doc | {"robust": doc["robust"] | {"optimise": False}}, tmp / f"{name}_eval"
    )
    runs["robust"] = _plan(
        nominal_doc | {"robust": doc["robust"] | {"optimise": True}}, tmp / f"{name}_robust"
    )
    base = runs["nominal"][0]
    out = {"config": name, "n_scenarios": runs["evaluation"][1]["robust"]["n_scenarios"]}
    for kind, (wall, summary) in runs.items():
        out[kind] = {
            "wall_s": wall,
            "ratio_to_nominal": wall / base,
            "wall_times_s": summary.get("wall_times_s", {}),
            "goals": _goals(summary),
            "metrics": summary["metrics"],
            **({"pose": _pose(summary)} if "pose" in summary.get("robust", {}) else {}),
        }
    return out


def _pose(summary: dict) -> dict:
    """Nominal against robust time/centre (X-ray) or pose/MU (electron), without the
    per-scenario lists."""
    pose = summary["robust"]["pose"]
    out = {k: v for k, v in pose.items() if "per_scenario" not in k and not k.startswith("goals")}
    for k in ("goals_nominal_plan", "goals_robust_plan"):
        out[k] = {
            f"{g['structure']} {g['metric']}": [g["n_met"], g["worst_value"]] for g in pose[k]
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="config name(s) (default: all present)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    _ensure_iortopt_importable()
    import jax

    names = [n for n in (args.only or CONFIGS) if (ROOT / "configs" / f"{n}.toml").exists()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = bench_config(name, Path(tmp))
            rows.append(row)
            print(f"{name}: {row['n_scenarios']} scenarios")
            for kind in ("nominal", "evaluation", "robust"):
                if kind not in row:
                    continue
                r = row[kind]
                goals = "; ".join(
                    f"{g}: {v['n_met']}/{row['n_scenarios']}" for g, v in r["goals"].items()
                )
                print(f"  {kind:10s} {r['wall_s']:7.1f} s  x{r['ratio_to_nominal']:.2f}  {goals}")
    record = {
        "benchmark": "bench_robust",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": jax.default_backend(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "peak_rss_mib": host_peak_rss_mib(),
        "results": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"bench_robust_{stamp}_{record['platform']}.json"
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(json.dumps(record, indent=2))
    os.replace(tmp_path, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
