"""Outputs never destroy what iortopt did not create; bad targets are refused before any work;
one run at a time per output; killed runs' temporaries cleaned; bad checkpoints never fatal."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from iortopt.cli.main import CURRENT_RUN, app, interrupted_message
from iortopt.config import builtin_config_text
from iortopt.errors import ConfigError
from iortopt.io import output_dir as od
from iortopt.io.store import atomic_path
from iortopt.modalities.hdr_flap import shields as hdr_shields
from iortopt.modalities.hdr_flap.pipeline import checkpoint_path_for, resume_times
from iortopt.optimisation.optax_loop import save_checkpoint

runner = CliRunner()
PLAN_OUTPUTS = [
    "dose_slices.png", "dvh.png", "hot_spot_slices.png", "plan.zarr", "report.html", "summary.json"
]  # fmt: skip


def small_config_text(max_iterations: int = 5, tolerance: str = "1e-6") -> str:
    text = builtin_config_text()
    text = text.replace("spacing_mm = 2.0", "spacing_mm = 4.0\nsupersampling = 2", 1)
    text = text.replace("n_catheters = 8", "n_catheters = 4", 1)
    text = text.replace("max_iterations = 300", f"max_iterations = {max_iterations}", 1)
    return text.replace("tolerance = 1e-6", f"tolerance = {tolerance}", 1)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(small_config_text())
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a run gets as far as preparing (building the case, optimising)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run started working before refusing its output")

    monkeypatch.setattr("iortopt.pipeline.prepare", refuse)


def run(*args):
    t0 = time.perf_counter()
    res = runner.invoke(app, ["run", *map(str, args), "--quiet"])
    return res, time.perf_counter() - t0


def flat(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def listing(folder):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def assert_complete_output(out):
    names = {p.name for p in out.iterdir()}
    assert set(PLAN_OUTPUTS) <= names and od.MARKER_NAME in names
    assert json.loads((out / od.MARKER_NAME).read_text())["plan"] == "flap_default"
    assert json.loads((out / "summary.json").read_text())["plan"] == "flap_default"


def test_foreign_folder_is_refused_and_untouched(tmp_path, config, no_work):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "plan.toml").write_text(config.read_text())
    before = listing(out)
    res, elapsed = run(config, "--out", out)
    assert res.exit_code == 2, res.output
    text = flat(res)
    assert str(out) in text and "--overwrite" in text and "notes.txt" in text
    assert listing(out) == before
    assert elapsed < 5


def test_another_plans_output_is_refused(tmp_path, config, no_work):
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / od.MARKER_NAME).write_text(json.dumps({"plan": "someone_else"}))
    res, _ = run(config, "--out", out)
    assert res.exit_code == 2 and "someone_else" in flat(res)


def test_overwrite_keeps_foreign_files_and_reruns_need_no_flag(tmp_path, config):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "dicom").mkdir()  # an iortopt entry this plan does not produce: stale, removed
    res, _ = run(config, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "my notes"
    assert_complete_output(out)
    assert not (out / "dicom").exists()
    # its own output now (the marker), foreign file and all: no --overwrite needed
    again, _ = run(config, "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "my notes"
    assert_complete_output(out)
    assert not list(tmp_path.glob(".results.*"))  # no lock or temporaries left


def test_regular_file_is_never_replaced_by_a_folder(tmp_path, config, no_work):
    out = tmp_path / "results"
    out.write_text("precious")
    res, _ = run(config, "--out", out)
    assert res.exit_code == 2 and "is a file" in flat(res)
    assert out.read_text() == "precious"
    res, _ = run(config, "--out", out, "--overwrite")
    assert res.exit_code == 2 and out.read_text() == "precious"


@pytest.mark.parametrize(
    "target, expected",
    [
        (".", "current folder"),
        ("", "current folder"),
        ("..", "current folder"),
        ("parent_file/out", "is a file, not a folder"),
        ("x" * 300, "bytes"),
        ("y" * 240, "at most"),  # fits NAME_MAX, but its temporary names would not
    ],
    ids=["dot", "empty", "dotdot", "parent-is-file", "name-300", "name-240"],
)
def test_impossible_targets_fail_fast_before_work(tmp_path, monkeypatch, config, no_work,
                                                  target, expected):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parent_file").write_text("a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    res, elapsed = run(config, "--out", target)
    assert res.exit_code == 2, res.output
    assert expected in flat(res)
    assert "Traceback" not in flat(res)
    assert elapsed < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_default_output_is_checked_too(tmp_path, monkeypatch, config, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iortopt-out").mkdir()
    (tmp_path / "iortopt-out" / "flap_default").write_text("a file")
    res, _ = run(config)
    assert res.exit_code == 2 and "flap_default" in flat(res)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_refused(tmp_path, config, no_work):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        res, _ = run(config, "--out", parent / "out")
    finally:
        parent.chmod(0o700)
    assert res.exit_code == 2 and "permission" in flat(res)


def test_held_lock_makes_a_second_run_fail_fast(tmp_path, config, no_work):
    out = tmp_path / "results"
    with od.output_lock(out):
        res, elapsed = run(config, "--out", out)
        assert res.exit_code == 2, res.output
        text = flat(res)
        assert "another iortopt run" in text and str(out) in text and f"pid {os.getpid()}" in text
        assert elapsed < 5
        with pytest.raises(ConfigError, match="another iortopt run"):
            with od.output_lock(out):
                pass
    assert not od.lock_path_for(out).exists()  # released and removed
    with od.output_lock(out):  # and can be taken again
        pass


def test_lock_held_by_another_process(tmp_path):
    out = tmp_path / "results"
    code = (
        "import sys, time; from iortopt.io.output_dir import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            with od.output_lock(out):
                pass
    finally:
        proc.kill()
        proc.wait()
    with od.output_lock(out):  # a killed holder's lock is free (the kernel drops it)
        pass


def test_rerun_into_own_output_works_and_cleans_killed_runs_temporaries(tmp_path, config):
    out = tmp_path / "results"
    first, _ = run(config, "--out", out)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == [od.MARKER_NAME, *PLAN_OUTPUTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "small.toml"]
    stale = [
        tmp_path / ".results.tmp-0123abcd",
        tmp_path / ".results.old-89abcdef",
        tmp_path / ".results.checkpoint.npz.tmp.npz",
        out / ".plan.zarr.tmp-00ff00ff",
        out / ".summary.json.tmp",
    ]
    kept = [tmp_path / ".results.tmp-mine", tmp_path / ".other.tmp-0123abcd", out / ".mine"]
    for path in stale[:2] + [stale[3]]:
        path.mkdir()
        (path / "x").write_text("half written")
    for path in [stale[2], stale[4], *kept]:
        path.write_text("x")
    again, _ = run(config, "--out", out)
    assert again.exit_code == 0, again.output
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert_complete_output(out)


def test_stale_cleanup_spares_other_outputs(tmp_path):
    out = tmp_path / "a"
    other = tmp_path / ".ab.tmp-0123abcd"
    other.mkdir()
    assert od.clean_stale_temporaries(out) == []
    assert other.exists()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _garbage(path, n, key):
    return {
        "random-bytes": lambda: path.write_bytes(os.urandom(2000)),
        "empty": lambda: path.write_bytes(b""),
        "folder": lambda: path.mkdir(),
        "wrong-shape": lambda: save_checkpoint(path, np.full(n + 3, 3.0), 25, key),
        "2d-times": lambda: save_checkpoint(path, np.full((n, 1), 3.0), 25, key),
        "nan-times": lambda: save_checkpoint(path, np.full(n, np.nan), 25, key),
        "negative-times": lambda: save_checkpoint(path, np.full(n, -1.0), 25, key),
        "times-over-max": lambda: save_checkpoint(path, np.full(n, 1e6), 25, key),
        "negative-iteration": lambda: save_checkpoint(path, np.full(n, 3.0), -1, key),
        "missing-key": lambda: np.savez(path, times_s=np.full(n, 3.0), iteration=25),
        "string-times": lambda: np.savez(path, times_s=np.array(["a"] * n), iteration=25, key=key),
        "pickled-object": lambda: np.savez(
            path, times_s=np.array([{"x": 1}] * n, dtype=object), iteration=25, key=key
        ),
        "plain-pickle": lambda: path.write_bytes(pickle.dumps({"times_s": [3.0] * n})),
    }


GARBAGE = [
    "random-bytes", "empty", "folder", "wrong-shape", "2d-times", "nan-times", "negative-times",
    "times-over-max", "negative-iteration", "missing-key", "string-times", "pickled-object",
    "plain-pickle",
]  # fmt: skip


@pytest.mark.parametrize("kind", GARBAGE)
def test_bad_checkpoint_is_ignored_with_a_warning(tmp_path, capsys, kind):
    n, key, notes = 12, "the-key", []
    path = tmp_path / ".plan.checkpoint.npz"
    _garbage(path, n, key)[kind]()
    assert resume_times(path, key, n, 60.0, notes) is None
    warning = capsys.readouterr().err
    assert "warning: ignored the checkpoint" in warning and str(path) in warning
    assert len(notes) == 1 and "ignored the checkpoint" in notes[0]


def test_good_checkpoint_resumes_and_another_configs_is_ignored(tmp_path, capsys):
    path = tmp_path / ".plan.checkpoint.npz"
    save_checkpoint(path, np.full(12, 3.0), 25, "the-key")
    notes = []
    assert np.array_equal(resume_times(path, "the-key", 12, 60.0, notes), np.full(12, 3.0))
    assert notes == ["resumed from checkpoint at iteration 25"]
    assert resume_times(path, "other", 12, 60.0, notes) is None
    assert capsys.readouterr().err == ""


def test_run_over_a_folder_checkpoint_succeeds(tmp_path, config, capsys):
    """A folder where the checkpoint goes: ignored, never written over, never deleted."""
    out = tmp_path / "plan"
    checkpoint_path_for(out).mkdir()
    res, _ = run(config, "--out", out)
    assert res.exit_code == 0, res.output
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("ignored the checkpoint" in n for n in notes)
    assert checkpoint_path_for(out).is_dir()
    assert_complete_output(out)


def test_run_over_a_garbage_checkpoint_succeeds(tmp_path, config):
    out = tmp_path / "plan"
    checkpoint_path_for(out).write_bytes(b"PK\x03\x04 not really a zip")
    res, _ = run(config, "--out", out)
    assert res.exit_code == 0, res.output
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("ignored the checkpoint" in n for n in notes)
    assert not checkpoint_path_for(out).exists()  # replaced by the run's own, then removed


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"size_index": np.array([5])}, "outside the catalogues"),
        ({"size_index": np.array([0.5])}, "expected 1 integers"),
        ({"u_times": np.full(4, np.nan)}, "NaN"),
        ({"u_pose": np.zeros(7)}, "u_pose"),
        ({"iteration": np.array(-3)}, "iteration"),
        ({"u_times": np.array([{}] * 4, dtype=object)}, "not a readable"),
    ],
)
def test_bad_shield_checkpoint_is_ignored(tmp_path, capsys, arrays, reason):
    path = tmp_path / "s.npz"
    u_like = (jnp.zeros(4), jnp.zeros((1, 3)))
    good = {
        "size_index": np.array([1]),
        "u_times": np.ones(4),
        "u_pose": np.zeros((1, 3)),
        "iteration": np.array(25),
        "key": np.array("k"),
    }
    np.savez(path, **good)
    state, warning = hdr_shields._load_state(path, "k", u_like, [2])
    assert warning is None and state[0].tolist() == [1] and state[2] == 25
    np.savez(path, **(good | arrays))
    state, warning = hdr_shields._load_state(path, "k", u_like, [2])
    assert state is None and reason in warning
    assert "warning: ignored the shield checkpoint" in capsys.readouterr().err
    path.write_bytes(os.urandom(100))
    assert hdr_shields._load_state(path, "k", u_like, [2])[0] is None


# ---------------------------------------------------------------------------------------------
# Single-file and single-store writers
# ---------------------------------------------------------------------------------------------


def test_qa_refuses_a_folder_as_its_csv(tmp_path):
    out = tmp_path / "table.csv"
    out.mkdir()
    (out / "keep").write_text("x")
    res = runner.invoke(app, ["qa", "along-away", "--source", "mHDR-v2_HEBD2012", "--out", out])
    assert res.exit_code == 2 and "is a folder" in flat(res)
    assert (out / "keep").read_text() == "x"


def test_dose_refuses_a_file_or_a_foreign_folder(tmp_path):
    dwells = tmp_path / "dwells.csv"
    dwells.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,0,0,1,10\n")
    target = tmp_path / "dose.zarr"
    target.write_text("precious")
    res = runner.invoke(app, ["dose", str(dwells), "--out", str(target)])
    assert res.exit_code == 2 and "is a file" in flat(res) and target.read_text() == "precious"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_text("x")
    res = runner.invoke(app, ["dose", str(dwells), "--out", str(folder)])
    assert res.exit_code == 2 and "not a zarr store written by iortopt" in flat(res)
    assert (folder / "a.jpg").exists()


def test_init_refuses_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "case.toml").mkdir()
    res = runner.invoke(app, ["init", "case", "--force"])
    assert res.exit_code == 2 and "is a folder" in flat(res)
    assert (tmp_path / "case.toml").is_dir()


def test_atomic_path_never_swaps_a_folder_for_a_file(tmp_path):
    final = tmp_path / "thing"
    final.mkdir()
    (final / "keep").write_text("x")
    with pytest.raises(ConfigError, match="is a folder"):
        with atomic_path(final) as tmp:
            tmp.write_text("a file")
    assert (final / "keep").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


def test_publish_merge_keeps_foreign_and_marker_comes_last(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    (out / "summary.json").write_text("old")
    tmp = od.new_temp_folder(out)
    (tmp / "summary.json").write_text("new")
    (tmp / "plan.zarr").mkdir()
    od.publish_folder(tmp, out, "p", "hdr_flap")
    assert (out / "mine.txt").read_text() == "mine" and (out / "summary.json").read_text() == "new"
    assert od.read_marker(out)["plan"] == "p"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        od.MARKER_NAME, "mine.txt", "plan.zarr", "summary.json"
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------


def test_interrupted_message_names_the_checkpoint(tmp_path):
    out = tmp_path / "plan"
    CURRENT_RUN["out_dir"] = out
    try:
        assert "no checkpoint yet" in interrupted_message()
        checkpoint_path_for(out).write_bytes(b"x")
        text = interrupted_message()
    finally:
        CURRENT_RUN.clear()
    assert str(out) in text and str(checkpoint_path_for(out)) in text and "resume" in text


def test_sigint_stops_the_run_with_a_message(tmp_path):
    config = tmp_path / "long.toml"
    config.write_text(small_config_text(100000, "1e-30"))
    out = tmp_path / "plan"
    proc = subprocess.Popen(
        [sys.executable, "-m", "iortopt.cli", "run", str(config), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background of a non-interactive shell ignores SIGINT, and a
        # child that inherits the ignore never gets Python's Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ckpt = checkpoint_path_for(out)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    err = " ".join(err.split())
    assert "interrupted" in err and str(out) in err
    assert str(ckpt) in err and "resume" in err
    assert ckpt.exists() and not out.exists()
    assert not od.lock_path_for(out).exists()
    assert not list(tmp_path.glob(".plan.tmp-*"))
