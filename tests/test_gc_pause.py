"""The cyclic garbage collector is paused while ``iortopt run`` plans, and only then."""

from __future__ import annotations

import gc

import pytest
from typer.testing import CliRunner

from iortopt.cli import main as cli_main
from iortopt.cli import watch
from iortopt.cli.main import app
from iortopt.compute.gc_pause import cyclic_gc_paused

runner = CliRunner()


def test_paused_inside_and_restored_after_even_on_error(gc_enabled):
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("plan failed")
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled(gc_enabled):
    gc.disable()
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()


def test_run_plans_with_the_collector_paused(tmp_path, monkeypatch, gc_enabled):
    seen = []
    monkeypatch.setattr(cli_main, "_plan_once", lambda *a, **k: seen.append(gc.isenabled()))
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == [False]
    assert gc.isenabled()


def test_watch_pauses_each_plan_and_collects_between_them(tmp_path, monkeypatch, gc_enabled):
    config = tmp_path / "plan.toml"
    config.write_text("[plan]\n")
    seen, collected = [], []
    saves = iter([(1, 1)])

    def wait(path, stamp):
        seen.append(("waiting", gc.isenabled()))
        try:
            return next(saves)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(
        cli_main, "_plan_once", lambda *a, **k: seen.append(("plan", gc.isenabled()))
    )
    monkeypatch.setattr(watch, "wait_for_change", wait)
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    result = runner.invoke(app, ["run", str(config), "--watch", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == [("plan", False), ("waiting", True), ("plan", False), ("waiting", True)]
    assert len(collected) == 2  # after each plan
