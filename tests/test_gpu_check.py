"""scripts/gpu_check.py, the prepared GPU measurement, dry-run on the CPU at tiny sizes: every step
runs in its own process and lands in one JSON file, so the one GPU run a session gets is not spent
finding a broken step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
STEPS = ("facts", "tg43", "precision", "plan", "memory", "zarr", "rawkernel")


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out)
    return proc, out


def test_dry_run_records_every_step_ok_or_skipped(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").stat().st_size > 0
    steps = payload["steps"]
    assert list(steps) == list(STEPS)
    for name, entry in steps.items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
        assert entry["wall_s"] >= 0
    assert steps["rawkernel"]["status"] == "skipped"
    assert payload["total_wall_s"] < payload["meta"]["total_budget_s"]


def test_dry_run_figures_are_positive_and_finite(dry_run):
    _, out = dry_run
    payload = json.loads((out / "gpu_check.json").read_text())
    facts = payload["device"]
    assert facts["platform"] == "cpu" and facts["device_kind"] and facts["versions"]["jax"]
    assert facts["missing_modules"] == []
    for key in ("matmul_highest_flops", "fma_flops", "peak_fp32_flops", "tg43_flops_per_eval"):
        assert _positive(facts[key]), key
    steps = {name: entry.get("result") for name, entry in payload["steps"].items()}
    cases = steps["tg43"]["cases"]
    assert [c["case"] for c in cases] == ["reference", "24^3"]
    for case in cases:
        assert _positive(case["evals_per_s"]) and _positive(case["dose_max_gy"])
        assert 0 < case["fraction_of_peak"] < 10  # XLA's flop count is an estimate, not exact
    precision = steps["precision"]
    assert precision["device_dose_dtype"] == "float32"
    assert precision["reference_dose_dtype"] == "float64"
    assert 0 < precision["max_rel_diff"] < precision["tf32_suspect_threshold"]
    assert precision["no_tf32"] is True
    plan = steps["plan"]
    assert plan["plan"] == "flap_256_500_gpu" and plan["n_dwells_active"] > 0
    assert _positive(plan["compile_s"]) and _positive(plan["optimise_s"])
    memory = steps["memory"]
    assert _positive(memory["measured_mib"]) and _positive(memory["predicted_compared_mib"])
    assert 0.2 < memory["predicted_over_measured"] < 5
    zarr = steps["zarr"]
    assert _positive(zarr["host_path_s"]) and zarr["device_path_status"].startswith("skipped")


def test_one_step_alone_and_a_spent_budget_is_skipped(tmp_path):
    proc = _run(tmp_path, "--only", "rawkernel", "--only", "zarr", "--total-budget-s", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert list(steps) == ["rawkernel", "zarr"]
    assert steps["zarr"]["status"] == "skipped" and "budget" in steps["zarr"]["reason"]


def test_a_step_past_its_limit_is_killed_and_recorded(tmp_path):
    proc = _run(tmp_path, "--only", "plan", "--only", "rawkernel", "--total-budget-s", "6")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["plan"]["status"] == "timeout" and steps["plan"]["wall_s"] < 10
    assert steps["rawkernel"]["status"] == "skipped"
