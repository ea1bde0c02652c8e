"""Cost of shielded dose relative to unshielded, on the TG-43 reference problem and a sphere.

HDR: the full-grid TG-43 dose of the reference problem of ``bench_tg43.py`` (100^3 voxels,
100 dwells) without shields (``tg43.dose_gy``) and with a lead shield (``hdr_shields.
shielded_dose_gy``: kernel x transmission per voxel-dwell pair), for a flat disc shield below the
catheters and a cylindrical sheet around them. X-ray: the transmission factor of one source at
the grid centre through a flat tungsten sheet, against the sphere dose on the same grid.

Prints a table and writes ``benchmarks/results/bench_shield_<time>_<platform>.json`` (temporary
name, then rename). ``python benchmarks/bench_shield.py [--repeats 3] [--out DIR]``.
"""

from __future__ import annotations

import argparse
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
from bench_tg43 import (  # noqa: E402
    REFERENCE_SK_U,
    REFERENCE_SOURCE,
    _ensure_iortopt_importable,
    host_peak_rss_mib,
    reference_case,
)


def _steady(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds incl. compilation, min over repeats)."""
    t0 = time.perf_counter()
    np.asarray(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(fn())
        times.append(time.perf_counter() - t0)
    return first, min(times)


def _spec(name, surface, shape, origin, axis_u, axis_w, radius, half, material, spectrum, jnp):
    from iortopt.optimisation.shield_placement import ShieldSpec
    from iortopt.physics import shield as sh
    from iortopt.physics.shield_materials import load_shield_materials

    f = jnp.float32
    base = sh.Shield(
        jnp.asarray(origin, f),
        jnp.asarray(axis_u, f),
        jnp.asarray(axis_w, f),
        jnp.asarray(radius, f),
        jnp.zeros(2, f),
        jnp.asarray(0.0, f),
        jnp.asarray(half, f),
        jnp.asarray(3.0, f),
    )
    mats = load_shield_materials()
    return ShieldSpec(
        name, material, shape, surface, surface, base, np.array([half]), ((2 * half[0],),),
        (0.0, 0.0), (0.0, 0.0), False, 0.0, (), 1.0, mats.table(material, spectrum, f),
        mats.origin, mats.illustrative,
    )  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    _ensure_iortopt_importable()
    import jax
    import jax.numpy as jnp

    from iortopt.grid import Grid
    from iortopt.modalities.hdr_flap.shields import shielded_dose_gy
    from iortopt.modalities.xray_sphere.shields import grid_factor
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source
    from iortopt.physics.xray import load_xray_beam, sphere_dose_gy

    kernel = tg43.make_kernel(load_source(REFERENCE_SOURCE), dtype=jnp.float32)
    case = reference_case(Grid)
    grid = case["grid"]
    points = grid.points_mm(np.float32)
    pos, axes, times = case["positions_mm"], case["axes"], case["dwell_times_s"]
    disc = _spec("disc", "plane", "disc", (0, 0, -40), (1, 0, 0), (0, 0, 1), 0.0, (40.0, 40.0),
                 "lead", "Ir-192", jnp)  # fmt: skip
    sheet = _spec("sheet", "cylinder", "rectangle", (0, 0, 0), (0, 0, 1), (1, 0, 0), 30.0,
                  (40.0, 60.0), "lead", "Ir-192", jnp)  # fmt: skip
    rows = []
    open_first, open_s = _steady(
        lambda: tg43.dose_gy(points, pos, axes, times, kernel, REFERENCE_SK_U), args.repeats
    )
    rows.append(("hdr_open", open_first, open_s, None))
    for spec in (disc, sheet):
        first, steady = _steady(
            lambda spec=spec: shielded_dose_gy(
                points, pos, axes, times, kernel, REFERENCE_SK_U, [spec.base], [spec]
            ),
            args.repeats,
        )
        rows.append((f"hdr_{spec.surface}_{spec.shape}", first, steady, steady / open_s))

    beam = load_xray_beam("generic_50kV_spheres")
    centre = jnp.zeros(3, jnp.float32)
    sphere_first, sphere_s = _steady(
        lambda: sphere_dose_gy(jnp.asarray(points), centre, jnp.asarray(20.0), 1.0, beam),
        args.repeats,
    )
    rows.append(("xray_sphere_open", sphere_first, sphere_s, None))
    w_sheet = _spec("w", "plane", "disc", (0, 0, -35), (1, 0, 0), (0, 0, 1), 0.0, (30.0, 30.0),
                    "tungsten_rubber", "50kV", jnp)  # fmt: skip
    f_first, f_s = _steady(
        lambda: grid_factor(points, np.zeros(3), [w_sheet.base], [w_sheet]), args.repeats
    )
    rows.append(("xray_shield_factor", f_first, f_s, (f_s + sphere_s) / sphere_s))

    device = jax.devices()[0]
    meta = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "problem": "100^3 voxels (-99..99 mm, 2 mm); HDR: 100 dwells, mHDR-v2; float32",
        "repeats": args.repeats,
        "peak_rss_mib": host_peak_rss_mib(),
    }
    cases = [
        {
            "case": n,
            "first_call_s": a,
            "steady_s": b,
            "relative_to_open": r,
            "voxels": grid.n_voxels,
        }
        for n, a, b, r in rows
    ]
    print(f"shield cost, {meta['device_kind']} ({meta['platform']}), 100^3 voxels, float32")
    print(f"{'case':<24}{'first s':>10}{'steady s':>10}{'x open':>8}")
    for c in cases:
        rel = "" if c["relative_to_open"] is None else f"{c['relative_to_open']:.2f}"
        print(f"{c['case']:<24}{c['first_call_s']:>10.3f}{c['steady_s']:>10.3f}{rel:>8}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = meta["timestamp_utc"].replace(":", "").replace("-", "")
    final = args.out / f"bench_shield_{stamp}Z_{meta['platform']}.json"
    fd, tmp = tempfile.mkstemp(dir=args.out, prefix=final.name + ".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"meta": meta, "cases": cases}, fh, indent=2)
    os.replace(tmp, final)
    print(f"JSON: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
