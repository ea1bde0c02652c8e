"""Memory model (iortopt.compute.memory): estimates bound XLA's buffers and a measured RSS, chunk
choice
respects a limit, a plan too large for its budget stops before it starts."""

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

from iortopt.compute import memory
from iortopt.config import load_config, parse_config
from iortopt.errors import ConfigError, IortoptError
from iortopt.physics import electron as el
from iortopt.physics import tg43, xray
from iortopt.physics.disc import Disc
from iortopt.physics.sources import load_source

F32 = jnp.float32
SK_U = 40000.0


@pytest.fixture(scope="module")
def kernel32():
    return tg43.make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=F32)


def _tg43_args(n_points, n_dwells, seed=0):
    rng = np.random.default_rng(seed)
    pts = jnp.asarray(rng.uniform(-50, 50, (n_points, 3)), F32)
    pos = jnp.asarray(rng.uniform(-20, 20, (n_dwells, 3)), F32)
    axes = jnp.tile(jnp.asarray([0.0, 0.0, 1.0], F32), (n_dwells, 1))
    times = jnp.asarray(rng.uniform(1, 10, n_dwells), F32)
    return pts, pos, axes, times


def _xla_bytes(fn, *args) -> int:
    """Bytes XLA assigns to a compiled program: arguments, outputs and temporaries."""
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


@pytest.mark.parametrize(
    ("n_points", "n_dwells", "chunk"),
    [(40000, 100, 0), (40000, 300, 0), (40000, 100, 4096), (20000, 100, None)],
)
def test_tg43_dose_estimate_bounds_xla_buffers(no_x64, kernel32, n_points, n_dwells, chunk):
    args = _tg43_args(n_points, n_dwells)
    measured = _xla_bytes(
        lambda p, q, a, t: tg43.dose_gy(p, q, a, t, kernel32, SK_U, chunk_size=chunk), *args
    )
    est = memory.tg43_dose_estimate(n_points, n_dwells, chunk, np.float32).peak_bytes
    assert measured <= est <= 4 * measured


def test_chunked_gradient_keeps_one_chunk_not_the_matrix(no_x64, kernel32):
    """dose_gy recomputes each chunk in the backward pass: a gradient holds far less than the
    P x N values it would otherwise keep; the matrix-free estimate bounds it."""
    n_points, n_dwells = 60000, 200
    pts, pos, axes, times = _tg43_args(n_points, n_dwells)

    def loss(t, p, q, a):
        return jnp.sum(tg43.dose_gy(p, q, a, t, kernel32, SK_U) ** 2)

    m = jax.jit(jax.grad(loss)).lower(times, pts, pos, axes).compile().memory_analysis()
    assert m.temp_size_in_bytes < n_points * n_dwells * 4 / 5
    est = memory.tg43_matrix_free_estimate(n_points, n_dwells, np.float32)
    assert m.temp_size_in_bytes + m.argument_size_in_bytes <= est.peak_bytes


def test_remat_does_not_change_values_or_gradients():
    kernel = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=jnp.float64)
    rng = np.random.default_rng(1)
    pts = rng.uniform(-30, 30, (700, 3))
    pos = rng.uniform(-10, 10, (12, 3))
    axes = np.tile([0.0, 0.0, 1.0], (12, 1))
    times = rng.uniform(1, 5, 12)

    def loss(t, remat):
        return jnp.sum(tg43.dose_gy(pts, pos, axes, t, kernel, SK_U, 64, remat=remat) ** 2)

    for remat in (True, False):
        assert float(loss(times, remat)) == pytest.approx(float(loss(times, None)), rel=1e-14)
    g_on = np.asarray(jax.grad(loss)(times, True))
    g_off = np.asarray(jax.grad(loss)(times, False))
    np.testing.assert_allclose(g_on, g_off, rtol=1e-12)


def test_influence_matrix_built_in_place_equals_direct():
    """plan._influence_matrix writes chunks in place, the last one shifted back: same matrix."""
    from iortopt.cases.catheters import Dwells
    from iortopt.modalities.hdr_flap.pipeline import _influence_matrix

    kernel = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"), dtype=jnp.float64)
    rng = np.random.default_rng(2)
    n = 1500
    pts = rng.uniform(-30, 30, (n, 3))
    dwells = Dwells(
        positions_mm=rng.uniform(-10, 10, (20, 3)),
        axes=np.tile([0.0, 0.0, 1.0], (20, 1)),
        catheter=np.zeros(20, int),
        index=np.arange(20),
    )
    matrix, _, _ = _influence_matrix(pts, dwells, kernel, SK_U, jnp.float64, chunk_size=64)
    direct = tg43.dose_rate_matrix(pts, dwells.positions_mm, dwells.axes, kernel)
    direct = np.asarray(direct) * SK_U * tg43.GY_PER_CGY / tg43.SECONDS_PER_HOUR
    assert n % 64 != 0
    np.testing.assert_allclose(np.asarray(matrix), direct, rtol=1e-13)


def test_matrix_step_estimate_bounds_xla_buffers(no_x64):
    """An L-BFGS step on an influence matrix holds the matrix once (no transposed copy)."""
    import optax

    n_points, n_dwells = 50000, 150
    matrix = jnp.ones((n_points, n_dwells), F32)
    w = jnp.ones(n_points, F32)
    opt = optax.lbfgs()

    def f(u, m, w):
        d = m @ (u * u)
        return jnp.sum(w * jnp.square(jnp.maximum(10.0 - d, 0.0)))

    def step(u, state, m, w):
        g = lambda u: f(u, m, w)  # noqa: E731
        value, grad = optax.value_and_grad_from_state(g)(u, state=state)
        updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=g)
        return optax.apply_updates(u, updates), state, value

    u = jnp.ones(n_dwells, F32)
    measured = _xla_bytes(step, u, opt.init(u), matrix, w)
    est = memory.tg43_matrix_estimate(n_points, n_dwells, np.float32, n_structures=1)
    device_est = est.peak_bytes - est.persistent["optimisation points (host float32)"]
    assert measured <= device_est <= 4 * measured


@pytest.mark.parametrize(("n_points", "n_sizes"), [(60000, 8), (100000, 4)])
def test_xray_catalogue_estimate_bounds_xla_buffers(no_x64, n_points, n_sizes):
    beam = xray.load_xray_beam("generic_50kV_spheres")
    pts = jnp.zeros((n_points, 3), F32) + 1.0
    centres = jnp.zeros((n_sizes, 3), F32)
    radii, times = jnp.full(n_sizes, 10.0, F32), jnp.ones(n_sizes, F32)
    for axis, anisotropy in ((None, 0.0), ((0.0, 0.0, 1.0), 0.3)):
        measured = _xla_bytes(
            lambda p, c, r, t: xray.catalogue_dose_gy(p, c, r, t, beam, axis, anisotropy),  # noqa: B023
            pts,
            centres,
            radii,
            times,
        )
        est = memory.xray_catalogue_estimate(n_points, n_sizes, np.float32)
        device_est = est.peak_bytes - est.persistent["points (host float64)"]
        device_est -= est.stages["catalogue pass"]["doses (host float64)"]
        assert measured <= device_est <= 8 * measured


def test_electron_catalogue_estimate_bounds_xla_buffers(no_x64):
    beam = el.load_electron_beam("generic_IOERT")
    flat = el.PlaneSurface(jnp.zeros(3, F32), jnp.array([0.0, 0.0, 1.0], F32))
    n_points, k = 50000, 16
    pts = jnp.asarray(np.random.default_rng(0).uniform(-40, 40, (n_points, 3)), F32)
    cones = el.Cone(
        jnp.zeros(k, jnp.int32),
        jnp.zeros(k, jnp.int32),
        jnp.full(k, 60.0, F32),
        jnp.zeros((k, 3), F32),
        jnp.tile(jnp.array([0.0, 0.0, -1.0], F32), (k, 1)),
        jnp.tile(jnp.array([0.0, -1.0, 0.0], F32), (k, 1)),
        jnp.full(k, 100.0, F32),
    )
    discs = Disc(
        jnp.tile(jnp.array([0.0, 0.0, -20.0], F32), (k, 1)),
        jnp.tile(jnp.array([0.0, 0.0, 1.0], F32), (k, 1)),
        jnp.full(k, 40.0, F32),
        jnp.full(k, 6.0, F32),
    )
    measured = _xla_bytes(
        lambda p, c, d: el.catalogue_dose_gy(p, c, beam, flat, d, batch_size=8), pts, cones, discs
    )
    est = memory.electron_catalogue_estimate(n_points, k, 8, np.float32)
    device_est = est.peak_bytes - est.stages["catalogue pass"]["doses (host float64)"]
    assert measured <= device_est <= 3 * measured


RSS_SAMPLER = """
import os, threading, time

def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

class PeakRss:
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
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_measured_rss_of_a_full_grid_dose_is_within_the_estimate():
    """In a fresh process, compiled beforehand: the RSS growth (sampled every 2 ms) of a 2.2 M
    voxel, 100-dwell full-grid dose (points built by Grid, dose copied back) stays under the
    estimate, and not far under it."""
    script = RSS_SAMPLER + textwrap.dedent(
        """
        import json
        import jax, jax.numpy as jnp, numpy as np
        from iortopt.grid import Grid
        from iortopt.physics import tg43
        from iortopt.physics.sources import load_source

        k = tg43.make_kernel(load_source("mHDR-v2_HEBD2012"))
        grid = Grid.from_bounds((-65.0,) * 3, (65.0,) * 3, 1.0)
        pos = np.stack([np.zeros(100), np.zeros(100), np.linspace(-25, 25, 100)], -1)
        axes = np.tile([0.0, 0.0, 1.0], (100, 1))
        f = jax.jit(lambda p, q, a, t: tg43.dose_gy(p, q, a, t, k, 4e4))
        spec = jax.ShapeDtypeStruct((grid.n_voxels, 3), jnp.float32)
        f = f.lower(spec, pos.astype(np.float32), axes.astype(np.float32),
                    np.ones(100, np.float32)).compile()
        with PeakRss() as rss:
            points = grid.points_mm(np.float32)
            dose = np.asarray(f(points, pos.astype(np.float32), axes.astype(np.float32),
                                np.ones(100, np.float32)), np.float32)
        print(json.dumps({"n": grid.n_voxels, "delta": rss.delta}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    est = memory.tg43_dose_estimate(out["n"], 100, 0, np.float32, grid_points=True).peak_bytes
    assert 0 < out["delta"] <= est <= 4 * out["delta"], (out, est)


def test_choose_chunk_size_respects_the_limit():
    n_points, n_dwells = 2_000_000, 500

    def peak(chunk):
        return memory.tg43_dose_estimate(n_points, n_dwells, chunk).peak_bytes

    fixed = peak(memory.MIN_CHUNK)
    budget = fixed + 100 * memory.MIB
    chunk = memory.choose_chunk_size(peak, 1_000_000, budget)
    assert chunk % 8 == 0 and memory.MIN_CHUNK <= chunk < 1_000_000
    assert peak(chunk) <= budget < peak(chunk + 8)
    assert memory.choose_chunk_size(peak, 1000, budget) == 1000  # preferred fits: kept
    assert memory.choose_chunk_size(peak, 1000, None) == 1000
    assert memory.choose_chunk_size(peak, 1000, fixed - 1) is None


def test_auto_chunk_size_follows_the_run_context():
    from iortopt.compute.run_context import RunContext

    default = tg43.auto_chunk_size(100)
    assert default == memory.PAIRS_PER_CHUNK // 100 // 8 * 8
    assert tg43.auto_chunk_size(100, 512 * 100) == 512
    assert RunContext(pairs_per_chunk=512 * 100).chunk_size(100) == 512
    assert RunContext().chunk_size(100) == default


def test_largest_fitting_scale():
    assert memory.largest_fitting_scale(lambda s: int(1000 * s), 2000) == 1.0
    s = memory.largest_fitting_scale(lambda s: int(1000 * s), 250)
    assert 0.249 <= s <= 0.252 and int(1000 * s) <= 250
    assert memory.largest_fitting_scale(lambda s: 10 + int(1000 * s), 5) == 0.0


def test_budget_from_limit_or_free_memory(tmp_path):
    b = memory.memory_budget(memory_limit_mb=512)
    assert b.usable_bytes == 512 * memory.MIB and b.source == "memory_limit_mb"
    free = 10 * 2**30
    b = memory.memory_budget(safety_fraction=0.5, free_bytes=free)
    assert b.usable_bytes == free // 2 - memory.CPU_RUNTIME_RESERVE_BYTES
    assert memory.host_available_bytes() > 0
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  100 kB\nMemAvailable:  2048 kB\n")
    assert memory._meminfo_available_bytes(str(meminfo)) == 2048 * 1024
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert memory._cgroup_available_bytes(str(tmp_path)) == 600000
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_available_bytes(str(tmp_path)) is None


def test_use_influence_matrix_decisions():
    args = (100_000, 200, np.float32)
    assert memory.use_influence_matrix("matrix", *args, 1.0)
    assert not memory.use_influence_matrix("matrix_free", *args, 1e9)
    assert memory.use_influence_matrix("auto", *args, 1e9)
    assert not memory.use_influence_matrix("auto", *args, 50.0)  # 76 MiB matrix > 50 MiB
    assert not memory.use_influence_matrix("auto", *args, 1e9, budget_bytes=10 * memory.MIB)


def test_hdr_influence_mode_follows_the_run_context():
    from iortopt.compute.run_context import RunContext
    from iortopt.modalities.hdr_flap.pipeline import _use_influence_matrix

    cfg = load_config(None)
    assert _use_influence_matrix(cfg, 100_000, 200, np.float32, RunContext())
    assert not _use_influence_matrix(
        cfg, 100_000, 200, np.float32, RunContext(influence="matrix_free")
    )
    small = RunContext(budget_bytes=10 * memory.MIB)
    assert not _use_influence_matrix(cfg, 100_000, 200, np.float32, small)


def test_compute_section_in_config():
    cfg = load_config(None)
    assert cfg.compute.devices == "all" and cfg.compute.memory_limit_mb is None
    cfg = parse_config({"compute": {"devices": 2, "memory_limit_mb": 800, "chunk_size": 256}})
    assert (cfg.compute.devices, cfg.compute.chunk_size) == (2, 256)
    for bad in ({"devices": 0}, {"devices": "some"}, {"safety_fraction": 1.5}):
        with pytest.raises(ConfigError, match="compute"):
            parse_config({"compute": bad})


def _with_compute(**compute):
    doc = load_config(None).model_dump(mode="json", exclude_none=True)
    doc["compute"] = compute
    return parse_config(doc)


def test_builtin_plan_fits_with_the_cache_sized_chunk():
    from iortopt.pipeline import plan_memory, prepare

    prepared = prepare(load_config(None), jnp.float32)
    plan = plan_memory(prepared)
    assert plan.fits and plan.devices == 1
    assert plan.chunk_size == memory.PAIRS_PER_CHUNK // len(prepared.dwells) // 8 * 8
    assert plan.estimate.sizes["influence"] == "matrix"


def test_small_limit_picks_smaller_chunks_then_refuses(monkeypatch):
    from iortopt.pipeline import check_memory, plan_memory, prepare, prepare_modality

    # Accelerator-sized preferred chunks (2^24 pairs: ~0.5 GiB of temporaries at 116 dwells).
    monkeypatch.setattr(memory, "preferred_pairs_per_chunk", lambda platform: 2**24)
    prepared = prepare_modality(_with_compute(memory_limit_mb=1e6), jnp.float32)
    big = plan_memory(prepared)
    assert big.chunk_size == 2**24 // len(prepared.dwells) // 8 * 8
    limit_mb = 100.0
    prepared = prepare_modality(_with_compute(memory_limit_mb=limit_mb), jnp.float32)
    plan = plan_memory(prepared)
    assert plan.fits and plan.estimate.peak_bytes <= limit_mb * memory.MIB
    assert memory.MIN_CHUNK <= plan.chunk_size < big.chunk_size
    # The dose pass then runs with that chunk, handed down in the run context.
    from iortopt.pipeline import run_context

    assert run_context(plan).chunk_size(len(prepared.dwells)) == plan.chunk_size

    cfg = _with_compute(memory_limit_mb=8)
    with pytest.raises(ConfigError) as info:
        prepare(cfg, jnp.float32)
    message = str(info.value)
    assert "needs about" in message and "8 MiB" in message and "what fits" in message
    plan = plan_memory(prepare_modality(cfg, jnp.float32))
    assert not plan.fits and 0 < plan.largest_scale < 1
    with pytest.raises(ConfigError):
        check_memory(plan)


def test_too_many_devices_is_a_config_error():
    from iortopt.pipeline import prepare

    with pytest.raises(ConfigError, match="compute.devices"):
        prepare(_with_compute(devices=64), jnp.float32)


@pytest.mark.parametrize("config", ["configs/breast_xray.toml", "configs/breast_electron.toml"])
def test_other_modalities_have_estimates(config):
    from iortopt.pipeline import plan_memory, prepare_modality

    plan = plan_memory(prepare_modality(load_config(config), jnp.float32))
    assert plan.fits and plan.chunk_size is None
    assert 10 * memory.MIB < plan.estimate.peak_bytes < 2048 * memory.MIB


def test_memory_command_prints_the_estimate():
    from typer.testing import CliRunner

    from iortopt.cli import app

    result = CliRunner().invoke(app, ["memory", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fits"] and data["estimate"]["engine"] == "hdr_plan"


def test_gpu_memory_env_and_lazy_cupy():
    from iortopt.compute import runtime

    assert runtime.gpu_memory_env(True) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert runtime.gpu_memory_env(False, 0.6) == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}
    assert runtime.gpu_memory_env(False) == {}
    with pytest.raises(ValueError):
        runtime.gpu_memory_env(False, 1.5)
    jax.devices()
    assert runtime.backends_initialised()
    assert runtime.apply_gpu_memory_env(True) is False  # too late once JAX has started
    assert "cupy" not in sys.modules  # nothing imports cupy at import time
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(IortoptError, match="gpu"):
            runtime.import_cupy()
