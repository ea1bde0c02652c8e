"""The fixed costs of a new ``iortopt run`` process that are not iortopt's code: the interpreter's
start, ``import jax`` with its first operation, and the import of each library a plan uses.

Usage::

    python benchmarks/bench_floors.py               # 5 repeats of each, new processes
    python benchmarks/bench_floors.py --repeats 9

Each figure is the median wall time (s) of new ``python`` processes (the operating system's file
cache is warm: every module has been read once). A library's figure is its import on top of
NumPy and JAX, as in a run, where JAX is imported first. "all libraries" imports them all in one
process (shared dependencies counted once): what a plan pays before any iortopt code runs.
Writes ``benchmarks/results/floors_<utc>.json`` and prints a markdown table for ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_plan import cpu_model  # noqa: E402
from bench_tg43 import save_json_atomic  # noqa: E402

JAX_START = "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
#: What ``iortopt run`` imports besides NumPy and JAX (the built-in plans of all modalities):
#: the CLI, config validation, the dose-engine helpers, the optimiser, storage, figures, report.
LIBRARIES = {
    "typer + rich (CLI)": "import typer, rich.console, rich.table",
    "pydantic (config)": "import pydantic",
    "optax (optimiser)": "import optax",
    "scipy.ndimage + scipy.spatial": "import scipy.ndimage, scipy.spatial",
    "zarr (plan.zarr)": "import zarr",
    "matplotlib (figures)": "import matplotlib.figure, matplotlib.backends.backend_agg",
    "jinja2 (report)": "import jinja2",
}


def wall_s(code: str) -> float:
    """Wall time (s) of one new ``python -c code`` process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def median_s(code: str, repeats: int) -> float:
    return statistics.median(wall_s(code) for _ in range(repeats))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    n = args.repeats

    interpreter = median_s("pass", n)
    with_numpy = median_s("import numpy", n)
    with_jax = median_s(JAX_START, n)
    libraries = {
        name: median_s(f"{JAX_START}; {code}", n) - with_jax for name, code in LIBRARIES.items()
    }
    everything = median_s("; ".join([JAX_START, *LIBRARIES.values()]), n)
    rows = [
        ("Python interpreter (`python -c pass`)", interpreter),
        ("NumPy import", with_numpy - interpreter),
        ("JAX import and first operation", with_jax - with_numpy),
        *((f"{name}, on top of JAX", s) for name, s in libraries.items()),
        ("**all of the above in one process**", everything),
    ]
    payload = {
        "benchmark": "floors",
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "repeats": n,
        "seconds": {label: round(s, 4) for label, s in rows},
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = save_json_atomic(Path(args.out) / f"floors_{stamp}.json", payload)
    print(f"| fixed cost of a new process (median of {n}) | s |\n|---|---|")
    for label, s in rows:
        print(f"| {label} | {s:.3f} |")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
