"""Voxel-axis sharding (iortopt.compute.sharding): four XLA host devices give the single-device
dose,
gradient, influence matrix and plan. JAX fixes its device count when it starts, so the multi-device
checks run in a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.compute import sharding
from iortopt.physics import tg43
from iortopt.physics.sources import load_source

N_DEVICES = 4


def _run_with_host_devices(script: str, n: int = N_DEVICES, timeout: int = 600) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


KERNEL_SETUP = """
import json
import jax, jax.numpy as jnp, numpy as np
from iortopt.compute import sharding
from iortopt.physics import tg43
from iortopt.physics.sources import load_source

assert len(jax.devices()) == 4, jax.devices()
k = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"))
rng = np.random.default_rng(0)
pts = jnp.asarray(rng.uniform(-50, 50, (10_003, 3)), jnp.float32)  # not a multiple of 4
pos = jnp.asarray(rng.uniform(-20, 20, (40, 3)), jnp.float32)
axes = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)
times = jnp.asarray(rng.uniform(1, 10, 40), jnp.float32)
mesh = sharding.voxel_mesh("all")
"""


def test_sharded_dose_gradient_and_matrix_equal_single_device():
    out = _run_with_host_devices(
        KERNEL_SETUP
        + textwrap.dedent(
            """
        def rel(a, b):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

        single = tg43.dose_gy(pts, pos, axes, times, k, 4e4)
        sharded = tg43.dose_gy(pts, pos, axes, times, k, 4e4, mesh=mesh)
        jitted = jax.jit(lambda t: tg43.dose_gy(pts, pos, axes, t, k, 4e4, mesh=mesh))(times)

        def loss(t, m):
            return jnp.sum(tg43.dose_gy(pts, pos, axes, t, k, 4e4, mesh=m) ** 2)
        g1 = jax.grad(loss)(times, None)
        g4 = jax.jit(jax.grad(lambda t: loss(t, mesh)))(times)

        def rows(p):
            return tg43.dose_rate_matrix(p, pos, axes, k)
        even = sharding.sharded_influence_matrix(rows, pts[:10_000], mesh)
        uneven = sharding.sharded_influence_matrix(rows, pts, mesh)
        direct = rows(pts)
        matvec = sharding.sharded_matvec(even, times, mesh)
        auto = jax.jit(lambda m, t: m @ t)(even, times)
        print(json.dumps({
            "n_devices": mesh.size,
            "dose": rel(sharded, single), "jit": rel(jitted, single),
            "grad": rel(g4, g1),
            "even": rel(even, direct[:10_000]), "uneven": rel(uneven, direct),
            "even_shards": len(even.sharding.device_set),
            "uneven_shards": len(uneven.sharding.device_set),
            "shard_rows": [s.data.shape[0] for s in even.addressable_shards],
            "matvec": rel(matvec, direct[:10_000] @ times),
            "auto": rel(auto, direct[:10_000] @ times),
            "auto_shards": len(auto.sharding.device_set),
            "shape": list(sharded.shape),
        }))
        """
        )
    )
    assert out["n_devices"] == N_DEVICES
    assert out["shape"] == [10_003]
    for key in ("dose", "jit", "even", "uneven", "matvec", "auto"):
        assert out[key] < 1e-6, (key, out[key])
    assert out["grad"] < 1e-5
    assert out["even_shards"] == N_DEVICES and out["shard_rows"] == [2500] * 4
    assert out["uneven_shards"] == 1  # gathered onto one device, not copied to all four
    assert out["auto_shards"] == N_DEVICES  # matrix @ t on a row-split matrix runs on every device


def test_sharded_plan_equals_single_device_plan(tmp_path):
    """The built-in flap plan (3 L-BFGS iterations) with compute.devices = 1 and = 4."""
    out = _run_with_host_devices(
        f"""
        import json
        import jax.numpy as jnp, numpy as np
        from iortopt.config import load_config, parse_config
        from iortopt.pipeline import execute, prepare

        base = load_config(None).model_dump(mode="json", exclude_none=True)
        base["optimizer"]["max_iterations"] = 3
        doses, times = [], []
        for devices in (1, 4):
            doc = dict(base, compute={{"devices": devices}})
            result = execute(prepare(parse_config(doc), jnp.float32),
                             "{tmp_path}/plan_" + str(devices))
            doses.append(result.dose_gy)
            times.append(result.times_s)
        print(json.dumps({{
            "dose": float(np.max(np.abs(doses[1] - doses[0])) / np.max(doses[0])),
            "times": float(np.max(np.abs(times[1] - times[0])) / np.max(times[0])),
        }}))
        """
    )
    assert out["dose"] < 1e-4, out
    assert out["times"] < 1e-4, out


def test_single_device_mesh_is_the_plain_path():
    kernel = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=jnp.float64)
    rng = np.random.default_rng(3)
    pts = rng.uniform(-30, 30, (500, 3))
    pos = rng.uniform(-10, 10, (8, 3))
    axes = np.tile([0.0, 0.0, 1.0], (8, 1))
    times = rng.uniform(1, 5, 8)
    mesh = sharding.voxel_mesh(1)
    plain = np.asarray(tg43.dose_gy(pts, pos, axes, times, kernel, 4e4))
    meshed = np.asarray(tg43.dose_gy(pts, pos, axes, times, kernel, 4e4, mesh=mesh))
    np.testing.assert_array_equal(meshed, plain)


def test_device_count_resolution():
    assert sharding.resolve_device_count("all", available=4) == 4
    assert sharding.resolve_device_count(2, available=4) == 2
    for bad in (0, 5, "two", True):
        with pytest.raises(ValueError):
            sharding.resolve_device_count(bad, available=4)
    assert sharding.voxel_mesh("all").size == len(jax.devices())
