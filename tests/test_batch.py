"""Batch planning: manifest expansion and stable ids, a Dask batch with failing jobs isolated,
resume after an interruption, job-index (SLURM array) mode, the job script, the results table."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from iortopt import batch as batch_mod
from iortopt.batch import (
    ManifestError,
    StorePaths,
    check_finite,
    error_kind,
    init_store,
    load_manifest,
    read_status,
    render_job_script,
    run_batch,
    set_path,
    sweep_points,
)
from iortopt.cli import app
from iortopt.errors import IortoptError

runner = CliRunner()

# the built-in flap case made small: a job takes a few seconds on a CPU
TINY_SET = """
[batch.set]
"case.flap.spacing_mm" = 4.0
"case.flap.supersampling" = 2
"case.flap.n_catheters" = 4
"optimizer.max_iterations" = 5
"""

BATCH_TOML = (
    """
[batch]
name = "tiny"
compilation_cache = false     # in-process workers: keep JAX's process-wide cache untouched

[cluster]
processes = false             # workers in this process (threads): fast to start in a test
workers = 1
"""
    + TINY_SET
    + """
[[job]]
name = "rx9"
set = {"prescription.dose_gy" = 9.0}

[[job]]
name = "rx10"

[[job]]
name = "bad_structure"        # fails when the plan is prepared: the case has no such structure
set = {"prescription.structure" = "PTV_missing"}

[[job]]
name = "bad_value"            # fails validation up front
set = {"prescription.dose_gy" = -1.0}
"""
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def job_named(batch, name):
    return next(j for j in batch.jobs if j.name == name)


# --------------------------------------------------------------------------- manifests


def test_sweep_crossed_with_jobs_gives_stable_ids_and_overrides(tmp_path):
    text = (
        '[batch]\nname = "s"\n'
        + TINY_SET
        + """
[[job]]
name = "narrow"
set = {"case.flap.catheter_spacing_mm" = 8.0}
[[job]]
name = "wide"
set = {case = {flap = {catheter_spacing_mm = 12.0}}}   # nested tables = dotted keys

[sweep]
"objectives.5.weight" = [1.0, 100.0]
rx = [{label = "8Gy", "prescription.dose_gy" = 8.0, "goals.0.value" = 8.0},
      {label = "10Gy", "prescription.dose_gy" = 10.0, "goals.0.value" = 10.0}]
"""
    )
    manifest = write(tmp_path / "m.toml", text)
    batch = load_manifest(manifest)
    assert [j.name for j in batch.jobs] == [
        f"{job}.weight={w},rx={rx}"
        for job in ("narrow", "wide")
        for w in ("1", "100")
        for rx in ("8Gy", "10Gy")
    ]
    assert [j.index for j in batch.jobs] == list(range(8))
    assert all(j.error is None for j in batch.jobs)
    job = job_named(batch, "wide.weight=100,rx=8Gy")
    assert job.doc["case"]["flap"]["catheter_spacing_mm"] == 12.0
    assert job.doc["case"]["flap"]["spacing_mm"] == 4.0  # batch.set applies to every job
    assert job.doc["objectives"][5]["weight"] == 100.0
    assert job.doc["objectives"][5]["structure"] == "bowel"  # the rest of the entry is kept
    assert job.doc["prescription"]["dose_gy"] == 8.0 and job.doc["goals"][0]["value"] == 8.0
    assert job.overrides["case.flap.catheter_spacing_mm"] == 12.0
    # the same manifest gives the same ids; ids are path-safe and carry the readable name
    assert load_manifest(manifest).job_ids == batch.job_ids
    assert len(set(batch.job_ids)) == 8
    assert job.job_id.startswith("wide.weight=100_rx=8Gy-")
    # a changed value changes only that job's id
    changed = load_manifest(write(tmp_path / "m2.toml", text.replace("12.0", "13.0")))
    assert [a == b for a, b in zip(batch.job_ids, changed.job_ids, strict=True)] == [True] * 4 + [
        False
    ] * 4


def test_shipped_example_manifest_is_valid():
    example = Path(__file__).resolve().parents[1] / "configs" / "batch" / "sweep_example.toml"
    batch = load_manifest(example)
    assert len(batch.jobs) == 12 and all(j.error is None for j in batch.jobs)
    assert batch.cluster.kind == "local" and batch.settings.compilation_cache


def test_invalid_jobs_are_marked_not_fatal(tmp_path):
    batch = load_manifest(write(tmp_path / "m.toml", BATCH_TOML))
    assert [j.name for j in batch.jobs] == ["rx9", "rx10", "bad_structure", "bad_value"]
    bad = job_named(batch, "bad_value")
    assert "prescription.dose_gy" in bad.error and "bad_value" in bad.error
    # a structure name is only checked against the case when the plan is prepared
    assert job_named(batch, "bad_structure").error is None
    indexed = load_manifest(
        write(tmp_path / "i.toml", '[[job]]\nname = "x"\nset = {"objectives.99.weight" = 1.0}\n')
    )
    assert "objectives.99" in indexed.jobs[0].error
    # a modality whose needs the case lacks is refused when the manifest is expanded
    other = load_manifest(
        write(tmp_path / "e.toml", '[[job]]\nname = "e"\nset = {"plan.modality" = "electron"}\n')
    )
    assert 'plan.modality "electron" needs a cone pose' in other.jobs[0].error
    assert "job 'e'" in other.jobs[0].error


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[batch]\nprecison = "float64"\n', "batch.precison"),
        ('[batch]\nprecision = "float16"\n', "batch.precision"),
        ('[sweep]\n"prescription.dose_gy" = 10.0\n', "sweep.prescription.dose_gy"),
        ('[batch]\nbase = "missing.toml"\n', "batch.base"),
        ('[[job]]\nname = "a"\n[[job]]\nname = "a"\n', "'a' appears twice"),
        ("[[job]]\nset = {}\n", "job[0].name"),
        ('[[job]]\nname = "a b"\n[[job]]\nname = "a/b"\n', "the same config and id"),
        ('[cluster]\nkind = "lsf"\n', "cluster.kind"),
        ("[batch\n", "not valid TOML"),
    ],
)
def test_manifest_errors_name_file_and_field(tmp_path, text, expected):
    manifest = write(tmp_path / "bad.toml", text)
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    assert str(manifest) in str(info.value) and expected in str(info.value)
    res = runner.invoke(app, ["batch", str(manifest), "--out", str(tmp_path / "store")])
    assert res.exit_code == 2 and expected in res.output
    assert not (tmp_path / "store").exists()


def test_set_path_and_sweep_points():
    doc = {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}
    set_path(doc, "a.c.d", 5)
    set_path(doc, "l.1.x", 7)
    assert doc == {"a": {"b": 1, "c": {"d": 5}}, "l": [{"x": 1}, {"x": 7}]}
    for bad in ("l.2.x", "l.x", "a.b.c", "a..b"):
        with pytest.raises(ValueError):
            set_path(doc, bad, 0)
    points = sweep_points({"p.dose_gy": [8.0, 10.5], "q.dose_gy": [True]})
    assert points == [
        ("p.dose_gy=8,q.dose_gy=true", {"p.dose_gy": 8.0, "q.dose_gy": True}),
        ("p.dose_gy=10.5,q.dose_gy=true", {"p.dose_gy": 10.5, "q.dose_gy": True}),
    ]


def test_list_prints_ids_and_array_range(tmp_path):
    manifest = write(tmp_path / "m.toml", BATCH_TOML)
    res = runner.invoke(app, ["batch", str(manifest), "--list"], env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output  # the bad_value job's config is invalid
    for job_id in load_manifest(manifest).job_ids:
        assert job_id in res.output
    assert "--array=0-3" in res.output and "invalid" in res.output
    bad = job_named(load_manifest(manifest), "bad_value")
    assert f"job 3 {bad.job_id}: job 'bad_value'" in res.output
    assert "prescription.dose_gy" in res.output


# --------------------------------------------------------------------------- a Dask batch


@pytest.fixture(scope="module")
def finished_batch(tmp_path_factory):
    """The 4-job batch run once through the CLI on an in-process Dask cluster."""
    folder = tmp_path_factory.mktemp("batch")
    manifest = write(folder / "tiny.toml", BATCH_TOML)
    store = folder / "store"
    res = runner.invoke(app, ["batch", str(manifest), "--out", str(store), "--quiet"])
    return manifest, store, res


def test_failing_jobs_are_isolated_and_recorded(finished_batch):
    manifest, store, res = finished_batch
    assert res.exit_code == 1, res.output  # 1: some job failed
    assert "2 done now" in res.output and "2 failed" in res.output
    batch = load_manifest(manifest)
    paths = StorePaths(store)
    records = {j.name: read_status(paths, j.job_id) for j in batch.jobs}
    assert records["rx9"]["status"] == records["rx10"]["status"] == "done"
    runtime = records["bad_structure"]
    assert runtime["status"] == "failed" and runtime["error_type"] == "ConfigError"
    assert "PTV_missing" in runtime["error"] and runtime["error_kind"] == "input"
    assert "Traceback" in runtime["traceback"]
    upfront = records["bad_value"]
    assert upfront["status"] == "failed" and "prescription.dose_gy" in upfront["error"]
    # one store: root metadata, one group per done job, nothing for the failed ones
    root = zarr.open_group(str(paths.zarr), mode="r")
    meta = root.attrs["batch"]
    assert root.attrs["iortopt"]["kind"] == "batch" and meta["name"] == "tiny"
    assert [j["job_id"] for j in meta["jobs"]] == batch.job_ids
    assert "PTV_missing" in meta["manifest_text"]
    done_ids = {job_named(batch, n).job_id for n in ("rx9", "rx10")}
    assert set(root["jobs"].keys()) == done_ids
    group = root["jobs"][job_named(batch, "rx9").job_id]
    assert group.attrs["batch_job"]["name"] == "rx9"
    assert group.attrs["config"]["prescription"]["dose_gy"] == 9.0
    assert group["dose_gy"].shape == tuple(group["dose_gy"].attrs["grid"]["shape_zyx"])
    for job_id in done_ids:
        assert sorted(p.name for p in paths.files(job_id).iterdir()) == [
            "dose_slices.png",
            "dvh.png",
            "hot_spot_slices.png",
            "report.html",
            "summary.json",
        ]
    assert not any((store / ".scratch").iterdir())


def test_results_table_and_batch_summary(finished_batch, monkeypatch):
    from iortopt.cli import batch_commands

    # the console's width was fixed when the module was imported (80 columns under CliRunner):
    # wide enough here that no job name is folded, whatever the length of the store's path
    monkeypatch.setattr(batch_commands.console, "width", 200)
    _, store, _ = finished_batch
    rows = list(csv.DictReader((store / "results.csv").open()))
    assert [r["name"] for r in rows] == ["rx9", "rx10", "bad_structure", "bad_value"]
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed"]
    rx9 = rows[0]
    assert rx9["set:prescription.dose_gy"] == "9.0" and rx9["prescription_gy"] == "9.0"
    assert float(rx9["target_D90_gy"]) > 0 and rx9["CTV.D90_gy.met"] in ("true", "false")
    assert int(rx9["iterations"]) <= 5 and float(rx9["wall_s"]) > 0
    assert "PTV_missing" in rows[2]["error"] and rows[2]["target_D90_gy"] == ""
    # the table is rebuilt from the job records on demand
    (store / "results.csv").unlink()
    res = runner.invoke(app, ["batch-summary", str(store)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "2 done, 2 failed" in res.output and "bad_structure" in res.output
    assert len(list(csv.DictReader((store / "results.csv").open()))) == 4
    other = runner.invoke(app, ["batch-summary", str(store / "status")])
    assert other.exit_code == 2 and "not an iortopt batch store" in " ".join(other.output.split())


def test_batch_index_links_every_done_jobs_report(finished_batch):
    manifest, store, _ = finished_batch
    batch = load_manifest(manifest)
    (store / "index.html").unlink()
    assert runner.invoke(app, ["batch-summary", str(store)]).exit_code == 0  # rebuilds it
    html = (store / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', html)
    done = {job_named(batch, n).job_id: n for n in ("rx9", "rx10")}
    assert sorted(links) == sorted((f"files/{i}/report.html", n) for i, n in done.items())
    for target, _ in links:
        assert (store / target).is_file()
    assert "bad_structure" in html and "PTV_missing" in html  # failed jobs: rows, no link
    # a job's report rebuilt from its files folder reads the job's group in batch.zarr
    files = store / "files" / next(iter(done))
    before = (files / "report.html").read_text(encoding="utf-8")
    assert runner.invoke(app, ["report", str(files)]).exit_code == 0
    assert (files / "report.html").read_text(encoding="utf-8") == before
    assert "catheter 1" in before  # the dwell table, from the job's plan store
    # a job has no TOML file: its resolved config is shown as canonical JSON, with that hash
    source = json.loads((files / "summary.json").read_text())["config_source"]
    assert source["format"] == "json" and source["origin"] == f"job {done[files.name]!r}"
    assert json.loads(source["text"])["prescription"]["dose_gy"] in (9.0, 10.0)
    assert source["sha256"] == hashlib.sha256(source["text"].encode()).hexdigest()


def test_resume_redoes_only_unfinished_jobs(finished_batch, tmp_path):
    manifest, original, _ = finished_batch
    store = tmp_path / "store"
    shutil.copytree(original, store)
    batch = load_manifest(manifest)
    paths = StorePaths(store)
    rx9, rx10 = job_named(batch, "rx9").job_id, job_named(batch, "rx10").job_id
    # rx9 was interrupted while being written: no done marker, a partial group left behind
    interrupted = {**read_status(paths, rx9), "status": "running"}
    paths.status(rx9).write_text(json.dumps(interrupted))
    (paths.group(rx9) / "partial-chunk").write_bytes(b"\0")
    untouched = paths.status(rx10).read_bytes()
    group_mtime = paths.group(rx10).stat().st_mtime_ns

    outcome = run_batch(batch, store, processes=False, workers=1)
    assert (outcome.done, outcome.skipped, outcome.failed) == (1, 1, 2)
    assert paths.status(rx10).read_bytes() == untouched
    assert paths.group(rx10).stat().st_mtime_ns == group_mtime
    redone = read_status(paths, rx9)
    assert redone["status"] == "done" and redone["attempt"] == 2
    assert not (paths.group(rx9) / "partial-chunk").exists()
    assert zarr.open_group(str(paths.group(rx9)), mode="r").attrs["batch_job"]["name"] == "rx9"
    assert read_status(paths, job_named(batch, "bad_structure").job_id)["attempt"] == 2


def test_a_dying_task_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    manifest = write(tmp_path / "m.toml", BATCH_TOML)
    batch = load_manifest(manifest)
    victim = batch.jobs[1].job_id

    def fake_run_job(job, store, settings):
        if job["job_id"] == victim:
            raise RuntimeError("worker process died")
        return {"job_id": job["job_id"], "name": job["name"], "status": "done"}

    monkeypatch.setattr(batch_mod, "run_job", fake_run_job)
    outcome = run_batch(batch, tmp_path / "store", processes=False, workers=1)
    assert outcome.done == 2 and outcome.failed == 2
    record = read_status(StorePaths(tmp_path / "store"), victim)
    assert record["status"] == "failed" and record["error_type"] == "RuntimeError"
    assert "worker process died" in record["error"]


def test_a_job_plans_with_the_collector_paused_and_collects_after(
    tmp_path, monkeypatch, gc_enabled
):
    import gc

    batch = load_manifest(write(tmp_path / "m.toml", BATCH_TOML))
    paths = init_store(tmp_path / "store", batch)
    seen, collected = [], []
    monkeypatch.setattr(
        batch_mod, "_plan_into_store", lambda *a: seen.append(gc.isenabled()) or {"D90_gy": 1.0}
    )
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(gc.isenabled()) or 0)
    record = batch_mod.run_job(batch.jobs[0].spec(), str(paths.root), {})
    assert record["status"] == "done", record
    assert seen == [False] and collected == [True]


# --------------------------------------------------------------------------- job-index mode


def test_job_index_mode_runs_exactly_one_job(tmp_path):
    text = BATCH_TOML.replace("compilation_cache = false", "compilation_cache = true")
    manifest = write(tmp_path / "m.toml", text)
    store = tmp_path / "store"
    batch = load_manifest(manifest)
    # a separate process, as under `sbatch --array`, with the compilation cache on
    cmd = [sys.executable, "-m", "iortopt.cli", "batch", str(manifest), "--out", str(store)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([*cmd, "--job-index", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = StorePaths(store)
    assert [p.name for p in (store / "status").iterdir()] == [f"{batch.jobs[1].job_id}.json"]
    assert read_status(paths, batch.jobs[1].job_id)["status"] == "done"
    root = zarr.open_group(str(paths.zarr), mode="r")
    assert list(root["jobs"].keys()) == [batch.jobs[1].job_id]
    assert root.attrs["batch"]["jobs"][1]["name"] == "rx10"
    assert any((store / ".jax_cache").iterdir())  # compiled programs were cached

    again = runner.invoke(app, ["batch", str(manifest), "--out", str(store), "--job-index", "1"])
    assert again.exit_code == 0 and "already done" in again.output
    invalid = runner.invoke(app, ["batch", str(manifest), "--out", str(store), "--job-index", "3"])
    assert invalid.exit_code == 1 and "prescription.dose_gy" in invalid.output
    assert read_status(paths, batch.jobs[3].job_id)["status"] == "failed"
    out_of_range = runner.invoke(
        app, ["batch", str(manifest), "--out", str(store), "--job-index", "4"]
    )
    assert out_of_range.exit_code == 2 and "0..3" in out_of_range.output


def test_store_creation_is_race_safe_and_checks_the_manifest(tmp_path):
    batch = load_manifest(write(tmp_path / "m.toml", BATCH_TOML))
    store = tmp_path / "store"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: init_store(store, batch, coordinator=False), range(16)))
    meta = json.loads((store / "batch.zarr" / "zarr.json").read_text())["attributes"]["batch"]
    assert [j["job_id"] for j in meta["jobs"]] == batch.job_ids
    assert not list((store / ".scratch").iterdir())
    other = load_manifest(write(tmp_path / "o.toml", BATCH_TOML.replace("9.0", "9.5")))
    with pytest.raises(ManifestError, match="another version of the manifest"):
        init_store(store, other, coordinator=False)
    init_store(store, other, coordinator=True)  # the coordinator rewrites the job list
    meta = json.loads((store / "batch.zarr" / "zarr.json").read_text())["attributes"]["batch"]
    assert [j["job_id"] for j in meta["jobs"]] == other.job_ids
    f64 = load_manifest(
        write(
            tmp_path / "d.toml",
            BATCH_TOML.replace('name = "tiny"', 'name = "tiny"\nprecision = "float64"'),
        )
    )
    with pytest.raises(ManifestError, match="float32"):
        init_store(store, f64, coordinator=True)


# --------------------------------------------------------------------------- clusters


def test_slurm_and_pbs_job_scripts_render_without_a_scheduler(tmp_path):
    cluster = """
[cluster]
kind = "slurm"
cores = 4
memory = "16GB"
walltime = "02:30:00"
queue = "short"
account = "iort-proj"
job_extra_directives = ["--gres=gpu:1"]
job_script_prologue = ["module load cuda"]
"""
    batch = load_manifest(write(tmp_path / "s.toml", cluster))
    script = render_job_script(batch)
    for line in (
        "#SBATCH -p short",
        "#SBATCH -A iort-proj",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH -t 02:30:00",
        "#SBATCH --gres=gpu:1",
        "module load cuda",
    ):
        assert line in script
    assert "#SBATCH --mem=15G" in script  # 16 GB = 14.9 GiB, rounded as dask-jobqueue does
    assert "--resources plans=1" in script and "distributed.cli.dask_worker" in script
    res = runner.invoke(app, ["batch", str(tmp_path / "s.toml"), "--job-script"])
    assert res.exit_code == 0 and "#SBATCH -t 02:30:00" in res.output

    pbs = load_manifest(write(tmp_path / "p.toml", cluster.replace('"slurm"', '"pbs"')))
    script = render_job_script(pbs)
    assert "#PBS -q short" in script and "#PBS -l walltime=02:30:00" in script
    assert "ncpus=4" in script


def test_gpu_workers_each_see_one_gpu(monkeypatch):
    specs = batch_mod.gpu_worker_specs(["0", "1", "3"])
    envs = [spec["options"]["env"]["CUDA_VISIBLE_DEVICES"] for spec in specs.values()]
    assert envs == ["0", "1", "3"]
    assert all(spec["options"]["nthreads"] == 1 for spec in specs.values())
    # the worker processes really start with their own CUDA_VISIBLE_DEVICES (no GPU needed)
    import logging

    from distributed import Client, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with (
        SpecCluster(
            workers=batch_mod.gpu_worker_specs(["0", "1"]),
            scheduler=scheduler,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert batch_mod.visible_gpu_ids() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert batch_mod.visible_gpu_ids() == []


# --------------------------------------------------------------------------- job records


def test_non_finite_results_and_error_kinds():
    good = {"objective": 1.0, "prescription_structure": "CTV", "metrics": {"CTV": {"D90_gy": 10}}}
    check_finite(good)
    with pytest.raises(FloatingPointError, match="objective"):
        check_finite({**good, "objective": float("nan")})
    with pytest.raises(FloatingPointError, match="CTV D90"):
        check_finite({**good, "metrics": {"CTV": {"D90_gy": None}}})
    assert error_kind(IortoptError("x")) == "input"
    assert error_kind(FloatingPointError("nan")) == "numerical"
    assert error_kind(MemoryError()) == "resources"
    assert error_kind(RuntimeError("RESOURCE_EXHAUSTED: out of memory")) == "resources"
    assert error_kind(ValueError("x")) == "error"
