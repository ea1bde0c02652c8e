#!/usr/bin/env python
"""The GPU measurement of iortopt in one prepared run (issue 19): every step in its own process
with its own time limit, all results in ONE JSON file plus a log.

    python scripts/gpu_check.py --device gpu --out "$OUT"          # on the GPU machine (~3-5 min)
    python scripts/gpu_check.py --device cpu --small --out /tmp/gc  # dry run (well under a minute)
    python scripts/gpu_check.py --device gpu --only tg43 --only precision --out "$OUT"

Steps (``--only`` takes these names):

- ``facts``     (a) device, memory, driver, JAX/jaxlib/CuPy/zarr versions; measured fp32 peak: a
  large matmul at HIGHEST precision and a fused elementwise FMA chain; whether DEFAULT precision
  rounds matmuls (TF32) on this device; XLA-counted flops per TG-43 voxel x dwell evaluation.
- ``tg43``      (b) ``benchmarks/bench_tg43.py`` on the reference problem, 256^3 x 500 and
  512^3 x 100: evaluations per second and the fraction of the measured peak.
- ``precision`` (c) float32 dose on the device against the float64 CPU dose of the reference
  problem (bench_tg43 ``--save-dose``): maximum relative difference (TF32 would give ~1e-3).
- ``plan``      (d) ``benchmarks/bench_plan.py configs/flap_256_500_gpu.toml`` end to end (16.7 M
  voxels, 496 dwells): setup, compile and optimisation times separately.
- ``memory``    (e) a 512^3 full-grid dose (``bench_memory.case_tg43_dose``): peak device memory
  against the memory model's estimate.
- ``zarr``      (f) the dose written to zarr through the host copy (``write_dose_store``) against
  zarr's GPU buffers fed from device memory (CuPy from JAX by DLPack); skipped without CuPy.
- ``rawkernel`` (g) a CuPy RawKernel TG-43: not implemented (recorded as skipped).

The parent never imports JAX: a step that hangs is killed at its limit (its whole process group)
and the rest still run. ``gpu_check.json`` is rewritten after every step, so a run stopped from
outside keeps what finished. Exit status 0 when no step failed or timed out, else 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}
STEPS = ("facts", "tg43", "precision", "plan", "memory", "zarr", "rawkernel")
#: Seconds each step may run (GPU sizes; the sum stays under the 8-minute whole-run limit).
BUDGET_S = {"facts": 45, "tg43": 100, "precision": 70, "plan": 150, "memory": 60, "zarr": 45}
SMALL_BUDGET_S = 60
TOTAL_BUDGET_S = 450.0
SMALL_TOTAL_BUDGET_S = 110.0
#: float32 against float64 on the reference problem: float32 rounding stays near 1e-6 to 1e-5;
#: TF32 products (10-bit mantissa) would show about 1e-3.
TF32_SUSPECT_REL = 2e-4
#: Voxels below this fraction of the maximum dose are left out of the relative difference.
REL_DOSE_FLOOR = 1e-3
SIZES = {
    False: {
        "matmul_n": 8192,
        "fma_elements": 1 << 26,
        "fma_chain": 256,
        "tg43_cases": "256x500,512x100",
        "tg43_repeats": "3",
        "reference_spacing_mm": "2",
        "plan_args": [],
        "memory_case": (512, 100),
        "zarr_case": (256, 100),
    },
    True: {
        "matmul_n": 256,
        "fma_elements": 1 << 16,
        "fma_chain": 32,
        "tg43_cases": "24x20",
        "tg43_repeats": "1",
        "reference_spacing_mm": "9",
        "plan_args": [
            "--case-param",
            "spacing_mm=6",
            "--case-param",
            "supersampling=1",
            "--max-iterations",
            "3",
        ],
        "memory_case": (24, 20),
        "zarr_case": (24, 20),
    },
}
#: Python packages the measured paths need; those missing on the GPU machine travel as wheels
#: (scripts/gpu_wheels.txt).
NEEDED_MODULES = ("jax", "numpy", "optax", "zarr", "numcodecs", "pydantic", "scipy", "matplotlib")


class StepTimeout(Exception):
    pass


# ------------------------------------------------------------------------------------- parent


class Step:
    """One step's processes, each killed (with its process group) at the step's deadline."""

    def __init__(self, name: str, deadline: float, log, env: dict):
        self.name, self.deadline, self.log, self.env = name, deadline, log, env

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], extra_env: dict | None = None) -> None:
        timeout = self.remaining_s()
        if timeout <= 1:
            raise StepTimeout(f"no time left for {' '.join(cmd[1:3])}")
        self.log.write(f"\n----- {self.name}: {' '.join(cmd)}\n")
        self.log.flush()
        offset = self.log.tell()
        proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StepTimeout(f"killed after {timeout:.0f} s: {' '.join(cmd[1:3])}") from None
        if rc != 0:
            raise RuntimeError(
                f"exit status {rc}: {' '.join(cmd[1:3])}; its output ends:\n{self._tail(offset)}"
            )

    def _tail(self, offset: int, chars: int = 1500) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as fh:
            fh.seek(offset)
            return fh.read()[-chars:]

    def child(self, args, work: Path, extra_env: dict | None = None) -> dict:
        """Run ``gpu_check.py --child NAME`` and return the JSON it wrote."""
        result = work / f"{self.name}_child.json"
        cmd = [sys.executable, __file__, "--child", self.name, "--result", str(result)]
        cmd += ["--device", args.device] + (["--small"] if args.small else [])
        self.run(cmd, extra_env)
        return json.loads(result.read_text())


def _bench(script: str, *options: str) -> list[str]:
    return [sys.executable, str(BENCH / script), *options]


def _latest_json(folder: Path, pattern: str) -> dict:
    paths = sorted(glob.glob(str(folder / pattern)))
    if not paths:
        raise RuntimeError(f"no {pattern} written in {folder}")
    return json.loads(Path(paths[-1]).read_text())


def step_facts(step: Step, args, work: Path, results: dict) -> dict:
    return step.child(args, work)


def step_tg43(step: Step, args, work: Path, results: dict) -> dict:
    size = SIZES[args.small]
    out = work / "tg43"
    step.run(
        _bench(
            "bench_tg43.py",
            "--device",
            args.device,
            "--cases",
            size["tg43_cases"],
            "--repeats",
            size["tg43_repeats"],
            "--reference-spacing-mm",
            size["reference_spacing_mm"],
            "--out",
            str(out),
        )
    )
    payload = _latest_json(out, "bench_tg43_*.json")
    facts = results.get("facts", {}).get("result") or {}
    peak = facts.get("peak_fp32_flops")
    per_eval = facts.get("tg43_flops_per_eval")
    for case in payload["cases"]:
        rate = case["evals_per_s"]
        case["achieved_flops"] = rate * per_eval if per_eval else None
        case["fraction_of_peak"] = rate * per_eval / peak if per_eval and peak else None
    return {
        "meta": payload["meta"],
        "cases": payload["cases"],
        "fraction_of_peak_basis": "evals/s x XLA-counted flops per eval (facts) / measured peak",
    }


def step_precision(step: Step, args, work: Path, results: dict) -> dict:
    spacing = SIZES[args.small]["reference_spacing_mm"]
    common = ["--reference-only", "--repeats", "1", "--reference-spacing-mm", spacing]
    f32, f64 = work / "dose_f32.npy", work / "dose_f64.npy"
    step.run(
        _bench("bench_tg43.py", "--device", args.device, "--precision", "float32", *common)
        + ["--save-dose", str(f32), "--out", str(work / "precision32")]
    )
    step.run(
        _bench("bench_tg43.py", "--device", "cpu", "--precision", "float64", *common)
        + ["--save-dose", str(f64), "--out", str(work / "precision64")]
    )
    import numpy as np

    low = np.load(f32, allow_pickle=False)
    ref = np.load(f64, allow_pickle=False)
    mask = ref >= REL_DOSE_FLOOR * ref.max()
    rel = np.abs(low.astype(np.float64) - ref)[mask] / ref[mask]
    max_rel = float(rel.max())
    return {
        "device_dose_dtype": str(low.dtype),
        "reference_dose_dtype": str(ref.dtype),
        "n_voxels": int(ref.size),
        "n_compared": int(mask.sum()),
        "dose_floor_fraction_of_max": REL_DOSE_FLOOR,
        "max_rel_diff": max_rel,
        "median_rel_diff": float(np.median(rel)),
        "max_abs_diff_over_max": float(np.abs(low - ref).max() / ref.max()),
        "tf32_suspect_threshold": TF32_SUSPECT_REL,
        "no_tf32": bool(low.dtype == np.float32 and max_rel < TF32_SUSPECT_REL),
    }


def step_plan(step: Step, args, work: Path, results: dict) -> dict:
    config = ROOT / "configs" / "flap_256_500_gpu.toml"
    out = work / "plan"
    options = ["--device", args.device, "--out", str(out), *SIZES[args.small]["plan_args"]]
    step.run(_bench("bench_plan.py", str(config), *options))
    record = _latest_json(out, "plan_*.json")
    w = record["wall_times_s"]
    record["compile_s"] = sum(v for k, v in w.items() if k.endswith("compile_s"))
    record["optimise_s"] = w.get("optimise_s")
    return record


def step_memory(step: Step, args, work: Path, results: dict) -> dict:
    return step.child(args, work)


def step_zarr(step: Step, args, work: Path, results: dict) -> dict:
    return step.child(args, work)


def step_rawkernel(step: Step, args, work: Path, results: dict) -> dict:
    return {"status": "skipped", "reason": "not implemented: the XLA kernel is the only TG-43"}


STEP_FUNCTIONS = {name: globals()[f"step_{name}"] for name in STEPS}


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _summary_line(name: str, entry: dict) -> str:
    r = entry.get("result") or {}
    figures = {
        "facts": lambda: (
            f"{r.get('device_kind')} peak {r.get('peak_fp32_flops', 0) / 1e12:.2f} "
            f"TFLOP/s fp32 ({r.get('peak_source')})"
        ),
        "tg43": lambda: ", ".join(
            f"{c['case']} {c['evals_per_s'] / 1e9:.2f} Gevals/s"
            + (f" ({100 * c['fraction_of_peak']:.1f} % peak)" if c.get("fraction_of_peak") else "")
            for c in r.get("cases", [])
        ),
        "precision": lambda: (
            f"max rel diff {r.get('max_rel_diff', math.nan):.2e}, no_tf32 {r.get('no_tf32')}"
        ),
        "plan": lambda: (
            f"compile {r.get('compile_s', math.nan):.1f} s, optimise "
            f"{r.get('optimise_s') or math.nan:.1f} s, total "
            f"{r.get('total_wall_s_incl_imports_and_compile', math.nan):.1f} s"
        ),
        "memory": lambda: (
            f"predicted {r.get('predicted_compared_mib', math.nan):.0f} MiB, measured "
            f"{r.get('measured_mib', math.nan):.0f} MiB ({r.get('measured_what')})"
        ),
        "zarr": lambda: (
            f"host path {r.get('host_path_s', math.nan):.3f} s, device path "
            + (
                f"{r['device_path_s']:.3f} s"
                if r.get("device_path_s")
                else str(r.get("device_path_status"))
            )
        ),
    }
    text = entry["status"]
    if entry["status"] == "ok" and name in figures:
        try:
            text += ": " + figures[name]()
        except (TypeError, ValueError, KeyError) as exc:
            text += f" (summary unavailable: {exc})"
    elif entry.get("error") or entry.get("reason"):
        text += ": " + str(entry.get("error") or entry.get("reason"))
    return f"{name:>9} {entry['wall_s']:7.1f} s  {text}"


def run_all(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, log_path = out / "gpu_check.json", out / "gpu_check.log"
    total_budget = args.total_budget_s or (SMALL_TOTAL_BUDGET_S if args.small else TOTAL_BUDGET_S)
    start = time.monotonic()
    payload = {
        "meta": {
            "started_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device_arg": args.device,
            "small": args.small,
            "steps": list(args.only or STEPS),
            "total_budget_s": total_budget,
            "python": platform.python_version(),
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
        },
        "steps": {},
    }
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if args.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    failed = False
    with open(log_path, "a") as log, tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for name in args.only or STEPS:
            left = total_budget - (time.monotonic() - start)
            budget = SMALL_BUDGET_S if args.small else BUDGET_S.get(name, 30)
            limit = min(budget, left)
            t0 = time.monotonic()
            entry = {"status": "ok", "limit_s": round(limit, 1)}
            if limit < 5:
                entry.update(status="skipped", reason="the whole run's time budget is spent")
            else:
                step = Step(name, t0 + limit, log, env)
                try:
                    result = STEP_FUNCTIONS[name](step, args, work, payload["steps"])
                    if result.get("status") == "skipped":
                        entry.update(status="skipped", reason=result["reason"])
                    else:
                        entry["result"] = result
                except StepTimeout as exc:
                    entry.update(status="timeout", error=str(exc))
                except Exception as exc:  # noqa: BLE001 - recorded, the next steps still run
                    entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            entry["wall_s"] = time.monotonic() - t0
            failed |= entry["status"] in ("failed", "timeout")
            payload["steps"][name] = entry
            if name == "facts" and entry.get("result"):
                payload["device"] = entry["result"]
            payload["total_wall_s"] = time.monotonic() - start
            _write_json(json_path, payload)
            line = _summary_line(name, entry)
            print(line, flush=True)
            log.write(f"\n===== {line}\n")
            log.flush()
    print(f"total {payload['total_wall_s']:.1f} s; results in {json_path} and {log_path}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- children (JAX)


def _jax(device: str):
    import jax

    jax.config.update("jax_platforms", PLATFORMS[device])
    return jax


def _timed_min(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _nvidia_smi() -> dict | None:
    query = "name,memory.total,driver_version,clocks.max.sm,power.limit"
    try:
        proc = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    values = [v.strip() for v in proc.stdout.splitlines()[0].split(",")]
    return dict(zip(query.split(","), values, strict=False))


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in (*NEEDED_MODULES, "jaxlib", "cupy", "typer", "rich", "pydicom", "dask"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    for name in ("cupy-cuda13x", "cupy-cuda12x"):
        try:
            found["cupy"] = found["cupy"] or metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _missing_modules() -> list[str]:
    import importlib

    missing = []
    for name in NEEDED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def _matmul_peak(jax, n: int) -> dict:
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    highest = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    default = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.DEFAULT))
    exact = highest(a, b).block_until_ready()
    rough = default(a, b).block_until_ready()
    seconds = _timed_min(lambda: highest(a, b).block_until_ready(), 10)
    diff = float(jnp.max(jnp.abs(rough - exact)) / jnp.max(jnp.abs(exact)))
    return {
        "matmul_n": n,
        "matmul_highest_s": seconds,
        "matmul_highest_flops": 2.0 * n**3 / seconds,
        # TF32 (10-bit mantissa) shows as ~1e-3 here; exact float32 accumulation-order noise ~1e-6.
        "default_vs_highest_max_diff_over_max": diff,
    }


def _fma_peak(jax, elements: int, chain: int) -> dict:
    import jax.numpy as jnp

    def fma_chain(x):
        for _ in range(chain):  # unrolled: XLA fuses the chain into one kernel, compute-bound
            x = x * 0.999 + 0.001
        return x

    fn = jax.jit(fma_chain)
    x = jnp.ones((elements,), jnp.float32)
    fn(x).block_until_ready()
    seconds = _timed_min(lambda: fn(x).block_until_ready(), 20)
    return {
        "fma_elements": elements,
        "fma_chain": chain,
        "fma_s": seconds,
        "fma_flops": 2.0 * elements * chain / seconds,
    }


def _tg43_flops_per_eval(jax) -> dict:
    """XLA's flop count of one unchunked TG-43 dose (4096 points x 100 dwells) per pair."""
    import jax.numpy as jnp
    import numpy as np

    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    kernel = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"))
    n_points, n_dwells = 4096, 100
    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.uniform(-50, 50, (n_points, 3)), jnp.float32)
    pos = jnp.asarray(rng.uniform(-20, 20, (n_dwells, 3)), jnp.float32)
    axes = jnp.tile(jnp.asarray([0.0, 0.0, 1.0], jnp.float32), (n_dwells, 1))
    times = jnp.ones(n_dwells, jnp.float32)
    fn = jax.jit(lambda p, q, a, t: tg43.dose_gy(p, q, a, t, kernel, 40000.0, chunk_size=None))
    cost = fn.lower(pts, pos, axes, times).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    pairs = n_points * n_dwells
    return {
        "tg43_flops_per_eval": float(cost.get("flops", math.nan)) / pairs,
        "tg43_transcendentals_per_eval": float(cost.get("transcendentals", math.nan)) / pairs,
        "tg43_bytes_accessed_per_eval": float(cost.get("bytes accessed", math.nan)) / pairs,
    }


def child_facts(device: str, small: bool) -> dict:
    jax = _jax(device)
    size = SIZES[small]
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        stats = {}
    facts = {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "memory_bytes_limit": stats.get("bytes_limit"),
        "nvidia_smi": _nvidia_smi() if device == "gpu" else None,
        "versions": _versions(),
        "missing_modules": _missing_modules(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    facts.update(_matmul_peak(jax, size["matmul_n"]))
    facts.update(_fma_peak(jax, size["fma_elements"], size["fma_chain"]))
    facts["peak_fp32_flops"] = max(facts["matmul_highest_flops"], facts["fma_flops"])
    facts["peak_source"] = (
        "matmul" if facts["matmul_highest_flops"] >= facts["fma_flops"] else "fma"
    )
    facts.update(_tg43_flops_per_eval(jax))
    return facts


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    import importlib

    return importlib.import_module(name)


def _device_parts_mib(estimate) -> float:
    """The estimate's peak without its host parts (what should sit in device memory)."""
    d = estimate.to_dict()
    persistent = sum(v for k, v in d["persistent_mib"].items() if "host" not in k)
    stages = [
        sum(v for k, v in parts.items() if "host" not in k) for parts in d["stages_mib"].values()
    ]
    return persistent + max(stages, default=0.0)


def child_memory(device: str, small: bool) -> dict:
    jax = _jax(device)
    import numpy as np

    from iortopt.compute import memory

    bench_memory = _bench_module("bench_memory")
    size, n_dwells = SIZES[small]["memory_case"]
    record = bench_memory.case_tg43_dose(size, n_dwells, 0)
    n = size**3
    estimate = memory.tg43_dose_estimate(n, n_dwells, record["chunk"], np.float32, grid_points=True)
    record["predicted_device_mib"] = _device_parts_mib(estimate)
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    # On a GPU the device peak is compared with the estimate's device parts; on a CPU everything
    # is host memory, so the host RSS growth is compared with the whole estimate.
    if "peak_bytes_in_use" in stats:
        record["measured_mib"] = stats["peak_bytes_in_use"] / 2**20
        record["measured_what"] = "device peak_bytes_in_use"
        record["predicted_compared_mib"] = record["predicted_device_mib"]
    else:
        record["measured_mib"], record["measured_what"] = record["measured_rss_mib"], "host RSS"
        record["predicted_compared_mib"] = record["predicted_mib"]
    record["predicted_over_measured"] = record["predicted_compared_mib"] / max(
        record["measured_mib"], 1e-9
    )
    return record


def _device_zarr_write(path: Path, dose, chunks) -> None:
    import cupy
    import zarr

    on_device = cupy.from_dlpack(dose)  # zero-copy view of the JAX buffer
    with zarr.config.enable_gpu():
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        arr = root.create_array("dose_gy", shape=dose.shape, dtype="float32", chunks=chunks)
        arr[...] = on_device
    cupy.cuda.Device().synchronize()


def child_zarr(device: str, small: bool) -> dict:
    from iortopt.compute import runtime

    runtime.apply_gpu_memory_env(share_with_cupy=True)  # JAX and CuPy on one GPU
    jax = _jax(device)
    import jax.numpy as jnp
    import numpy as np
    import zarr

    from iortopt.grid import Grid
    from iortopt.io import store
    from iortopt.physics import tg43
    from iortopt.physics.sources import load_source

    bench_tg43 = _bench_module("bench_tg43")
    size, n_dwells = SIZES[small]["zarr_case"]
    case = bench_tg43.size_case(Grid, size, n_dwells)
    grid = case["grid"]
    kernel = tg43.make_kernel(load_source(bench_tg43.REFERENCE_SOURCE))
    args = [jnp.asarray(case[k], jnp.float32) for k in ("positions_mm", "axes", "dwell_times_s")]
    fn = jax.jit(
        lambda p, q, a, t: tg43.dose_gy(p, q, a, t, kernel, bench_tg43.REFERENCE_SK_U).reshape(
            grid.shape_zyx
        )
    )
    dose = fn(jnp.asarray(grid.points_mm(), jnp.float32), *args).block_until_ready()
    tmp = Path(tempfile.mkdtemp(prefix="zarr_check_"))
    repeats = 3
    host_s = _timed_min(
        lambda: store.write_dose_store(tmp / "host.zarr", np.asarray(dose), grid), repeats
    )
    result = {
        "shape_zyx": list(grid.shape_zyx),
        "megabytes": dose.size * 4 / 1e6,
        "repeats": repeats,
        "host_path_s": host_s,
        "host_path": "np.asarray(dose) then iortopt.io.store.write_dose_store",
        "zarr_version": zarr.__version__,
    }
    try:
        runtime.import_cupy()
    except Exception as exc:  # noqa: BLE001 - IortoptError without cupy
        result["device_path_status"] = f"skipped: no cupy ({exc})"
        return result
    if device != "gpu":
        result["device_path_status"] = "skipped: not a GPU run"
        return result
    chunks = store._chunks(grid.shape_zyx)
    try:
        device_s = _timed_min(lambda: _device_zarr_write(tmp / "dev.zarr", dose, chunks), repeats)
    except Exception as exc:  # noqa: BLE001 - zarr's GPU path is young: record why it failed
        result["device_path_status"] = f"failed: {type(exc).__name__}: {exc}"
        return result
    written = zarr.open_array(str(tmp / "dev.zarr"), path="dose_gy", mode="r")[...]
    result.update(
        device_path_status="ok",
        device_path_s=device_s,
        device_path="cupy.from_dlpack(dose) into zarr.config.enable_gpu() arrays",
        device_path_identical=bool(np.array_equal(np.asarray(written), np.asarray(dose))),
        device_path_faster=device_s < host_s,
    )
    return result


CHILDREN = {"facts": child_facts, "memory": child_memory, "zarr": child_zarr}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    p.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="folder of the results")
    p.add_argument("--small", action="store_true", help="tiny sizes: a dry run on a CPU")
    p.add_argument("--only", action="append", choices=STEPS, help="run this step (repeatable)")
    p.add_argument("--total-budget-s", type=float, default=None, help="limit of the whole run")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT / "src"))
        record = CHILDREN[args.child](args.device, args.small)
        args.result.write_text(json.dumps(record, indent=2, default=str))
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
