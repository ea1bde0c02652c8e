"""The persistent compilation cache of `iortopt run`: where it lives, how it is turned off, and
that a plan is the same without it, filling it, and read back from it (whole CLI processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import zarr

from iortopt.compute import compile_cache as cc

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_folder_follows_the_env_and_xdg_and_names_the_versions(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.cache_root() == tmp_path / "xdg" / "iortopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cc.cache_root() == Path.home() / ".cache" / "iortopt"
    monkeypatch.setenv(cc.CACHE_DIR_ENV, str(tmp_path / "mine"))
    folder = cc.cache_dir()
    assert folder.parent == tmp_path / "mine"
    import jax

    from iortopt import __version__

    assert f"iortopt-{__version__}" in folder.name and f"jax-{jax.__version__}" in folder.name
    assert cc.host_key() in folder.name


@pytest.mark.parametrize("value, off", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_env_variable_turns_it_off(monkeypatch, value, off):
    monkeypatch.setenv(cc.NO_CACHE_ENV, value)
    assert cc.cache_disabled_by_env() is off


def test_unwritable_folder_means_no_cache(monkeypatch, tmp_path):
    import jax

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = jax.config.jax_compilation_cache_dir
    try:
        assert cc.enable_compile_cache(folder=blocker / "cache") is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        if before is not None:
            cc.enable_compile_cache(folder=Path(before))


def _run(config: Path, out: Path, cache: Path, *extra: str) -> dict:
    env = {**os.environ, cc.CACHE_DIR_ENV: str(cache)}
    env.pop(cc.NO_CACHE_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "iortopt.cli", "run", str(config), "--out", str(out), "--quiet"]
        + list(extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "summary.json").read_text())


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*-cache")}


def test_plan_is_the_same_without_the_cache_filling_it_and_reading_it(tmp_path):
    with (CONFIGS / "flap_default.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    doc["case"]["flap"] |= {"spacing_mm": 4.0, "supersampling": 2, "n_catheters": 4}
    doc["optimizer"] |= {"max_iterations": 30}
    config = tmp_path / "small.toml"
    config.write_bytes(tomli_w.dumps(doc).encode())
    cache = tmp_path / "cache"

    plain = _run(config, tmp_path / "plain", cache, "--no-cache")
    assert plain["compile_cache"] is None and not cache.exists()
    cold = _run(config, tmp_path / "cold", cache)
    stored = _entries(cache)
    assert stored, "the cached run stored no compiled program"
    assert Path(cold["compile_cache"]).parent == cache
    warm = _run(config, tmp_path / "warm", cache)
    assert _entries(cache) == stored  # every program came from the cache: nothing new compiled

    times = {
        name: np.asarray(zarr.open_group(str(tmp_path / name / "plan.zarr"))["dwells/times_s"])
        for name in ("plain", "cold", "warm")
    }
    np.testing.assert_array_equal(times["cold"], times["plain"])
    np.testing.assert_array_equal(times["warm"], times["plain"])
    for summary in (cold, warm):
        assert summary["metrics"] == plain["metrics"]
        assert summary["goals"] == plain["goals"]
    split = warm["wall_times_s"]
    for key in ("interpreter_s", "jax_import_s", "jax_startup_s", "imports_s", "case_build_s"):
        assert key in split
    stages = {k: v for k, v in split.items() if k not in ("total_s", "planning_s")}
    assert split["total_s"] == pytest.approx(sum(stages.values()))


def test_total_wall_times_split_and_clamp():
    from iortopt.compute.run_context import total_wall_times_s

    before = {"interpreter_s": None, "jax_import_s": 0.5, "case_build_s": 0.25}
    stages = {"optimise_s": 1.0, "write_s": 0.5, "total_s": 1.75}  # a modality's own total
    times = total_wall_times_s(before, stages, run_s=2.0)
    assert list(times) == [*before, "optimise_s", "write_s", "other_s", "planning_s", "total_s"]
    assert times["total_s"] == pytest.approx(2.75)  # known start-up + the run
    assert times["other_s"] == pytest.approx(0.5)  # 2.75 - (0.5 + 0.25 + 1.0 + 0.5)
    assert times["planning_s"] == 1.75
    assert total_wall_times_s({}, {"optimise_s": 3.0}, run_s=2.0)["other_s"] == 0.0
