"""Replanning in memory (ReplanSession): a change is an argument of the compiled optimiser, not a
constant baked into it, so a replan equals a fresh plan made with the changed config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.compute.compile_cache import enable_compile_cache
from iortopt.config import parse_config
from iortopt.errors import ConfigError
from iortopt.optimisation import optax_loop
from iortopt.pipeline import replan_session

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _small_flap(**objective0) -> dict:
    with (CONFIGS / "flap_default.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    doc["case"]["flap"] |= {"spacing_mm": 4.0, "supersampling": 2, "n_catheters": 4}
    doc["optimizer"] |= {"max_iterations": 25}
    doc["radiobiology"] = {}
    doc["objectives"][0] |= objective0
    return doc


@pytest.fixture(scope="module")
def session():
    enable_compile_cache()  # the fresh session below then loads the programs this one compiled
    return replan_session(parse_config(_small_flap()), jnp.float64)


def test_a_changed_dose_replans_as_a_fresh_plan_of_the_changed_config(session):
    first = session.optimise()
    assert all(np.isfinite(first.times_s)) and first.iterations > 1
    old_dose = parse_config(_small_flap()).objectives[0].dose_gy
    session.set_objective(0, dose_gy=old_dose * 1.1)
    changed = session.optimise(warm_start=False)
    fresh = replan_session(parse_config(_small_flap(dose_gy=old_dose * 1.1)), jnp.float64)
    reference = fresh.optimise()
    np.testing.assert_allclose(changed.times_s, reference.times_s, rtol=1e-9, atol=1e-9)
    assert changed.objective == pytest.approx(reference.objective, rel=1e-9)
    assert not np.allclose(changed.times_s, first.times_s, rtol=1e-3)  # the change mattered
    assert session.config().objectives[0].dose_gy == pytest.approx(old_dose * 1.1)
    session.set_objective(0, dose_gy=old_dose)


def test_replans_reuse_one_compiled_step(session):
    session.optimise(max_iterations=5)
    step = optax_loop._compiled_step(session._f, session._cfg.optimizer.method, 0.05)[1]
    before = step._cache_size()
    session.set_objective(0, weight=2.0)
    session.set_goal(0, 9.0)
    session.set_active_catheters([0, 1])
    session.optimise(max_iterations=5)
    assert step._cache_size() == before  # no new trace: the changes were arguments
    session.set_objective(0, weight=1.0)
    session.set_active(np.ones(len(session._prepared.dwells), bool))


def test_inactive_dwells_get_no_time_and_goals_follow_their_limits(session):
    catheter = session._prepared.dwells.catheter
    session.set_active_catheters([0, 1])
    masked = session.optimise()
    assert np.all(masked.times_s[~np.isin(catheter, [0, 1])] == 0.0)
    assert masked.times_s[np.isin(catheter, [0, 1])].max() > 0
    value = masked.goals[0]["value"]
    session.set_goal(0, value - 1.0)
    met = session.optimise(max_iterations=2).goals[0]
    assert met["limit"] == pytest.approx(value - 1.0)
    assert met["met"] == (met["value"] >= met["limit"] if met["op"] == ">=" else False)
    session.set_active(np.ones(len(catheter), bool))


def test_a_config_handed_out_keeps_its_goals_and_objectives(session):
    before = session.config()
    limit, dose = before.goals[0].value, before.objectives[0].dose_gy
    session.set_goal(0, limit + 0.5)
    session.set_objective(0, dose_gy=dose + 1.0)
    assert before.goals[0].value == limit and before.objectives[0].dose_gy == dose
    assert session.config().goals[0].value == limit + 0.5
    session.set_goal(0, limit)
    session.set_objective(0, dose_gy=dose)


def test_bad_changes_name_the_field(session):
    with pytest.raises(ConfigError, match=r"objectives\[99\]"):
        session.set_objective(99, weight=1.0)
    with pytest.raises(ConfigError, match=r"goals\[99\]"):
        session.set_goal(99, 1.0)
    with pytest.raises(ConfigError, match="at least one dwell"):
        session.set_active(np.zeros(len(session._prepared.dwells), bool))
    with pytest.raises(ConfigError, match="expected"):
        session.set_active(np.ones(3, bool))
    with pytest.raises(ConfigError, match="no replanning session"):
        replan_session(CONFIGS / "breast_xray.toml")
