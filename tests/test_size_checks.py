"""Cases too large to build are refused from the config alone, in seconds
(iortopt.cases.size_estimate):
`iortopt run`, `iortopt memory` and `iortopt dose` exit 2 naming the field, before allocating."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from iortopt.cases import size_estimate as case_size
from iortopt.compute import memory
from iortopt.config import case_params, load_config, parse_config
from iortopt.errors import ConfigError

#: A refused case returns well within this (the CLI starts in about 2 s); the old code built the
#: case first: minutes, or a MemoryError.
CLI_LIMIT_S = 30.0
#: In-process pre-check time (config arithmetic only; jax is already imported).
CHECK_LIMIT_S = 2.0
SRC = str(Path(__file__).resolve().parents[1] / "src")

HOSTILE = {
    "grid_0.25mm": ("[case.flap]\nspacing_mm = 0.25\n", "case.flap.spacing_mm"),
    "grid_0.02mm": ("[case.flap]\nspacing_mm = 0.02\n", "case.flap.spacing_mm"),
    "step_0.001mm": ("[applicator]\nstep_mm = 0.001\n", "applicator.step_mm"),
    "supersampling_60": ("[case.flap]\nsupersampling = 60\n", "case.flap.supersampling"),
}


def _cli(args, tmp_path, timeout=CLI_LIMIT_S):
    env = os.environ | {"PYTHONPATH": SRC, "COLUMNS": "200", "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "iortopt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("command", ["run", "memory"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_too_large_case_is_refused_fast(tmp_path, command, name):
    text, field = HOSTILE[name]
    cfg = tmp_path / "big.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    args = [command, str(cfg)] + (["--out", str(out), "--quiet"] if command == "run" else [])
    proc, elapsed = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr and "too large to build" in proc.stderr
    assert "what fits" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < CLI_LIMIT_S
    assert not out.exists()


def test_dose_with_dwells_100_m_apart_is_refused_before_allocating(tmp_path):
    dwells = tmp_path / "far.csv"
    dwells.write_text(
        "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,0,0,1,10\n"
        "100000,100000,100000,0,0,1,10\n"
    )
    out = tmp_path / "dose.zarr"
    proc, elapsed = _cli(["dose", str(dwells), "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for expected in ("far.csv", "--spacing-mm", "--margin-mm", "voxels", "TiB", "what fits"):
        assert expected in proc.stderr, proc.stderr
    assert elapsed < CLI_LIMIT_S and not out.exists()


def test_dose_grid_shape_is_that_of_the_grid():
    from iortopt.grid import Grid

    positions = np.array([[0.0, 0.0, 0.0], [13.0, -7.5, 21.0]])
    shape = case_size.check_dose_grid(positions, 30.0, 2.5, 2, np.float32, 0, "d.csv")
    grid = Grid.from_bounds(positions.min(0) - 30.0, positions.max(0) + 30.0, 2.5)
    assert shape == grid.shape_zyx


SHIPPED = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "configs" / "*.toml")))


@pytest.mark.parametrize("path", [None, *SHIPPED], ids=lambda p: Path(p).name if p else "builtin")
def test_shipped_configs_pass_the_pre_check_fast(path):
    cfg = load_config(path)
    memory.memory_budget()  # the first query starts JAX; not part of the check's time
    start = time.perf_counter()
    size = case_size.check_case_size(cfg)
    assert time.perf_counter() - start < CHECK_LIMIT_S
    assert size.n_voxels > 0 and size.build_samples <= case_size.MAX_BUILD_SAMPLES


def test_flap_estimate_matches_the_built_case():
    from iortopt.cases.flap import FlapCaseParams, build_flap_case

    values = {"spacing_mm": 4.0, "supersampling": 2}
    cfg = parse_config({"case": {"flap": values}, "applicator": {"step_mm": 2.5}})
    size = case_size.estimate_case_size(cfg)
    case, applicator = build_flap_case(FlapCaseParams(**values))
    assert size.shape_zyx == case.grid.shape_zyx and size.n_voxels == case.grid.n_voxels
    assert size.n_structures == len(case.structures)
    assert size.n_dwells == len(applicator.dwells(2.5))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).name)
def test_grid_shapes_match_the_phantoms(path):
    from iortopt.cases import breast, eliot
    from iortopt.cases import flap as phantoms
    from iortopt.cases.catheters import FlapApplicator

    cfg = load_config(path)
    size = case_size.estimate_case_size(cfg)
    if cfg.case.kind == "builtin_flap":
        p = case_params(phantoms.FlapCaseParams, cfg.case.flap, "flap")
        layout = phantoms._layout(p)
        catheters = phantoms._catheter_polylines_mm(p, layout)
        grid = phantoms._grid_for(p, layout, catheters)
        assert size.n_dwells == len(FlapApplicator(catheters).dwells(cfg.applicator.step_mm))
    elif cfg.case.kind == "builtin_breast":
        p = case_params(breast.BreastCaseParams, cfg.case.breast, "breast")
        grid = breast.case_grid(p, breast.breast_geometry(p))
    else:
        p = case_params(eliot.EliotCaseParams, cfg.case.eliot, "eliot")
        grid = eliot.case_grid(p, eliot.eliot_geometry(p))
    assert size.shape_zyx == grid.shape_zyx


def test_memory_refusal_names_spacing_budget_and_what_fits():
    cfg = parse_config({"case": {"flap": {"spacing_mm": 1.0}}})
    size = case_size.estimate_case_size(cfg)
    need = max(size.build_bytes, case_size.plan_lower_bound_bytes(size))
    small = memory.memory_budget(memory_limit_mb=need / memory.MIB / 2)
    with pytest.raises(ConfigError) as info:
        case_size.check_case_size(cfg, budget=small)
    message = str(info.value)
    assert "case.flap.spacing_mm" in message and "compute.memory_limit_mb" in message
    assert f"{size.n_voxels:.3g} voxels" in message and "what fits" in message
    # what it says fits does fit
    fit_mm = float(message.split("spacing_mm >= about ")[1].split(",")[0])
    cfg_fit = parse_config({"case": {"flap": {"spacing_mm": fit_mm * 1.05}}})
    case_size.check_case_size(cfg_fit, budget=small)
    case_size.check_case_size(cfg, budget=memory.memory_budget(memory_limit_mb=2 * need))


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"case": {"flap": {"n_catheters": 10**8}}}, "case.flap.n_catheters"),
        ({"case": {"flap": {"spacing_mm": 1e-300}}}, "case.flap.spacing_mm"),
        (
            {
                "plan": {"modality": "xray_sphere"},
                "case": {"kind": "builtin_breast", "breast": {"supersampling": 60}},
            },
            "case.breast.supersampling",
        ),
        (
            {
                "plan": {"modality": "electron"},
                "case": {"kind": "builtin_eliot", "eliot": {"spacing_mm": 0.1}},
            },
            "case.eliot.spacing_mm",
        ),
        (
            {
                "plan": {"modality": "xray_sphere"},
                "case": {
                    "kind": "builtin_breast",
                    "breast": {"breast_half_width_mm": 1e12, "spacing_mm": 1e11},
                },
            },
            "case.breast.rib_spacing_mm",
        ),
    ],
)
def test_other_absurd_cases_are_refused_in_process(doc, field):
    cfg = parse_config(doc)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        case_size.check_case_size(cfg, budget=memory.memory_budget(memory_limit_mb=1e9))
    assert time.perf_counter() - start < CHECK_LIMIT_S


def test_prepare_runs_the_pre_check_before_building(monkeypatch):
    from iortopt import pipeline as run_plan

    def never(*args):
        raise AssertionError("the case was built")

    monkeypatch.setattr(run_plan, "prepare_modality", never)
    with pytest.raises(ConfigError, match="applicator.step_mm"):
        run_plan.prepare(parse_config({"applicator": {"step_mm": 0.001}}), np.float32)
