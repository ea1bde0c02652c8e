"""``iortopt run --watch``: the file-change wait and the replan loop (no plan computed here: the
loop's plan step is replaced, so the test checks the loop, not the physics)."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from iortopt.cli import main as cli_main
from iortopt.cli import watch
from iortopt.cli.main import app
from iortopt.errors import ConfigError

runner = CliRunner()


def test_file_stamp_missing_file_is_none(tmp_path):
    assert watch.file_stamp(tmp_path / "none.toml") is None
    path = tmp_path / "a.toml"
    path.write_text("x = 1\n")
    assert watch.file_stamp(path) == (os.stat(path).st_mtime_ns, 6)


def test_wait_for_change_returns_once_the_file_settles(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text("a = 1\n")
    stamp = watch.file_stamp(path)
    events = iter(
        [
            lambda: None,  # first look: unchanged
            lambda: path.unlink(),  # an editor replacing the file: gone for a moment
            lambda: path.write_text("a = 22\n"),  # saved ...
            lambda: path.write_text("a = 333\n"),  # ... and still being written while settling
            lambda: None,  # next look: the final content
            lambda: None,  # settled
        ]
    )
    looks = []

    def sleep(seconds):
        looks.append(seconds)
        next(events)()

    new = watch.wait_for_change(path, stamp, poll_s=0.3, settle_s=0.2, sleep=sleep)
    assert new == watch.file_stamp(path) and new[1] == len("a = 333\n")
    assert looks == [0.3, 0.3, 0.3, 0.2, 0.3, 0.2]


def test_watch_needs_a_config_file():
    result = runner.invoke(app, ["run", "--watch"])
    assert result.exit_code == 2
    assert "--watch needs a CONFIG file" in result.output


def test_watch_replans_on_each_save_and_survives_a_bad_config(tmp_path, monkeypatch):
    config = tmp_path / "plan.toml"
    config.write_text("[plan]\n")
    calls = []

    def plan_once(path, startup, **kwargs):
        calls.append(dict(startup))
        if len(calls) == 2:
            raise ConfigError(f"{path}: objectives[0].weight: expected a number")

    saves = iter([(1, 1), (2, 2)])

    def wait(path, stamp):
        try:
            return next(saves)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(cli_main, "_plan_once", plan_once)
    monkeypatch.setattr(watch, "wait_for_change", wait)
    result = runner.invoke(app, ["run", str(config), "--watch", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 3  # the first plan and one per save, the bad one included
    assert calls[0]["jax_import_s"] is not None
    assert all(v is None for c in calls[1:] for v in c.values())  # start-up paid once
    assert "expected a number" in result.output
    assert result.output.count("Ctrl-C") == 3  # "watching ... (Ctrl-C stops)" after each plan
    assert "stopped watching" in result.output


def test_run_help_lists_watch():
    assert "--watch" in runner.invoke(app, ["run", "--help"]).output
