"""Many plans as one batch: a manifest expands into jobs, each job is one ``iortopt run``.

    batch = load_manifest("sweep.toml")           # validates the manifest and every job's config
    outcome = run_batch(batch, "sweep-out")       # Dask: local cluster, an address, SLURM or PBS
    record = run_one(batch, "sweep-out", index)   # one job in this process (SLURM job arrays)
    rows = collect_rows("sweep-out")              # the results table, rebuilt from status files

Manifest (TOML)::

    [batch]
    name = "flap_sweep"
    base = "builtin"                  # or a plan config path, relative to the manifest
    set = {"optimizer.max_iterations" = 200}     # overrides applied to every job
    precision = "float32"             # device = "cpu" | "gpu"; compilation_cache = true

    [sweep]                           # cartesian product of the lists, in this order
    "case.flap.n_catheters" = [6, 8]
    rx = [{label = "8Gy", "prescription.dose_gy" = 8.0, "objectives.0.dose_gy" = 8.0},
          {label = "10Gy", "prescription.dose_gy" = 10.0, "objectives.0.dose_gy" = 10.0}]

    [[job]]                           # optional: named jobs (cases); crossed with [sweep]
    name = "narrow_flap"
    set = {"case.flap.n_catheters" = 6}

    [cluster]                         # optional: kind = "local" | "slurm" | "pbs", workers, ...

Override keys are dotted paths into the plan config (``"objectives.1.dose_gy"`` indexes a
list); nested tables are the same as dotted keys. A sweep list of tables is a linked axis: each
table's overrides change together (``rx`` above). Every job's id is ``<readable name>-<hash>``,
the hash of its resolved config, so the same manifest always gives the same ids in the same order.

Store layout (the folder given as ``--out``)::

    batch.zarr/                 one zarr v3 store for the whole batch
        zarr.json               root attrs (written by one process): batch name, manifest text,
                                job list, iortopt version, precision
        jobs/<job_id>/          one job's plan store (the layout of a run's plan.zarr), with
                                attrs ``batch_job`` (id, name, overrides)
    status/<job_id>.json        the job's record: running / done / failed, error, timings, metrics;
                                "done" is written last, so it marks a complete job
    files/<job_id>/             summary.json, dvh.png, dose_slices.png, report.html of the job
    results.csv                 one row per job (rebuilt from status/ by ``iortopt batch-summary``)
    index.html                  the same table, each job linking to its report.html (rebuilt with
                                results.csv)
    .scratch/<job_id>/          a running job's work folder (its optimiser checkpoint survives a
                                kill, so a resumed long job continues)
    .jax_cache/                 JAX persistent compilation cache shared by the jobs

Each job writes only its own group, status file and files folder; jobs never share a chunk. On a
rerun, jobs marked done are skipped and every other job (failed, interrupted, never started) is
cleared and run again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iortopt import __version__
from iortopt.compute.gc_pause import cyclic_gc_paused
from iortopt.errors import ConfigError, IortoptError

BUILTIN_BASE = "builtin"
ZARR_NAME = "batch.zarr"
#: Dask worker resource that limits a worker to one plan at a time (jobqueue clusters).
PLAN_RESOURCE = "plans"


class ManifestError(ConfigError):
    """A batch manifest is invalid (the message names the file and the field)."""


# --------------------------------------------------------------------------- manifest models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSection(_Model):
    name: str = Field("batch", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: str = BUILTIN_BASE
    set: dict[str, Any] = Field(default_factory=dict)
    device: Literal["cpu", "gpu"] | None = None
    precision: Literal["float32", "float64"] = "float32"
    compilation_cache: bool = True
    jax_cache_dir: str | None = None


class JobEntry(_Model):
    name: str = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)


class ClusterSection(_Model):
    """Where the jobs run. ``local``: a Dask LocalCluster on this machine (one worker per GPU
    with ``device = "gpu"``); ``slurm`` / ``pbs``: dask-jobqueue, ``jobs`` cluster jobs of one
    worker each; ``address``: an existing Dask scheduler (overrides ``kind``)."""

    kind: Literal["local", "slurm", "pbs"] = "local"
    address: str | None = None
    workers: Annotated[int, Field(ge=1)] | None = None
    processes: bool = True
    gpus: list[int] | None = None
    cores: Annotated[int, Field(ge=1)] = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    jobs: Annotated[int, Field(ge=1)] = 1
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    local_directory: str | None = None
    log_directory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ManifestModel(_Model):
    batch: BatchSection = BatchSection()
    sweep: dict[str, Any] = Field(default_factory=dict)
    job: list[JobEntry] = Field(default_factory=list)
    cluster: ClusterSection = ClusterSection()


# --------------------------------------------------------------------------- batch objects


@dataclass(frozen=True)
class Job:
    """One plan of the batch: its stable id, readable name, overrides and resolved config."""

    index: int
    job_id: str
    name: str
    overrides: dict[str, Any]
    doc: dict
    error: str | None = None  # why the resolved config is invalid; None = valid

    def spec(self) -> dict:
        """What a worker needs (plain data, cheap to send)."""
        return {
            "index": self.index,
            "job_id": self.job_id,
            "name": self.name,
            "overrides": self.overrides,
            "doc": self.doc,
        }


@dataclass(frozen=True)
class RunSettings:
    device: str | None = None
    precision: str = "float32"
    compilation_cache: bool = True
    jax_cache_dir: str | None = None

    def for_worker(self, store: Path) -> dict:
        """Plain settings for ``run_job``; the cache folder defaults to ``STORE/.jax_cache``."""
        cache = None
        if self.compilation_cache:
            cache = str(Path(self.jax_cache_dir) if self.jax_cache_dir else store / ".jax_cache")
        return {"device": self.device, "precision": self.precision, "jax_cache_dir": cache}


@dataclass(frozen=True)
class Batch:
    name: str
    description: str
    manifest_path: str
    manifest_text: str
    base: str
    jobs: tuple[Job, ...]
    settings: RunSettings
    cluster: ClusterSection

    @property
    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.jobs]


# --------------------------------------------------------------------------- manifest parsing


def _format_validation(origin: str, exc: ValidationError) -> str:
    lines = [f"{origin}: invalid batch manifest"]
    for err in exc.errors():
        where = ""
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
        given = err.get("input")
        given_text = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {where or '(top level)'}: {err['msg']}{given_text}")
    return "\n".join(lines)


def flatten_overrides(table: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``: nested tables become dotted
    paths; any non-table value (a list too) is a leaf."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_overrides(value, path))
        else:
            flat[path] = value
    return flat


def set_path(doc: dict, path: str, value: Any) -> None:
    """Set ``doc[a][b][...] = value`` for ``path = "a.b..."``; integer segments index lists.

    Missing tables on the way are created. Raises ValueError with the reason on a bad path.
    """
    parts = path.split(".")
    if any(p == "" for p in parts):
        raise ValueError("empty segment in the dotted path")
    node: Any = doc
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{where}: expected a list index 0..{len(node) - 1}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ValueError(f"{'.'.join(parts[:depth])} is a value, not a table or a list")


def _short_keys(paths: list[str]) -> dict[str, str]:
    """The shortest trailing part of each dotted path that is unique among ``paths``."""
    short = {}
    for path in paths:
        parts = path.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for p in paths if p == tail or p.endswith("." + tail)) == 1:
                short[path] = tail
                break
        else:
            short[path] = path
    return short


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _axis_steps(key: str, values: list) -> list[tuple[str, dict[str, Any]]]:
    """(name text, overrides) of each value of one sweep axis.

    A list of plain values sets the path ``key``. A list of tables is a linked axis: each table
    is a set of overrides applied together (e.g. a prescription and the objectives that follow
    it), named by its ``label`` or its position.
    """
    if not all(isinstance(v, dict) for v in values):
        return [(_value_text(v), {key: v}) for v in values]
    steps = []
    for position, table in enumerate(values):
        table = dict(table)
        label = str(table.pop("label", position))
        steps.append((label, flatten_overrides(table)))
    return steps


def sweep_points(sweep: dict[str, list]) -> list[tuple[str, dict[str, Any]]]:
    """(readable name, overrides) of every point of the cartesian product, first key slowest."""
    if not sweep:
        return [("", {})]
    keys = list(sweep)
    short = _short_keys(keys)
    axes = [[(f"{short[k]}={text}", o) for text, o in _axis_steps(k, sweep[k])] for k in keys]
    points = []
    for steps in itertools.product(*axes):
        overrides: dict[str, Any] = {}
        for _, step_overrides in steps:
            overrides.update(step_overrides)
        points.append((",".join(text for text, _ in steps), overrides))
    return points


def _canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def job_id_for(name: str, doc: dict) -> str:
    """``<name as a path-safe slug>-<10 hex of the sha256 of the resolved config>``."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_.")[:48] or "job"
    digest = hashlib.sha256(_canonical_json(doc).encode()).hexdigest()[:10]
    return f"{slug}-{digest}"


def _base_document(base: str, manifest_dir: Path, origin: str) -> tuple[dict, str]:
    """The base config document and how it is named in the store metadata."""
    from iortopt.config import builtin_config_text
    from iortopt.io.toml_file import read_toml

    if base == BUILTIN_BASE:
        import tomllib

        return tomllib.loads(builtin_config_text()), BUILTIN_BASE
    path = Path(base) if Path(base).is_absolute() else manifest_dir / base
    try:
        return read_toml(path, ConfigError), str(path)
    except ConfigError as exc:
        raise ManifestError(f"{origin}: batch.base: {exc}") from None


def _validate_job(doc: dict, name: str) -> str | None:
    from iortopt.config import config_origin, parse_config, with_origin
    from iortopt.pipeline import check_config

    try:
        cfg = parse_config(doc, f"job {name!r}")
        try:
            check_config(cfg)
        except ConfigError as exc:
            raise with_origin(exc, config_origin(cfg)) from None
    except ConfigError as exc:
        return str(exc)
    return None


def expand_jobs(model: ManifestModel, base_doc: dict, origin: str) -> tuple[Job, ...]:
    """Every job of the manifest, in a stable order: each ``[[job]]`` (or the base alone) crossed
    with every ``[sweep]`` point. Overrides apply in the order batch.set, job.set, sweep."""
    sweep = flatten_overrides(model.sweep)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ManifestError(f"{origin}: sweep.{key}: expected a non-empty list of values")
    common = flatten_overrides(model.batch.set)
    entries = [(j.name, flatten_overrides(j.set)) for j in model.job] or [("", {})]
    jobs, seen = [], {}
    for entry_name, entry_set in entries:
        for point_name, point_set in sweep_points(sweep):
            name = ".".join(p for p in (entry_name, point_name) if p) or model.batch.name
            if name in seen:
                raise ManifestError(
                    f"{origin}: job names must be unique; {name!r} appears twice "
                    f"(jobs {seen[name]} and {len(jobs)})"
                )
            seen[name] = len(jobs)
            overrides = {**common, **entry_set, **point_set}
            doc = json.loads(json.dumps(base_doc, default=str))  # a deep, plain copy
            error = None
            for path, value in overrides.items():
                try:
                    set_path(doc, path, value)
                except ValueError as exc:
                    error = f"job {name!r}: set {path!r}: {exc}"
                    break
            error = error or _validate_job(doc, name)
            jobs.append(Job(len(jobs), job_id_for(name, doc), name, overrides, doc, error))
    ids: dict[str, str] = {}
    for job in jobs:
        if job.job_id in ids:  # names that differ only in characters a path cannot hold
            raise ManifestError(
                f"{origin}: jobs {ids[job.job_id]!r} and {job.name!r} resolve to the same config "
                f"and id {job.job_id!r}; rename one"
            )
        ids[job.job_id] = job.name
    return tuple(jobs)


def parse_manifest(doc: dict, origin: str, manifest_dir: Path, text: str = "") -> Batch:
    """Validate a parsed manifest and expand its jobs (each job's config validated too).

    Raises:
        ManifestError: a manifest-level problem (naming ``origin`` and the field). A job whose
            config is invalid is not an error here: it carries ``error`` and is recorded as failed.
    """
    try:
        model = ManifestModel.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(_format_validation(origin, exc)) from None
    base_doc, base_name = _base_document(model.batch.base, manifest_dir, origin)
    jobs = expand_jobs(model, base_doc, origin)
    b = model.batch
    cache_dir = str(manifest_dir / b.jax_cache_dir) if b.jax_cache_dir else None
    settings = RunSettings(b.device, b.precision, b.compilation_cache, cache_dir)
    return Batch(b.name, b.description, origin, text, base_name, jobs, settings, model.cluster)


def load_manifest(path: str | Path) -> Batch:
    """Read, validate and expand a batch manifest (TOML)."""
    from iortopt.io.toml_file import read_toml

    path = Path(path)
    doc = read_toml(path, ManifestError)
    return parse_manifest(doc, str(path), path.resolve().parent, path.read_text())


def check_jobs_valid(batch: Batch) -> None:
    """Every job's resolved config validated as a run validates it (``parse_config`` and
    ``pipeline.check_config``, done when the manifest is expanded); nothing is run.

    Raises:
        ManifestError: listing each invalid job by index, id and the fields at fault.
    """
    invalid = [j for j in batch.jobs if j.error is not None]
    if not invalid:
        return
    lines = [f"{batch.manifest_path}: {len(invalid)} of {len(batch.jobs)} jobs are invalid"]
    for job in invalid:
        lines.append(f"job {job.index} {job.job_id}: {job.error}")
    raise ManifestError("\n".join(lines))


def with_settings(batch: Batch, **changes) -> Batch:
    """The batch with run settings (``RunSettings`` fields) replaced where a value is given."""
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(batch, settings=dataclasses.replace(batch.settings, **given))


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class StorePaths:
    """Where everything of a batch lives under the ``--out`` folder (layout: module docstring)."""

    root: Path

    @property
    def zarr(self) -> Path:
        return self.root / ZARR_NAME

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    def group(self, job_id: str) -> Path:
        return self.zarr / "jobs" / job_id

    def status(self, job_id: str) -> Path:
        return self.root / "status" / f"{job_id}.json"

    def files(self, job_id: str) -> Path:
        return self.root / "files" / job_id

    def scratch(self, job_id: str) -> Path:
        return self.root / ".scratch" / job_id


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    from iortopt.io.store import _to_jsonable, atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_to_jsonable(data), indent=2))


def read_status(paths: StorePaths, job_id: str) -> dict | None:
    """A job's status record, or None when it has none (or an unreadable one)."""
    try:
        return json.loads(paths.status(job_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(paths: StorePaths, job_id: str) -> bool:
    """Complete: the status says done and the job's group is in the store."""
    record = read_status(paths, job_id)
    return bool(record and record.get("status") == "done" and paths.group(job_id).is_dir())


def clear_job_outputs(paths: StorePaths, job_id: str) -> None:
    """Remove a job's group and files folder (a partial or superseded attempt)."""
    for folder in (paths.group(job_id), paths.files(job_id)):
        shutil.rmtree(folder, ignore_errors=True)


def batch_metadata(batch: Batch) -> dict:
    """The root attributes of the batch store."""
    from iortopt.io.store import _to_jsonable

    return _to_jsonable(
        {
            "iortopt": {"version": __version__, "kind": "batch"},
            "batch": {
                "name": batch.name,
                "description": batch.description,
                "manifest_path": batch.manifest_path,
                "manifest_sha256": hashlib.sha256(batch.manifest_text.encode()).hexdigest(),
                "manifest_text": batch.manifest_text,
                "base": batch.base,
                "precision": batch.settings.precision,
                "created_utc": _utc_now(),
                "jobs": [
                    {
                        "index": j.index,
                        "job_id": j.job_id,
                        "name": j.name,
                        "overrides": j.overrides,
                        "valid": j.error is None,
                    }
                    for j in batch.jobs
                ],
            },
        }
    )


def _group_metadata_file(scratch_root: Path, attrs: dict) -> Path:
    """A zarr v3 group's ``zarr.json`` with ``attrs``, written by zarr in a scratch folder."""
    import zarr

    folder = scratch_root / f".meta-{uuid.uuid4().hex[:8]}"
    zarr.open_group(str(folder), mode="w", zarr_format=3).attrs.update(attrs)
    return folder / "zarr.json"


def _publish_exclusive(src: Path, dst: Path) -> bool:
    """Create ``dst`` with the content of ``src`` only if it does not exist (atomic: a hard link);
    True if this call created it."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: exclusive create, then write
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(src.read_bytes())
        return True


def read_batch_meta(store: str | Path) -> dict:
    """The ``batch`` root attributes of a batch store.

    Raises:
        IortoptError: ``store`` is not a batch store.
    """
    paths = StorePaths(Path(store))
    meta_file = paths.zarr / "zarr.json"
    try:
        attrs = json.loads(meta_file.read_text()).get("attributes", {})
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        raise IortoptError(
            f"{store}: not an iortopt batch store (no readable {ZARR_NAME}/zarr.json)"
        ) from None
    if attrs.get("iortopt", {}).get("kind") != "batch":
        raise IortoptError(f"{store}: {ZARR_NAME} is not an iortopt batch store")
    return attrs["batch"]


def init_store(store: str | Path, batch: Batch, coordinator: bool = True) -> StorePaths:
    """Create the batch store's root metadata, or check that an existing store fits ``batch``.

    Creation is race-safe (many SLURM array tasks may start at once): the metadata is written in a
    scratch folder and published with an exclusive hard link, so exactly one process creates it and
    every reader sees it whole. An existing store must have the same precision. With a different
    job list, the coordinator (``coordinator=True``, the only writer of the root metadata in a
    Dask run) rewrites it; a single job process refuses.

    Raises:
        ManifestError: the store was made for another manifest or precision.
    """
    paths = StorePaths(Path(store))
    for folder in (paths.zarr / "jobs", paths.root / "status", paths.root / "files"):
        folder.mkdir(parents=True, exist_ok=True)
    scratch = paths.root / ".scratch"
    scratch.mkdir(exist_ok=True)
    attrs = batch_metadata(batch)
    root_meta = paths.zarr / "zarr.json"
    new_meta = _group_metadata_file(scratch, attrs)
    jobs_meta = _group_metadata_file(scratch, {})
    try:
        _publish_exclusive(jobs_meta, paths.zarr / "jobs" / "zarr.json")
        if _publish_exclusive(new_meta, root_meta):
            return paths
        existing = read_batch_meta(paths.root)
        if existing.get("precision") != batch.settings.precision:
            raise ManifestError(
                f"{paths.root}: this store holds {existing.get('precision')} results; "
                f"precision {batch.settings.precision} needs another --out"
            )
        old_ids = [j["job_id"] for j in existing.get("jobs", [])]
        if old_ids != batch.job_ids:
            if not coordinator:
                raise ManifestError(
                    f"{paths.root}: the store was created for another version of the manifest "
                    f"(job ids differ); use a new --out, or rerun the whole batch with Dask"
                )
            os.replace(new_meta, root_meta)
        return paths
    finally:
        shutil.rmtree(new_meta.parent, ignore_errors=True)
        shutil.rmtree(jobs_meta.parent, ignore_errors=True)


# --------------------------------------------------------------------------- one job


def _configure_process(settings: dict):
    """Device, precision and compilation cache of this (worker) process; returns the dtype."""
    from iortopt.compute.compile_cache import enable_compile_cache
    from iortopt.compute.runtime import configure

    dtype = configure(settings.get("device"), settings.get("precision", "float32"))
    cache = settings.get("jax_cache_dir")
    if cache:
        enable_compile_cache(folder=Path(cache))
    return dtype


def check_finite(summary: dict) -> None:
    """Raise FloatingPointError when the objective or the target D90 is not a finite number."""
    import math

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    if "objective" in summary and not finite(summary["objective"]):
        raise FloatingPointError(f"non-finite objective ({summary['objective']!r})")
    target = summary.get("prescription_structure")
    d90 = summary.get("metrics", {}).get(target, {}).get("D90_gy")
    if not finite(d90):
        raise FloatingPointError(f"non-finite {target} D90 ({d90!r})")


def table_metrics(summary: dict) -> dict:
    """The key results of one plan summary, flat, for the results table."""
    target = summary.get("prescription_structure", "target")
    m = summary.get("metrics", {}).get(target, {})
    row = {
        "prescription_gy": summary.get("prescription_gy"),
        "target": target,
        "target_D90_gy": m.get("D90_gy"),
        "target_D98_gy": m.get("D98_gy"),
        "target_V100_percent": m.get("V100_percent"),
        "goals_all_met": summary.get("goals_all_met"),
    }
    for g in summary.get("goals", []):
        key = f"{g['structure']}.{g['metric']}"
        row[key] = g.get("value")
        row[f"{key}.met"] = g.get("met")
    for key in (
        "objective",
        "iterations",
        "converged",
        "total_treatment_time_s",
        "n_dwells_active",
    ):
        if key in summary:
            row[key] = summary[key]
    chosen = summary.get("chosen_applicator") or {}  # X-ray plans
    for key in ("diameter_cm", "time_min", "skin_distance_mm"):
        if key in chosen:
            row[f"applicator_{key}"] = chosen[key]
    times = summary.get("wall_times_s", {})
    row["compile_s"] = sum(v for k, v in times.items() if k.endswith("compile_s"))
    for key in ("setup_s", "optimise_s", "full_dose_s", "write_s"):
        if key in times:
            row[key] = times[key]
    return row


def error_kind(exc: BaseException) -> str:
    """input (bad config/data), numerical (NaN), resources (memory, killed worker) or error."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, IortoptError):
        return "input"
    if isinstance(exc, FloatingPointError):
        return "numerical"
    if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in text or "KilledWorker" in text:
        return "resources"
    return "error"


def _owns(paths: StorePaths, job_id: str, token: str) -> bool:
    """Whether this attempt is still the job's latest (a rerun may have taken the job over)."""
    record = read_status(paths, job_id)
    return bool(record and record.get("token") == token)


def _publish_job(paths: StorePaths, job: dict, out_dir: Path) -> None:
    """Move a finished plan into the store: plan.zarr -> jobs/<id>, the rest -> files/<id>."""
    import zarr

    from iortopt.io.output_dir import MARKER_NAME

    plan_zarr = out_dir / "plan.zarr"
    group = zarr.open_group(str(plan_zarr), mode="r+", zarr_format=3)
    group.attrs["batch_job"] = {
        "job_id": job["job_id"],
        "index": job["index"],
        "name": job["name"],
        "overrides": json.loads(_canonical_json(job["overrides"])),
    }
    clear_job_outputs(paths, job["job_id"])
    # files/<id> is part of the batch store, not a standalone run output: no output marker
    (out_dir / MARKER_NAME).unlink(missing_ok=True)
    paths.files(job["job_id"]).parent.mkdir(parents=True, exist_ok=True)
    os.replace(plan_zarr, paths.group(job["job_id"]))
    os.replace(out_dir, paths.files(job["job_id"]))


def _plan_into_store(paths: StorePaths, job: dict, settings: dict, token: str) -> dict:
    dtype = _configure_process(settings)
    from iortopt.config import parse_config
    from iortopt.pipeline import execute, prepare

    cfg = parse_config(job["doc"], f"job {job['name']!r}")
    prepared = prepare(cfg, dtype)
    # a fixed work folder per job: the optimiser checkpoint beside it survives a kill
    out_dir = paths.scratch(job["job_id"]) / "plan"
    result = execute(prepared, out_dir)
    check_finite(result.summary)
    if not _owns(paths, job["job_id"], token):
        raise RuntimeError("superseded: another attempt of this job started meanwhile")
    _publish_job(paths, job, Path(result.out_dir))
    return table_metrics(result.summary)


def run_job(job: dict, store: str, settings: dict) -> dict:
    """Run one job (``Job.spec()``) into the batch store and return its status record.

    The same pipeline as ``iortopt run``. Never raises for a failing plan: the error (type, kind,
    message, traceback) is the record's, written to ``status/<job_id>.json``. The record marking
    the job done is written last, after its group and files are in place.
    """
    paths = StorePaths(Path(store))
    job_id = job["job_id"]
    previous = read_status(paths, job_id) or {}
    token = uuid.uuid4().hex
    record = {
        "job_id": job_id,
        "index": job["index"],
        "name": job["name"],
        "overrides": job["overrides"],
        "status": "running",
        "attempt": int(previous.get("attempt", 0)) + 1,
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "precision": settings.get("precision"),
        "compilation_cache": bool(settings.get("jax_cache_dir")),
        "started_utc": _utc_now(),
    }
    clear_job_outputs(paths, job_id)
    _write_json_atomic(paths.status(job_id), record)
    t0 = time.perf_counter()
    try:
        with cyclic_gc_paused():  # as in `iortopt run`; the job's cycles are collected below
            record["results"] = _plan_into_store(paths, job, settings, token)
        record["status"] = "done"
        shutil.rmtree(paths.scratch(job_id), ignore_errors=True)
    except Exception as exc:
        record.update(
            status="failed",
            error_type=type(exc).__name__,
            error_kind=error_kind(exc),
            error=str(exc),
            traceback=traceback.format_exc(),
        )
        if _owns(paths, job_id, token):
            clear_job_outputs(paths, job_id)
            shutil.rmtree(paths.scratch(job_id), ignore_errors=True)
    record["wall_s"] = time.perf_counter() - t0
    record["finished_utc"] = _utc_now()
    if _owns(paths, job_id, token):
        _write_json_atomic(paths.status(job_id), record)
    gc.collect()  # the cycles the job left, before the worker's next job
    return record


def failure_record(paths: StorePaths, job: Job, exc: BaseException | None, message: str = ""):
    """Write and return a failed record for a job that did not run to its own record: an invalid
    config (``exc`` None, ``message`` the reason) or a task that died (killed worker, lost)."""
    previous = read_status(paths, job.job_id) or {}
    record = {
        "job_id": job.job_id,
        "index": job.index,
        "name": job.name,
        "overrides": job.overrides,
        "status": "failed",
        "attempt": int(previous.get("attempt", 0)) + 1,
        "token": uuid.uuid4().hex,
        "error_type": "ConfigError" if exc is None else type(exc).__name__,
        "error_kind": "input" if exc is None else error_kind(exc),
        "error": message or str(exc),
        "finished_utc": _utc_now(),
        "wall_s": 0.0,
    }
    clear_job_outputs(paths, job.job_id)
    _write_json_atomic(paths.status(job.job_id), record)
    return record


def run_one(batch: Batch, store: str | Path, index: int) -> dict:
    """Run job ``index`` (0-based, in manifest order) in this process: the SLURM array mode.

    Creates the store's root metadata if no other task has yet; a job already done is skipped
    (its record is returned with ``skipped = True``).

    Raises:
        IortoptError: ``index`` out of range. ManifestError: the store belongs to another manifest.
    """
    if not 0 <= index < len(batch.jobs):
        raise IortoptError(
            f"--job-index {index}: the batch has {len(batch.jobs)} jobs (0..{len(batch.jobs) - 1})"
        )
    paths = init_store(Path(store).resolve(), batch, coordinator=False)
    job = batch.jobs[index]
    if is_done(paths, job.job_id):
        return {**read_status(paths, job.job_id), "skipped": True}
    if job.error is not None:
        return failure_record(paths, job, None, job.error)
    return run_job(job.spec(), str(paths.root), batch.settings.for_worker(paths.root))


# --------------------------------------------------------------------------- Dask


def visible_gpu_ids() -> list[str]:
    """GPU ids on this node: CUDA_VISIBLE_DEVICES if set, else those ``nvidia-smi -L`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(k) for k, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def gpu_worker_specs(gpu_ids: list[str]) -> dict:
    """Dask worker specs, one single-threaded worker process per GPU, each seeing only its GPU
    (CUDA_VISIBLE_DEVICES set in the worker's environment before JAX starts)."""
    import logging

    from distributed import Nanny

    return {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "env": {"CUDA_VISIBLE_DEVICES": str(gpu)},
                "dashboard": False,
                "silence_logs": logging.ERROR,
            },
        }
        for gpu in gpu_ids
    }


def jobqueue_cluster(section: ClusterSection, scheduler_options: dict | None = None):
    """A dask-jobqueue SLURMCluster / PBSCluster from the ``[cluster]`` section (not scaled).

    Each cluster job is one worker process with ``cores`` cores, advertising one ``plans``
    resource so it runs one plan at a time with every core available to XLA.
    """
    if section.kind == "slurm":
        from dask_jobqueue import SLURMCluster as Cluster
    elif section.kind == "pbs":
        from dask_jobqueue import PBSCluster as Cluster
    else:
        raise ConfigError(f"cluster.kind {section.kind!r} is not a dask-jobqueue cluster")
    options = {
        "cores": section.cores,
        "memory": section.memory,
        "processes": 1,
        "walltime": section.walltime,
        "queue": section.queue,
        "account": section.account,
        "job_extra_directives": section.job_extra_directives,
        "job_script_prologue": section.job_script_prologue,
        "worker_extra_args": ["--resources", f"{PLAN_RESOURCE}=1"],
        "scheduler_options": scheduler_options or {},
    }
    if section.local_directory:
        options["local_directory"] = section.local_directory
    if section.log_directory:
        options["log_directory"] = section.log_directory
    options.update(section.options)
    try:
        return Cluster(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cluster: {exc}") from None


def render_job_script(batch: Batch) -> str:
    """The batch-system job script dask-jobqueue would submit for one worker (needs no SLURM or
    PBS installed)."""
    with jobqueue_cluster(batch.cluster, {"dashboard_address": None}) as cluster:
        return cluster.job_script()


def default_workers(n_jobs: int) -> int:
    """Local CPU workers when none is given: one per 4 cores (XLA runs each plan's large
    operations on every core, so more workers than that mostly share the same cores), at most
    one per job."""
    return max(1, min(n_jobs, (os.cpu_count() or 1) // 4))


@contextlib.contextmanager
def dask_client(
    batch: Batch,
    n_jobs: int,
    workers: int | None = None,
    address: str | None = None,
    processes: bool | None = None,
) -> Iterator[tuple[Any, dict | None]]:
    """A Dask client for the batch and the task resources to request (None: no constraint)."""
    import logging

    import dask
    from distributed import Client, LocalCluster, Scheduler, SpecCluster

    section = batch.cluster
    address = address or section.address
    if address:
        with Client(address) as client:
            yield client, None
        return
    # a job that kills its worker (out of memory) is retried once, then recorded as failed
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        if section.kind in ("slurm", "pbs"):
            cluster = jobqueue_cluster(section)
            cluster.scale(jobs=section.jobs)
            resources = {PLAN_RESOURCE: 1}
        elif batch.settings.device == "gpu" and (section.gpus or visible_gpu_ids()):
            gpu_ids = [str(g) for g in section.gpus] if section.gpus else visible_gpu_ids()
            gpu_ids = gpu_ids[: workers or section.workers or len(gpu_ids)]
            cluster = SpecCluster(
                workers=gpu_worker_specs(gpu_ids),
                scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                silence_logs=logging.ERROR,
            )
            resources = None
        else:
            cluster = LocalCluster(
                n_workers=workers or section.workers or default_workers(n_jobs),
                threads_per_worker=1,
                processes=section.processes if processes is None else processes,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            resources = None
    with cluster, Client(cluster) as client:
        yield client, resources


@dataclass
class BatchOutcome:
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    records: list[dict] = field(default_factory=list)
    table: Path | None = None


def _progress(console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} jobs"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=console is None,
    )


def run_batch(
    batch: Batch,
    store: str | Path,
    workers: int | None = None,
    address: str | None = None,
    processes: bool | None = None,
    console=None,
) -> BatchOutcome:
    """Run every job not yet done on Dask; write each job's record, then the results table.

    Jobs already done are skipped; the rest are cleared and run (a killed batch resumes). A job
    that fails (invalid config, error, non-finite result, killed worker) is recorded and the
    others go on. ``console``: a rich Console for the batch progress bar (None: silent).
    """
    # absolute: workers may start in another folder (cluster jobs)
    paths = init_store(Path(store).resolve(), batch, coordinator=True)
    outcome = BatchOutcome(total=len(batch.jobs))
    pending = []
    for job in batch.jobs:
        if is_done(paths, job.job_id):
            outcome.skipped += 1
        elif job.error is not None:
            outcome.records.append(failure_record(paths, job, None, job.error))
            outcome.failed += 1
        else:
            pending.append(job)
    settings = batch.settings.for_worker(paths.root)
    try:
        with _progress(console) as bar:
            task = bar.add_task(f"batch {batch.name}", total=outcome.total, counts="")

            def show(last: dict | None = None) -> None:
                counts = f"done {outcome.done + outcome.skipped}, failed {outcome.failed}"
                bar.update(
                    task,
                    completed=outcome.done + outcome.skipped + outcome.failed,
                    counts=counts,
                )
                if console is not None and last is not None and last["status"] == "failed":
                    first_line = str(last.get("error", "")).splitlines()[:1]
                    console.print(
                        f"[red]failed[/] {last['name']}: {first_line[0] if first_line else ''}",
                        highlight=False,
                    )

            show()
            if pending:
                for record in _run_on_dask(
                    batch, paths, pending, settings, workers, address, processes
                ):
                    outcome.records.append(record)
                    if record["status"] == "done":
                        outcome.done += 1
                    else:
                        outcome.failed += 1
                    show(record)
    finally:
        outcome.table = write_results_table(paths.root)
    return outcome


def _run_on_dask(batch, paths, pending, settings, workers, address, processes) -> Iterator[dict]:
    """Submit one task per pending job and yield each job's record as it finishes."""
    from distributed import as_completed

    with dask_client(batch, len(pending), workers, address, processes) as (client, resources):
        futures = {
            client.submit(
                run_job,
                job.spec(),
                str(paths.root),
                settings,
                key=f"iortopt-{job.job_id}-{uuid.uuid4().hex[:6]}",
                pure=False,
                resources=resources,
            ): job
            for job in pending
        }
        for future in as_completed(futures):
            try:
                record = future.result()
            except Exception as exc:  # the task itself died (killed worker, lost, cancelled)
                record = failure_record(paths, futures[future], exc)
            yield record


# --------------------------------------------------------------------------- results table

LEADING_COLUMNS = (
    "index",
    "job_id",
    "name",
    "status",
    "attempt",
    "wall_s",
    "error_kind",
    "error_type",
    "error",
    "host",
    "gpu",
    "finished_utc",
)


def _job_results(paths: StorePaths, job_id: str, record: dict) -> dict:
    """A done job's table metrics, from its summary.json when present (so a rebuilt table has
    the current columns), else as its record saved them."""
    if record.get("status") != "done":
        return {}
    try:
        return table_metrics(json.loads((paths.files(job_id) / "summary.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return record.get("results", {})


def collect_rows(store: str | Path) -> list[dict]:
    """One row per job of the batch (manifest order), from the store's job list and status files:
    status, error, timings, the job's overrides (``set:<path>``) and its key metrics."""
    paths = StorePaths(Path(store))
    meta = read_batch_meta(paths.root)
    rows = []
    for job in meta.get("jobs", []):
        record = read_status(paths, job["job_id"]) or {"status": "pending"}
        if record.get("status") == "done" and not paths.group(job["job_id"]).is_dir():
            record = {**record, "status": "incomplete"}
        row = {
            "index": job["index"],
            "job_id": job["job_id"],
            "name": job["name"],
            **{k: record.get(k) for k in LEADING_COLUMNS[3:]},
        }
        if row["error"]:
            row["error"] = " | ".join(line.strip() for line in str(row["error"]).splitlines())
        row.update({f"set:{k}": v for k, v in job.get("overrides", {}).items()})
        row.update(_job_results(paths, job["job_id"], record))
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def write_results_table(store: str | Path) -> Path:
    """Rebuild ``results.csv`` (one row per job, every column any job has) and ``index.html``
    (:func:`write_batch_index`) atomically."""
    from iortopt.io.store import atomic_path

    paths = StorePaths(Path(store))
    rows = collect_rows(paths.root)
    columns: dict[str, None] = dict.fromkeys(LEADING_COLUMNS)
    for row in rows:
        columns.update(dict.fromkeys(row))
    with atomic_path(paths.results_csv) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in columns])
    write_batch_index(paths, list(columns), rows)
    return paths.results_csv


def write_batch_index(paths: StorePaths, columns: list[str], rows: list[dict]) -> Path:
    """Write ``index.html`` at the store root: the results table, each done job's name linking
    to its ``files/<job_id>/report.html`` (temp name, then renamed)."""
    from iortopt.io.store import atomic_path
    from iortopt.outputs.report import INDEX_NAME, REPORT_NAME, render_batch_index

    links = {
        row["job_id"]: f"files/{row['job_id']}/{REPORT_NAME}"
        for row in rows
        if (paths.files(row["job_id"]) / REPORT_NAME).is_file()
    }
    try:
        title = read_batch_meta(paths.root).get("name", paths.root.name)
    except IortoptError:
        title = paths.root.name
    target = paths.root / INDEX_NAME
    with atomic_path(target) as tmp:
        tmp.write_text(render_batch_index(str(title), columns, rows, links), encoding="utf-8")
    return target


def status_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
