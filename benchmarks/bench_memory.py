#!/usr/bin/env python
"""Predicted (``iortopt.compute.memory``) against measured peak memory of each engine, and a large
full-grid TG-43 dose run under its planned memory.

Every case runs in a fresh process: it compiles first, then samples the resident set size every
2 ms while the engine runs (points built, result copied back); "measured" is the peak RSS minus the
RSS before. XLA's own buffer total (``compiled.memory_analysis()``: arguments, outputs,
temporaries) is reported beside it.
Results go to ``benchmarks/results/memory_<platform>_<utc>.json``.

    python benchmarks/bench_memory.py                     # all cases, 256^3 x 100 dwells at the end
    python benchmarks/bench_memory.py --big-dwells 100,500
    python benchmarks/bench_memory.py --skip-big
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = "mHDR-v2_HEBD2012"
SK_U = 40000.0


def _ensure_iortopt_importable() -> None:
    try:
        import iortopt.compute.memory  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "src"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak resident set size growth of this process within the block (sampled every 2 ms)."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.base


# --------------------------------------------------------------------------- one case (child)


def _catheters(n_dwells: int):
    import numpy as np

    n_cath = -(-n_dwells // 10)
    side = int(np.ceil(np.sqrt(n_cath)))
    lattice = (np.arange(side) - (side - 1) / 2.0) * 10.0
    xy = np.stack(np.meshgrid(lattice, lattice, indexing="ij"), -1).reshape(-1, 2)[:n_cath]
    z = -22.5 + 5.0 * np.arange(10)
    pos = np.array([[x, y, zz] for x, y in xy for zz in z])[:n_dwells].astype(np.float32)
    return pos, np.tile(np.float32([0, 0, 1]), (n_dwells, 1)), np.ones(n_dwells, np.float32)


def _xla_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def case_tg43_dose(size: int, n_dwells: int, chunk: int | None) -> dict:
    """Full-grid dose of a size^3 grid over +-99 mm, chunk 0 = automatic from the budget."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.compute import memory
    from iortopt.grid import Grid
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    grid = Grid.from_bounds((-99.0,) * 3, (99.0,) * 3, 198.0 / (size - 1))
    n = grid.n_voxels
    budget = memory.memory_budget()
    if chunk == 0:
        preferred = memory.preferred_pairs_per_chunk(budget.platform) // n_dwells
        chunk = memory.choose_chunk_size(
            lambda c: memory.tg43_dose_estimate(n, n_dwells, c, grid_points=True).peak_bytes,
            preferred,
            budget.usable_bytes,
        )
    est = memory.tg43_dose_estimate(n, n_dwells, chunk, np.float32, grid_points=True)
    k = tg43.make_kernel(load_source(SOURCE))
    pos, axes, times = _catheters(n_dwells)
    fn = jax.jit(lambda p, q, a, t: tg43.dose_gy(p, q, a, t, k, SK_U, chunk_size=chunk))
    spec = jax.ShapeDtypeStruct((n, 3), jnp.float32)
    compiled = fn.lower(spec, pos, axes, times).compile()
    t0 = time.perf_counter()
    with PeakRss() as rss:
        dose = np.asarray(compiled(grid.points_mm(np.float32), pos, axes, times), np.float32)
    wall = time.perf_counter() - t0
    return {
        "case": f"tg43 full-grid dose {size}^3 x {n_dwells}",
        "voxels": n,
        "dwells": n_dwells,
        "chunk": est.sizes["chunk"],
        "budget_mib": None if budget.usable_bytes is None else budget.usable_bytes / 2**20,
        "predicted_mib": est.peak_bytes / 2**20,
        "measured_rss_mib": rss.delta / 2**20,
        "xla_buffers_mib": _xla_bytes(compiled) / 2**20,
        "peak_rss_total_mib": rss.peak / 2**20,
        "wall_s": wall,
        "evals_per_s": n * n_dwells / wall,
        "dose_max_gy": float(dose.max()),
    }


def case_tg43_matrix(n_points: int, n_dwells: int) -> dict:
    """Influence matrix built in place (plan._influence_matrix) plus 5 value-and-gradient steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.cases.catheters import Dwells
    from iortopt.compute import memory
    from iortopt.modalities.hdr_flap.pipeline import _influence_matrix
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    k = tg43.make_kernel(load_source(SOURCE))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, (n_points, 3)).astype(np.float32)
    pos, axes, _ = _catheters(n_dwells)
    dwells = Dwells(
        pos.astype(float), axes.astype(float), np.zeros(n_dwells, int), np.arange(n_dwells)
    )
    w = jnp.ones(n_points, jnp.float32)
    step = jax.jit(jax.value_and_grad(lambda t, m, w: jnp.sum(w * (m @ t - 10.0) ** 2)))
    _influence_matrix(pts[:1000], dwells, k, SK_U, jnp.float32)  # warm the runtime
    with PeakRss() as rss:
        matrix, _, _ = _influence_matrix(pts, dwells, k, SK_U, jnp.float32)
        t = jnp.ones(n_dwells, jnp.float32)
        for _ in range(5):
            value, grad = step(t, matrix, w)
            t = t - 1e-6 * grad
        jax.block_until_ready(t)
    est = memory.tg43_matrix_estimate(n_points, n_dwells, np.float32, 1)
    return {
        "case": f"tg43 influence matrix + steps {n_points} x {n_dwells}",
        "predicted_mib": est.peak_bytes / 2**20,
        "measured_rss_mib": rss.delta / 2**20,
        "xla_buffers_mib": _xla_bytes(step.lower(t, matrix, w).compile()) / 2**20,
    }


def case_tg43_matrix_free(n_points: int, n_dwells: int) -> dict:
    """Value and gradient through chunked dose_gy (no matrix)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.compute import memory
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    k = tg43.make_kernel(load_source(SOURCE))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, (n_points, 3)).astype(np.float32)
    pos, axes, times = _catheters(n_dwells)
    loss = jax.value_and_grad(
        lambda t, p: jnp.sum((tg43.dose_gy(p, pos, axes, t, k, SK_U) - 10.0) ** 2)
    )
    compiled = jax.jit(loss).lower(times, pts).compile()
    with PeakRss() as rss:
        jax.block_until_ready(compiled(times, jnp.asarray(pts)))
    est = memory.tg43_matrix_free_estimate(n_points, n_dwells, np.float32, 1)
    return {
        "case": f"tg43 matrix-free value+gradient {n_points} x {n_dwells}",
        "predicted_mib": est.peak_bytes / 2**20,
        "measured_rss_mib": rss.delta / 2**20,
        "xla_buffers_mib": _xla_bytes(compiled) / 2**20,
    }


def case_xray(n_points: int, n_sizes: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.compute import memory
    from iortopt.physics import xray

    beam = xray.load_xray_beam("generic_50kV_spheres")
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, (n_points, 3))
    c, r = np.zeros((n_sizes, 3)), np.linspace(7.5, 25.0, n_sizes)
    fn = jax.jit(lambda p, c, r, t: xray.catalogue_dose_gy(p, c, r, t, beam))
    args32 = [jnp.asarray(a, jnp.float32) for a in (pts[:10], c, r, np.ones(n_sizes))]
    fn(*args32)
    spec = jax.ShapeDtypeStruct((n_points, 3), jnp.float32)
    compiled = fn.lower(spec, *args32[1:]).compile()
    with PeakRss() as rss:
        doses = np.asarray(compiled(jnp.asarray(pts, jnp.float32), *args32[1:]), np.float64)
    est = memory.xray_catalogue_estimate(n_points, n_sizes, np.float32)
    del doses
    return {
        "case": f"xray catalogue {n_sizes} sizes x {n_points} points",
        "predicted_mib": est.peak_bytes / 2**20,
        "measured_rss_mib": rss.delta / 2**20,
        "xla_buffers_mib": _xla_bytes(compiled) / 2**20,
    }


def case_electron(n_points: int, n_rows: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.compute import memory
    from iortopt.physics import electron as el
    from iortopt.physics.disc import Disc

    beam = el.load_electron_beam("generic_IOERT")
    f32 = jnp.float32
    flat = el.PlaneSurface(jnp.zeros(3, f32), jnp.array([0.0, 0.0, 1.0], f32))
    k = n_rows
    cones = el.Cone(
        jnp.zeros(k, jnp.int32),
        jnp.zeros(k, jnp.int32),
        jnp.full(k, 60.0, f32),
        jnp.zeros((k, 3), f32),
        jnp.tile(jnp.array([0.0, 0.0, -1.0], f32), (k, 1)),
        jnp.tile(jnp.array([0.0, -1.0, 0.0], f32), (k, 1)),
        jnp.full(k, 100.0, f32),
    )
    discs = Disc(
        jnp.tile(jnp.array([0.0, 0.0, -20.0], f32), (k, 1)),
        jnp.tile(jnp.array([0.0, 0.0, 1.0], f32), (k, 1)),
        jnp.full(k, 40.0, f32),
        jnp.full(k, 6.0, f32),
    )
    pts = np.random.default_rng(0).uniform(-40, 40, (n_points, 3))
    fn = jax.jit(lambda p, c, d: el.catalogue_dose_gy(p, c, beam, flat, d, batch_size=8))
    spec = jax.ShapeDtypeStruct((n_points, 3), f32)
    compiled = fn.lower(spec, cones, discs).compile()
    with PeakRss() as rss:
        doses = np.asarray(compiled(jnp.asarray(pts, f32), cones, discs), np.float64)
    del doses
    est = memory.electron_catalogue_estimate(n_points, n_rows, 8, np.float32)
    return {
        "case": f"electron catalogue {n_rows} rows x {n_points} points",
        "predicted_mib": est.peak_bytes / 2**20,
        "measured_rss_mib": rss.delta / 2**20,
        "xla_buffers_mib": _xla_bytes(compiled) / 2**20,
    }


CASES = {
    "tg43_dose": case_tg43_dose,
    "tg43_matrix": case_tg43_matrix,
    "tg43_matrix_free": case_tg43_matrix_free,
    "xray": case_xray,
    "electron": case_electron,
}


def run_child(name: str, args: list) -> dict:
    """Run one case in a fresh process (clean RSS) and return its record."""
    cmd = [sys.executable, __file__, "--child", name, json.dumps(args)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} {args} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["ratio_predicted_over_measured"] = record["predicted_mib"] / max(
        record["measured_rss_mib"], 1e-9
    )
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--big-size", type=int, default=256)
    p.add_argument("--big-dwells", default="100", help="dwell counts of the big dose, e.g. 100,500")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    _ensure_iortopt_importable()
    if args.child:
        name, case_args = args.child
        print(json.dumps(CASES[name](*json.loads(case_args))))
        return 0

    import jax

    plan = [
        ("tg43_dose", [64, 100, 0]),
        ("tg43_dose", [128, 100, 0]),
        ("tg43_dose", [160, 200, 0]),
        ("tg43_dose", [96, 100, None]),
        ("tg43_matrix", [200_000, 200]),
        ("tg43_matrix", [500_000, 400]),
        ("tg43_matrix_free", [500_000, 400]),
        ("xray", [400_000, 8]),
        ("electron", [200_000, 16]),
    ]
    if not args.skip_big:
        plan += [("tg43_dose", [args.big_size, int(n), 0]) for n in args.big_dwells.split(",")]
    records = []
    for name, case_args in plan:
        rec = run_child(name, case_args)
        records.append(rec)
        print(
            f"{rec['case']:<50} predicted {rec['predicted_mib']:9.1f} MiB  measured "
            f"{rec['measured_rss_mib']:9.1f} MiB  XLA {rec['xla_buffers_mib']:9.1f} MiB  "
            f"ratio {rec['ratio_predicted_over_measured']:.2f}"
            + (f"  {rec['wall_s']:.1f} s" if "wall_s" in rec else ""),
            flush=True,
        )
    device = jax.devices()[0]
    payload = {
        "meta": {
            "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "device_kind": device.device_kind,
            "platform": device.platform,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "jax_version": jax.__version__,
        },
        "results": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = payload["meta"]["timestamp_utc"].replace(":", "").replace("-", "")
    final = args.out / f"memory_{device.platform}_{stamp}Z.json"
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=final.name + ".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, final)
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
