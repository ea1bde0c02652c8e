"""Size buckets (issue 18): a padded dwell-time problem has the optimum of the exact one, and a
case of similar size runs the compiled step of an earlier case instead of compiling anew."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.config import parse_config
from iortopt.modalities.hdr_flap.pareto import structure_blocks
from iortopt.optimisation import bucketed, objectives, optax_loop
from iortopt.optimisation.buckets import (
    DWELL_QUANTUM,
    ROW_QUANTUM,
    bucket_size,
    pad_axis,
    padded_size,
)
from iortopt.pipeline import replan_session

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_bucket_sizes_are_a_short_ladder_with_bounded_padding():
    sizes = np.arange(1, 20001)
    rungs = np.array([bucket_size(int(n), ROW_QUANTUM) for n in sizes])
    assert np.all(rungs >= sizes) and np.all(rungs % ROW_QUANTUM == 0)
    assert np.all(np.diff(rungs) >= 0)
    assert np.all(rungs <= 1.25 * sizes + ROW_QUANTUM)  # at most 25 % (and a quantum) wasted
    assert len(np.unique(rungs)) <= 25  # 1..20000 rows: ~log(20000 / 64) / log(1.25) sizes
    assert bucket_size(17, DWELL_QUANTUM) == 32 and bucket_size(16, DWELL_QUANTUM) == 16
    assert padded_size(17, DWELL_QUANTUM, enabled=False) == 17
    with pytest.raises(ValueError, match="size 2 < length 3"):
        pad_axis(np.ones(3), 2)


def test_padded_dose_at_volume_is_the_unpadded_one():
    rng = np.random.default_rng(3)
    d = rng.uniform(0.0, 20.0, 101).astype(np.float32)
    d[:7] = 0.0  # real voxels of dose 0 tie with the padding
    w = rng.uniform(0.2, 1.0, 101).astype(np.float32)
    dp, wp = pad_axis(d, 128), pad_axis(w, 128)
    for volume in (0.0, 1.0, 0.5 * w.sum(), 0.98 * w.sum(), w.sum(), 2 * w.sum()):
        exact = objectives.dose_at_volume(jnp.asarray(d), jnp.asarray(w), volume)
        padded = objectives.dose_at_volume(jnp.asarray(dp), jnp.asarray(wp), volume, n_valid=101)
        assert float(padded) == float(exact)
    # without n_valid the padding would be read: the clamp matters
    assert float(objectives.dose_at_volume(jnp.asarray(dp), jnp.asarray(wp), 2 * w.sum())) == 0.0


def _small_flap(ctv_depth_mm: float) -> dict:
    with (CONFIGS / "flap_default.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    doc["case"]["flap"] |= {
        "spacing_mm": 4.0,
        "supersampling": 2,
        "n_catheters": 4,
        "ctv_depth_mm": ctv_depth_mm,
    }
    doc["optimizer"] |= {"max_iterations": 25}
    doc["radiobiology"] = {}
    return doc


@pytest.fixture(scope="module")
def sessions():
    """Two cases of slightly different size (CTV depth 9 and 10 mm) in the same buckets."""
    return [replan_session(parse_config(_small_flap(d)), jnp.float32) for d in (9.0, 10.0)]


def _exact_problem(session) -> bucketed.Problem:
    prep = session._prepared
    cfg = prep.config
    return bucketed.build_problem(
        cfg.objectives,
        structure_blocks(cfg, prep.weights, np.asarray(session._matrix)),
        prep.dwells.neighbour_pairs(),
        prep.case.grid.voxel_volume_cm3,
        cfg.prescription.dose_gy,
        prep.dtype,
        buckets=False,
    )


def test_padded_problem_optimises_as_the_exact_one(sessions):
    session = sessions[0]
    padded, exact = session._problem, _exact_problem(session)
    assert padded.layout.n_dwells > padded.n_dwells  # the padding is there
    assert padded.layout.block_rows != exact.layout.block_rows
    init, t_max = session._start_s, session._t_max
    runs = [
        bucketed.minimise_problem(p, init, t_max, method="lbfgs", max_iterations=10, tolerance=0.0)
        for p in (padded, exact)
    ]
    assert runs[0].iterations == runs[1].iterations == 10
    # float32: the padded sums are re-associated, so equal to rounding (~1e-5 after 10 steps)
    np.testing.assert_allclose(runs[0].times_s, runs[1].times_s, rtol=1e-5, atol=1e-4)
    assert runs[0].objective == pytest.approx(runs[1].objective, rel=1e-5)
    values = [bucketed.term_values(p, runs[1].times_s) for p in (padded, exact)]
    assert values[0].keys() == values[1].keys()
    for name, value in values[1].items():
        assert values[0][name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
    assert not np.allclose(runs[1].times_s, init, rtol=1e-2)  # the optimiser moved


def test_a_case_of_similar_size_reuses_the_compiled_step(sessions):
    first, second = sessions
    # different real sizes, the same buckets
    assert [int(v) for v in first._problem.data["n_valid"]] != [
        int(v) for v in second._problem.data["n_valid"]
    ]
    assert _exact_problem(first).layout != _exact_problem(second).layout
    assert first._problem.layout == second._problem.layout
    method, rate = first._cfg.optimizer.method, first._cfg.optimizer.learning_rate
    first.optimise(max_iterations=3)
    step = optax_loop._compiled_step(first._f, method, rate)[1]
    compiled = step._cache_size()
    assert compiled >= 1
    result = second.optimise(max_iterations=3)
    assert second._f is first._f
    assert step._cache_size() == compiled  # no new trace or compilation for the second case
    assert np.all(np.isfinite(result.times_s)) and result.iterations == 3


def test_a_run_of_the_bucketed_problem_writes_the_plan_of_the_exact_one(tmp_path, monkeypatch):
    from iortopt.modalities.hdr_flap.pipeline import optimise_and_write
    from iortopt.pipeline import prepare_modality

    doc = _small_flap(10.0)
    doc["optimizer"] |= {"max_iterations": 5, "tolerance": 1e-12}
    cfg = parse_config(doc)
    results = []
    for runs in ("0", "1"):
        monkeypatch.setenv("IORTOPT_BUCKET_RUNS", runs)
        prepared = prepare_modality(cfg, jnp.float32)
        results.append(optimise_and_write(prepared, tmp_path / f"plan{runs}"))
    exact, padded = (r.summary for r in results)
    assert padded["iterations"] == exact["iterations"] == 5
    np.testing.assert_allclose(results[1].times_s, results[0].times_s, rtol=1e-5, atol=1e-4)
    assert padded["objective"] == pytest.approx(exact["objective"], rel=1e-5)
    assert padded["objective_terms"].keys() == exact["objective_terms"].keys()
    # the exact run sums its terms over the whole optimisation grid in float32, and a
    # penalty of small dose differences (relu(d_min - d)^2) loses digits: 1e-4 here
    for name, value in exact["objective_terms"].items():
        assert padded["objective_terms"][name] == pytest.approx(value, rel=1e-4, abs=1e-9), name
    assert padded["metrics"]["CTV"]["D90_gy"] == pytest.approx(
        exact["metrics"]["CTV"]["D90_gy"], rel=1e-4
    )
