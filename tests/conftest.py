"""Shared test setup: float64 is enabled for the whole session (validation runs in double).

Tests of the float32 engine run inside the ``no_x64`` fixture, so that they exercise float32
arithmetic as it runs on accelerators (where x64 is off), not a float32/float64 mix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Fuzz profiles (tests/test_fuzz_cli.py): "ci" is seeded and small, "long" searches widely.
_FUZZ = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile("ci", max_examples=12, derandomize=True, **_FUZZ)
settings.register_profile("long", max_examples=200, **_FUZZ)
settings.load_profile(os.environ.get("IORTOPT_FUZZ_PROFILE", "ci"))

# `iortopt run` keeps compiled programs in the user's cache folder; the tests use a folder of
# their own (shared by the session's runs, removed at its end), never the user's.
_OWN_CACHE = None
if not os.environ.get("IORTOPT_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="iortopt-test-cache-")
    os.environ["IORTOPT_CACHE_DIR"] = _OWN_CACHE


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"


def x64_disabled():
    """Context manager that turns jax x64 off (``jax.enable_x64`` in new jax, else experimental)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(False)
    from jax.experimental import disable_x64  # jax < 0.7

    return disable_x64()


@pytest.fixture
def no_x64():
    """Run the test body with jax x64 disabled (pure float32, as on a GPU by default)."""
    with x64_disabled():
        yield


@pytest.fixture
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def small_plan_output(tmp_path_factory) -> Path:
    """A coarse built-in HDR flap plan (4 mm grid, 4 catheters, 5 Adam iterations) run once
    through ``iortopt run``: its output folder, for the report tests."""
    from typer.testing import CliRunner

    from iortopt.cli import app
    from iortopt.config import builtin_config_text

    text = builtin_config_text()
    for old, new in (
        ("spacing_mm = 2.0", "spacing_mm = 4.0"),
        ("n_catheters = 8", "n_catheters = 4"),
        ("max_iterations = 300", "max_iterations = 5"),
        ('method = "lbfgs"', 'method = "adam"'),  # half the compile time of L-BFGS
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    folder = tmp_path_factory.mktemp("small_plan")
    config = folder / "small_flap.toml"
    config.write_text(text)
    out = folder / "out"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def gc_enabled():
    """Python's cyclic collector on for the test, as it was after it (tests of the pauses)."""
    import gc

    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()
