#!/usr/bin/env python
"""Scaling of the voxel-axis sharding (``iortopt.compute.sharding``) over 1, 2, 4 ... XLA devices.

Each device count runs in a fresh process (JAX fixes its devices at start); on a CPU the devices
are XLA host devices (``--xla_force_host_platform_device_count``) sharing the same cores, so the
figures show the overhead of the sharded path more than a speed-up; on a multi-GPU node pass
``--gpu`` to use the real devices. Timed: a full-grid TG-43 dose (size^3 over +-99 mm, dwells on
catheters parallel to z) and ``matrix @ t`` on a row-split influence matrix; each the minimum of
``--repeats`` calls after compilation, with the largest difference from the one-device dose.
Results go to ``benchmarks/results/sharding_<platform>_<utc>.json``.

    python benchmarks/bench_sharding.py                        # 96^3 x 100 dwells, 1/2/4 devices
    python benchmarks/bench_sharding.py --size 128 --devices 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = "mHDR-v2_HEBD2012"
SK_U = 40000.0


def child(size: int, n_dwells: int, repeats: int) -> dict:
    sys.path.insert(0, str(HERE.parent / "src"))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from iortopt.compute import sharding
    from iortopt.grid import Grid
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    k = tg43.make_kernel(load_source(SOURCE))
    grid = Grid.from_bounds((-99.0,) * 3, (99.0,) * 3, 198.0 / (size - 1))
    n_cath = -(-n_dwells // 10)
    side = int(np.ceil(np.sqrt(n_cath)))
    lattice = (np.arange(side) - (side - 1) / 2.0) * 10.0
    xy = np.stack(np.meshgrid(lattice, lattice, indexing="ij"), -1).reshape(-1, 2)[:n_cath]
    z = -22.5 + 5.0 * np.arange(10)
    pos = jnp.asarray(np.array([[x, y, zz] for x, y in xy for zz in z])[:n_dwells], jnp.float32)
    axes = jnp.tile(jnp.float32([0, 0, 1]), (n_dwells, 1))
    times = jnp.ones(n_dwells, jnp.float32)
    points = jnp.asarray(grid.points_mm(np.float32))
    mesh = sharding.voxel_mesh("all")

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t0)
        return out, best

    dose_fn = jax.jit(lambda p, t: tg43.dose_gy(p, pos, axes, t, k, SK_U, mesh=mesh))
    dose, dose_s = timed(dose_fn, points, times)
    n_rows = 200_000 // mesh.size * mesh.size
    matrix = sharding.sharded_influence_matrix(
        lambda p: tg43.dose_rate_matrix(p, pos, axes, k), points[:n_rows], mesh
    )
    matvec, matvec_s = timed(jax.jit(lambda m, t: m @ t), matrix, times)
    return {
        "devices": mesh.size,
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "voxels": grid.n_voxels,
        "dwells": n_dwells,
        "dose_s": dose_s,
        "evals_per_s": grid.n_voxels * n_dwells / dose_s,
        "matvec_rows": n_rows,
        "matvec_s": matvec_s,
        "dose_max_gy": float(jnp.max(dose)),
        "dose_sum_gy": float(jnp.sum(dose.astype(jnp.float64))),
        "matvec_sum": float(jnp.sum(matvec.astype(jnp.float64))),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--dwells", type=int, default=100)
    p.add_argument("--devices", default="1,2,4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="use the real devices (no host devices)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.size, args.dwells, args.repeats)))
        return 0
    records = []
    for n in (int(v) for v in args.devices.split(",")):
        env = dict(os.environ)
        if args.gpu:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
        else:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--child", "--size", str(args.size)]
        cmd += ["--dwells", str(args.dwells), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        base = records[0] if records else rec
        rec["speedup"] = base["dose_s"] / rec["dose_s"]
        rec["dose_sum_rel_diff"] = abs(rec["dose_sum_gy"] / base["dose_sum_gy"] - 1.0)
        rec["matvec_sum_rel_diff"] = abs(rec["matvec_sum"] / base["matvec_sum"] - 1.0)
        records.append(rec)
        print(
            f"{rec['devices']} device(s): dose {rec['dose_s']:.3f} s "
            f"({rec['evals_per_s']:.3g} evals/s, x{rec['speedup']:.2f}), matvec "
            f"{rec['matvec_s'] * 1e3:.2f} ms, dose sum rel diff {rec['dose_sum_rel_diff']:.1e}",
            flush=True,
        )
    payload = {
        "meta": {
            "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "cpu_count": os.cpu_count(),
            "size": args.size,
            "dwells": args.dwells,
        },
        "results": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = payload["meta"]["timestamp_utc"].replace(":", "").replace("-", "")
    final = args.out / f"sharding_{records[0]['platform']}_{stamp}Z.json"
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=final.name + ".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, final)
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
