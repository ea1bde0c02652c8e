#!/usr/bin/env python
"""Benchmark the TG-43 dose engine (``iortopt.physics.tg43.dose_gy``, jitted) on full dose grids.

Always runs the REFERENCE PROBLEM: water, voxel centres x, y, z = -99 ... 99 mm in 2 mm steps
(100^3 voxels); 10 straight catheters parallel to z (8 evenly spaced on a circle of radius 12 mm
around the z axis, 2 at (x, y) = (+5, 0) and (-5, 0) mm), 10 dwells per catheter at
z = -22.5 ... 22.5 mm in 5 mm steps (100 dwells), 1 s each; mHDR-v2 HEBD 2012, S_K = 40000 U.
Then, unless ``--reference-only``, one case per (size, dwells): size^3 voxels over the same
-99 ... 99 mm box, dwells 5 mm apart on catheters parallel to z on a 10 mm lattice.

Only ``jax``, ``numpy`` and the iortopt sources are needed (``iortopt.grid``, ``iortopt.physics``);
if iortopt is not installed, ``../src`` next to this file is put on ``sys.path``.

    python benchmarks/bench_tg43.py                         # reference + 64^3, 128^3 x 100 dwells
    python benchmarks/bench_tg43.py --sizes 128,256 --dwells 100,500 --precision float32
    python benchmarks/bench_tg43.py --reference-only --precision float64
    python benchmarks/bench_tg43.py --device gpu --cases 256x500,512x100   # chosen pairs only
    python benchmarks/bench_tg43.py --reference-only --save-dose ref.npy   # keep the dose

``--device`` selects the JAX platform only (``jax_platforms``); the matrix-product precision is left
at JAX's default, so the dose kernel's own explicit precision is what keeps TF32 out of a dose.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REFERENCE_SOURCE = "mHDR-v2_HEBD2012"
REFERENCE_SK_U = 40000.0
BOX_MM = 99.0


def _ensure_iortopt_importable() -> None:
    try:
        import iortopt.grid  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas: {text!r}"
        )
    return values


def _case_list(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(pair) != 2 or min(pair) < 1 for pair in pairs):
        raise argparse.ArgumentTypeError(
            f"expected SIZExDWELLS pairs, e.g. 256x500,512x100: {text!r}"
        )
    return pairs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_int_list, default=[64, 128], help="grid edge sizes (N^3)")
    p.add_argument("--dwells", type=_int_list, default=[100], help="dwell counts per size")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (min taken)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON directory")
    p.add_argument("--reference-only", action="store_true", help="only the reference problem")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32")
    p.add_argument(
        "--cases",
        type=_case_list,
        default=None,
        help="SIZExDWELLS pairs run instead of every --sizes x --dwells pair, e.g. 256x500,512x100",
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default=None, help="JAX platform")
    p.add_argument(
        "--reference-spacing-mm",
        type=float,
        default=2.0,
        help="voxel spacing of the reference problem (2 mm = 100^3; coarser for dry runs)",
    )
    p.add_argument("--save-dose", type=Path, default=None, help="save the reference dose (.npy)")
    p.add_argument(
        "--chunk-size",
        default="0",
        help="points per chunk: 0 = automatic (default), 'none' = all points at once, or a number",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not 0.0 < args.reference_spacing_mm <= BOX_MM:
        p.error(f"--reference-spacing-mm must lie in (0, {BOX_MM:g}]")
    if args.chunk_size.lower() == "none":
        args.chunk_size = None
    else:
        try:
            args.chunk_size = int(args.chunk_size)
        except ValueError:
            p.error("--chunk-size must be an integer or 'none'")
        if args.chunk_size < 0:
            p.error("--chunk-size must be >= 0")
    return args


# --------------------------------------------------------------------------- problems


def reference_case(Grid, spacing_mm: float = 2.0) -> dict:
    grid = Grid.from_bounds((-BOX_MM,) * 3, (BOX_MM,) * 3, spacing_mm)
    angles = np.arange(8) * (2.0 * np.pi / 8)
    catheters_xy = np.concatenate(
        [
            np.stack([12.0 * np.cos(angles), 12.0 * np.sin(angles)], axis=1),
            [[5.0, 0.0], [-5.0, 0.0]],
        ]
    )
    return _catheter_case("reference", grid, catheters_xy, n_dwells=100)


def size_case(Grid, size: int, n_dwells: int) -> dict:
    spacing = 2.0 * BOX_MM / (size - 1) if size > 1 else 1.0
    grid = Grid.from_bounds((-BOX_MM,) * 3, (BOX_MM,) * 3, spacing)
    n_catheters = math.ceil(n_dwells / 10)
    side = math.ceil(math.sqrt(n_catheters))
    lattice = (np.arange(side) - (side - 1) / 2.0) * 10.0
    xy = np.stack(np.meshgrid(lattice, lattice, indexing="ij"), axis=-1).reshape(-1, 2)
    return _catheter_case(f"{size}^3", grid, xy[:n_catheters], n_dwells=n_dwells)


def _catheter_case(name: str, grid, catheters_xy, n_dwells: int) -> dict:
    z = -22.5 + 5.0 * np.arange(10)
    positions = np.array([[x, y, zz] for x, y in catheters_xy for zz in z])[:n_dwells]
    return {
        "name": name,
        "grid": grid,
        "positions_mm": positions,
        "axes": np.tile([0.0, 0.0, 1.0], (len(positions), 1)),
        "dwell_times_s": np.ones(len(positions)),
    }


# --------------------------------------------------------------------------- measurement


def host_peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


def device_peak_mib(device) -> float | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not all backends implement it
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def run_case(
    case: dict, kernel, dtype, chunk_size, repeats: int, jax, jnp, tg43, save_dose=None
) -> dict:
    grid = case["grid"]
    n_dwells = len(case["positions_mm"])
    device = jax.devices()[0]
    points = jax.device_put(jnp.asarray(grid.points_mm(), dtype), device)
    positions = jnp.asarray(case["positions_mm"], dtype)
    axes = jnp.asarray(case["axes"], dtype)
    times = jnp.asarray(case["dwell_times_s"], dtype)

    jitted = jax.jit(
        lambda p, q, a, t: tg43.dose_gy(p, q, a, t, kernel, REFERENCE_SK_U, chunk_size=chunk_size)
    )
    start = time.perf_counter()
    fn = jitted.lower(points, positions, axes, times).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    dose = fn(points, positions, axes, times).block_until_ready()
    first = time.perf_counter() - start
    steady = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        dose = fn(points, positions, axes, times).block_until_ready()
        steady = min(steady, time.perf_counter() - start)
    if save_dose is not None:
        np.save(save_dose, np.asarray(dose), allow_pickle=False)
    pairs = grid.n_voxels * n_dwells
    effective_chunk = (
        tg43.auto_chunk_size(n_dwells) if chunk_size == 0 else chunk_size or grid.n_voxels
    )
    return {
        "case": case["name"],
        "grid_shape_zyx": list(grid.shape_zyx),
        "spacing_mm": grid.spacing_xyz_mm[0],
        "n_voxels": grid.n_voxels,
        "n_dwells": n_dwells,
        "chunk_size": min(effective_chunk, grid.n_voxels),
        "compile_s": compile_s,
        "first_call_s": first,
        "steady_s": steady,
        "evals_per_s": pairs / steady,
        "host_peak_rss_mib": host_peak_rss_mib(),
        "device_peak_mib": device_peak_mib(device),
        # Checksums to compare devices and precisions (Gy).
        "dose_max_gy": float(jnp.max(dose)),
        "dose_sum_gy": float(jnp.sum(dose)),
    }


# --------------------------------------------------------------------------- output


def print_table(results: list[dict]) -> None:
    header = (
        f"{'case':>9} {'grid (z,y,x)':>15} {'voxels':>10} {'dwells':>6} {'chunk':>7} "
        f"{'compile s':>9} {'steady s':>9} {'Gevals/s':>9} {'RSS MiB':>8} {'dev MiB':>8} "
        f"{'max Gy':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        dev = "-" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.0f}"
        shape = "x".join(str(n) for n in r["grid_shape_zyx"])
        print(
            f"{r['case']:>9} {shape:>15} {r['n_voxels']:>10} {r['n_dwells']:>6} "
            f"{r['chunk_size']:>7} {r['compile_s']:>9.3f} {r['steady_s']:>9.3f} "
            f"{r['evals_per_s'] / 1e9:>9.3f} {r['host_peak_rss_mib']:>8.0f} {dev:>8} "
            f"{r['dose_max_gy']:>8.3f}"
        )


MARKDOWN_HEADER = (
    "| date (UTC) | device | platform | precision | reference steady s | compile s | "
    "Gevals/s | host RSS MiB | device peak MiB | jax |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(meta: dict, ref: dict) -> str:
    dev = "-" if ref["device_peak_mib"] is None else f"{ref['device_peak_mib']:.0f}"
    return (
        f"| {meta['timestamp_utc'][:16]} | {meta['device_kind']} | {meta['platform']} | "
        f"{meta['precision']} | {ref['steady_s']:.3f} | {ref['compile_s']:.2f} | "
        f"{ref['evals_per_s'] / 1e9:.3f} | {ref['host_peak_rss_mib']:.0f} | {dev} | "
        f"{meta['jax_version']} |"
    )


def save_json_atomic(path: Path, payload: dict) -> Path:
    """Write ``payload`` as JSON to ``path`` via a temporary file in the same folder and
    ``os.replace`` (no half-written result file under the final name); the benchmarks' one
    writer of result files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(out_dir: Path, payload: dict) -> Path:
    stamp = payload["meta"]["timestamp_utc"].replace(":", "").replace("-", "")[:15]
    name = f"bench_tg43_{stamp}Z_{payload['meta']['platform']}_{payload['meta']['precision']}.json"
    return save_json_atomic(Path(out_dir) / name, payload)


def main(argv=None) -> int:
    args = parse_args(argv)
    _ensure_iortopt_importable()

    import jax

    if args.device is not None:
        jax.config.update("jax_platforms", {"cpu": "cpu", "gpu": "cuda"}[args.device])
    if args.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from iortopt.grid import Grid
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    dtype = jnp.float64 if args.precision == "float64" else jnp.float32
    kernel = tg43.make_kernel(load_source(REFERENCE_SOURCE), dtype=dtype)
    device = jax.devices()[0]
    meta = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "n_devices": jax.device_count(),
        "precision": args.precision,
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "source": REFERENCE_SOURCE,
        "sk_U": REFERENCE_SK_U,
        "repeats": args.repeats,
        "chunk_size_arg": args.chunk_size,
        "reference_problem": "100^3 voxels (-99..99 mm, 2 mm), 10 catheters x 10 dwells, 1 s"
        if args.reference_spacing_mm == 2.0
        else f"-99..99 mm at {args.reference_spacing_mm:g} mm, 10 catheters x 10 dwells, 1 s",
    }
    print(
        f"iortopt TG-43 benchmark: {meta['device_kind']} ({meta['platform']}), "
        f"{args.precision}, jax {meta['jax_version']}, repeats {args.repeats}"
    )

    cases = [reference_case(Grid, args.reference_spacing_mm)]
    if not args.reference_only:
        pairs = args.cases or [(n, d) for n in args.sizes for d in args.dwells]
        cases += [size_case(Grid, n, d) for n, d in pairs]
    results = []
    for i, case in enumerate(cases):
        save = args.save_dose if i == 0 else None
        results.append(
            run_case(case, kernel, dtype, args.chunk_size, args.repeats, jax, jnp, tg43, save)
        )
        print(
            f"  done {case['name']}: {results[-1]['steady_s']:.3f} s steady",
            file=sys.stderr,
            flush=True,
        )

    print()
    print_table(results)
    path = write_json(args.out, {"meta": meta, "cases": results})
    print(f"\nJSON: {path}")
    print("\nRESULTS.md header:")
    print(MARKDOWN_HEADER)
    print("RESULTS.md row (reference problem):")
    print(markdown_row(meta, results[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
