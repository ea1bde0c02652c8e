"""What every plan produces, whatever the modality: metrics, goals, files and the terminal report.

    evaluate_plan(settings, case, dose) -> DVHs, metrics per structure, indices, goals, BED/EQD2
    write_plan_outputs(...)             -> plan.zarr, summary.json, dvh.png, dose_slices.png,
                                           report.html (:mod:`iortopt.outputs.report`)
    print_report(summary, case, ...)    -> metrics and goals tables on the terminal

This stage never sees the plan config: the modality passes :class:`EvaluationSettings` and
:class:`OutputSettings` built from it (:mod:`iortopt.modalities.stage_settings`).

Outputs are written into a temporary folder beside the target and then swapped or merged into
place by :func:`iortopt.io.output_dir.publish_folder`: files iortopt did not write are never
removed, and the folder's marker (``.iortopt-output.json``), written last, says it is complete.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console
from rich.table import Table

from iortopt import __version__
from iortopt.cases.case import Case
from iortopt.compute.run_context import RunContext
from iortopt.compute.runtime import device_info
from iortopt.errors import ConfigError
from iortopt.outputs.result_checks import check_dose_finite, check_result_finite


class GoalSpec(NamedTuple):
    """A clinical goal: ``metric`` of ``structure`` ``op`` (``>=`` or ``<=``) ``value``."""

    structure: str
    metric: str
    op: str
    value: float


@dataclass(frozen=True)
class EvaluationSettings:
    """What :func:`evaluate_plan` needs: the prescription, the goals and the LQ parameters."""

    prescription_gy: float
    prescription_structure: str
    n_fractions: int
    goals: tuple[GoalSpec, ...] = ()
    alpha_beta_gy: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSettings:
    """What the writers need: names, prescription, isodose lines and the config to store."""

    plan_name: str
    modality: str
    prescription_gy: float
    prescription_structure: str
    isodose_percent: tuple[float, ...]
    config_json: dict[str, Any]  # the plan config as JSON values, stored in plan.zarr
    config_text: str | None = None  # the TOML text it was read from (None: built from a dict)
    config_origin: str = "<config>"  # its file (or batch job)


def check_structure_names(
    case: Case, references: Sequence[tuple[str, str]], goal_metrics: Sequence[tuple[str, str]]
) -> None:
    """Every structure and metric the config names exists (ConfigError naming the field).

    Args:
        references: (field path, structure name), e.g. ``("goals[0].structure", "CTV")``,
            checked in order.
        goal_metrics: (field path, metric name), e.g. ``("goals[0].metric", "D90_gy")``.
    """
    names = [s.name for s in case.structures]
    for where, name in references:
        if name not in names:
            raise ConfigError(f"{where}: unknown structure {name!r}; the case has {names}")
    from iortopt.evaluation.dvh import METRIC_KEYS

    for where, metric in goal_metrics:
        if metric not in METRIC_KEYS:
            raise ConfigError(
                f"{where}: unknown metric {metric!r}; expected one of {list(METRIC_KEYS)}"
            )


def goal_rows(goals, metrics: dict[str, dict[str, float]]) -> list[dict]:
    """Each clinical goal (structure, metric, op, value) with its value in ``metrics`` and
    whether it is met (a non-finite value never is)."""
    rows = []
    for g in goals:
        value = metrics[g.structure][g.metric]
        met = bool(np.isfinite(value) and (value >= g.value if g.op == ">=" else value <= g.value))
        rows.append(
            {
                "structure": g.structure,
                "metric": g.metric,
                "op": g.op,
                "limit": g.value,
                "value": value,
                "met": met,
            }
        )
    return rows


def evaluate_plan(settings: EvaluationSettings, case: Case, dose: np.ndarray) -> dict:
    """DVHs, metrics per structure, plan indices, goals and BED/EQD2 for a full-grid dose (Gy).

    Raises:
        PlanFailedError: the dose is not finite (a failed optimisation).
    """
    check_dose_finite(dose)
    from iortopt.evaluation import dvh, radiobiology

    rx = settings.prescription_gy
    vv = case.grid.voxel_volume_cm3
    metrics, dvhs = {}, {}
    for s in case.structures:
        metrics[s.name] = dvh.structure_metrics(dose, s.occupancy, vv, rx)
        dvhs[s.name] = dvh.cumulative_dvh(dose, s.occupancy, vv)
    target = case.structure(settings.prescription_structure)
    indices = dvh.plan_indices(
        dose, target.occupancy, {s.name: s.occupancy for s in case.oars}, rx, vv
    )
    goals = goal_rows(settings.goals, metrics)
    bio = {}
    n = settings.n_fractions

    def lq(fn, dose_gy: float, ab: float) -> float:
        return float(fn(dose_gy, n, ab)) if np.isfinite(dose_gy) else float("nan")

    for name, ab in settings.alpha_beta_gy.items():
        m = metrics[name]
        bio[name] = {
            "model": radiobiology.MODEL_NAME,
            "alpha_beta_gy": ab,
            "n_fractions": n,
            "D90_BED_gy": lq(radiobiology.bed_gy, m["D90_gy"], ab),
            "D90_EQD2_gy": lq(radiobiology.eqd2_gy, m["D90_gy"], ab),
            "D2cc_EQD2_gy": lq(radiobiology.eqd2_gy, m["D2cc_gy"], ab),
        }
    return {
        "metrics": metrics,
        "dvhs": dvhs,
        "indices": indices,
        "goals": goals,
        "radiobiology": bio,
        "oar_hot_spots": oar_hot_spots(case, dose),
    }


#: Slices through the worst OAR hot spot (beside ``dose_slices.png``, through the target).
HOT_SPOT_FIGURE = "hot_spot_slices.png"


def hot_spot_centre_mm(evaluation: dict) -> list[float] | None:
    """(x, y, z) mm of the hottest OAR voxel of a plan (the first of ``oar_hot_spots``, hottest
    first), where the hot-spot slices pass; None for a plan without organs at risk."""
    spots = evaluation.get("oar_hot_spots") or []
    return spots[0]["position_mm"] if spots else None


def oar_hot_spots(case: Case, dose: np.ndarray) -> list[dict]:
    """Per OAR, its hottest voxel (occupancy >= 0.5): dose (Gy) and centre (x, y, z) mm, the
    hottest OAR first."""
    spots = []
    for s in case.oars:
        inside = s.occupancy >= 0.5
        if not inside.any():
            continue
        masked = np.where(inside, dose, -np.inf)
        k = np.unravel_index(int(np.argmax(masked)), dose.shape)
        spots.append(
            {
                "structure": s.name,
                "dose_gy": float(dose[k]),
                "position_mm": [round(float(v), 2) for v in case.grid.index_to_mm(k)],
            }
        )
    return sorted(spots, key=lambda spot: -spot["dose_gy"])


def common_summary(settings: OutputSettings, case: Case, evaluation: dict, dtype) -> dict:
    """Summary fields shared by every modality (the modality adds its own)."""
    return {
        "plan": settings.plan_name,
        "modality": settings.modality,
        "iortopt_version": __version__,
        "prescription_gy": settings.prescription_gy,
        "prescription_structure": settings.prescription_structure,
        "grid_shape_zyx": list(case.grid.shape_zyx),
        "metrics": evaluation["metrics"],
        "plan_indices": evaluation["indices"],
        "radiobiology": evaluation["radiobiology"],
        "goals": evaluation["goals"],
        "goals_all_met": all(g["met"] for g in evaluation["goals"]),
        "oar_hot_spots": evaluation.get("oar_hot_spots", []),
        "device": device_info(),
        "precision": np.dtype(dtype).name,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "case_identification": case_identification(case),
        "config_source": config_source(settings),
    }


def case_identification(case: Case) -> dict:
    """The case name and, for a DICOM case, the patient and study it came from (strings)."""
    ident = {"case": case.name}
    ref = case.info.get("dicom")
    if isinstance(ref, dict):
        patient = ref.get("patient", {})
        ident |= {
            "patient_name": patient.get("PatientName", ""),
            "patient_id": patient.get("PatientID", ""),
            "study_id": patient.get("StudyID", ""),
            "study_date": patient.get("StudyDate", ""),
            "study_description": patient.get("StudyDescription", ""),
            "study_uid": ref.get("study_uid", ""),
        }
    return ident


def config_source(settings: OutputSettings) -> dict:
    """The config as the plan read it, with its SHA-256: the TOML file's text when there was
    one, else the resolved config as canonical JSON (a batch job)."""
    import hashlib

    if settings.config_text is not None:
        text, kind = settings.config_text, "toml"
    else:
        text, kind = json.dumps(settings.config_json, indent=2, sort_keys=True), "json"
    return {
        "origin": settings.config_origin,
        "format": kind,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text": text,
    }


def provenance(modality: str, case: Case, dtype, **extra) -> dict:
    """Version, device, precision, time and the physics data used (``extra``)."""
    return {
        "iortopt_version": __version__,
        "modality": modality,
        **extra,
        "device": device_info(),
        "precision": np.dtype(dtype).name,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "case": case.name,
    }


def write_plan_outputs(
    settings: OutputSettings,
    case: Case,
    dose: np.ndarray,
    evaluation: dict,
    summary: dict,
    out_dir: Path,
    applicator: dict[str, dict[str, np.ndarray]],
    provenance_attrs: dict,
    markers_mm: np.ndarray | None = None,
    markers_label: str = "dwell positions",
    extra_writer: Callable[[Path], None] | None = None,
    shield_points_mm: np.ndarray | None = None,
    ctx: RunContext | None = None,
) -> None:
    """Write plan.zarr, the figures, the DICOM export, summary.json and report.html into
    ``out_dir``.

    Built in a temporary folder, then swapped or merged into place with the marker written last
    (:func:`iortopt.io.output_dir.publish_folder`); files iortopt did not write are kept.

    Args:
        applicator: zarr groups of applicator arrays, e.g. ``{"dwells": {"times_s": ...}}``.
        markers_mm: (M, 3) points drawn on the dose slices (dwell positions, sphere centre).
        extra_writer: called with the temporary folder before it is renamed into place (e.g.
            the DICOM export), so its files are part of the same atomic write.
        shield_points_mm: (K, 3) points sampling the shields, drawn on the dose slices.
        ctx: the run's context: with its clock, ``summary["wall_times_s"]`` gets ``write_s``
            and the run's totals (:meth:`RunContext.wall_times_s`) just before summary.json is
            written, the last file but the report built from it (so both are written once).
    """
    t_write = time.perf_counter()
    check_result_finite(dose, applicator, summary)
    from iortopt.io.output_dir import new_temp_folder, publish_folder
    from iortopt.io.store import _to_jsonable, write_plan_store
    from iortopt.outputs import figures as report
    from iortopt.outputs.report import write_report

    out_dir = Path(out_dir)
    # one colour per structure name in every figure and in the store's label image
    colours = report.structure_colours([s.name for s in case.structures])
    tmp = new_temp_folder(out_dir)
    try:
        write_plan_store(
            tmp / "plan.zarr",
            {
                "grid": case.grid,
                "dose_gy": dose,
                "structures": [(s.name, s.role, s.occupancy) for s in case.structures],
                "hu": case.hu,
                "structure_colours": colours,
                "groups": applicator,
                "dvhs": evaluation["dvhs"],
                "attrs": {
                    "config": settings.config_json,
                    "provenance": provenance_attrs,
                    "metrics": evaluation["metrics"],
                    "summary": summary,
                },
            },
        )
        rx = settings.prescription_gy
        clinical = {s.name for s in case.structures if s.role != "other"}
        dvhs = {k: v for k, v in evaluation["dvhs"].items() if k in clinical}
        report.plot_dvh(
            dvhs,
            tmp / "dvh.png",
            prescription_gy=rx,
            title=settings.plan_name,
            colours=colours,
            goals=evaluation["goals"],
        )
        slices = {  # the same for the target-centre and the hot-spot slices
            "isodose_levels_gy": [rx * p / 100 for p in settings.isodose_percent],
            "dwell_positions_mm": markers_mm,
            "markers_label": markers_label,
            "shield_points_mm": shield_points_mm,
            "hu": case.hu,
            "colours": colours,
            "prescription_gy": rx,
        }
        report.plot_dose_slices(
            dose,
            case.grid,
            case.structures,
            tmp / "dose_slices.png",
            title=f"{settings.plan_name}: dose (Gy)",
            **slices,
        )
        hot_centre = hot_spot_centre_mm(evaluation)
        if hot_centre is not None:  # the same slices through the worst OAR hot spot
            worst = evaluation["oar_hot_spots"][0]["structure"]
            report.plot_dose_slices(
                dose,
                case.grid,
                case.structures,
                tmp / HOT_SPOT_FIGURE,
                centre_xyz_mm=hot_centre,
                title=f"{settings.plan_name}: dose (Gy) through the {worst} hot spot",
                **slices,
            )
        if extra_writer is not None:
            extra_writer(tmp)
        stages = {**summary.get("wall_times_s", {}), "write_s": time.perf_counter() - t_write}
        summary["wall_times_s"] = stages if ctx is None else ctx.wall_times_s(stages)
        if ctx is not None and ctx.timed:
            summary["compile_cache"] = ctx.compile_cache
        (tmp / "summary.json").write_text(json.dumps(_to_jsonable(summary), indent=2))
        write_report(tmp)  # from the files just written, so the folder is complete with it
        publish_folder(tmp, out_dir, settings.plan_name, settings.modality)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def rewrite_summary(out_dir: Path, summary: dict) -> None:
    """Replace ``out_dir/summary.json`` atomically (e.g. to add the write time), then rebuild
    ``report.html`` from it (:func:`iortopt.outputs.report.write_report`)."""
    from iortopt.io.store import _to_jsonable
    from iortopt.outputs.report import write_report

    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(_to_jsonable(summary), indent=2))
    os.replace(tmp, out_dir / "summary.json")
    write_report(out_dir)


METRIC_COLUMNS = (
    ("cm3", "volume_cm3"),
    ("mean", "mean_gy"),
    ("max", "max_gy"),
    ("D98", "D98_gy"),
    ("D90", "D90_gy"),
    ("D2cc", "D2cc_gy"),
    ("D0.1cc", "D0.1cc_gy"),
    ("V100 %", "V100_percent"),
)


def print_report(summary: dict, case: Case, console: Console) -> None:
    """Metrics of targets and OARs, the clinical goals (met or not) and the plan indices."""
    s = summary
    table = Table(
        title=f"{s['plan']}: dose metrics in Gy (prescription {s['prescription_gy']:g} Gy)"
    )
    table.add_column("structure", no_wrap=True)
    for title, _ in METRIC_COLUMNS:
        table.add_column(title, justify="right")
    roles = {st.name: st.role for st in case.structures}
    for name, m in s["metrics"].items():
        if roles.get(name) == "other":
            continue
        cells = [f"{m[k]:.2f}" if np.isfinite(m[k]) else "-" for _, k in METRIC_COLUMNS]
        table.add_row(name, *cells)
    console.print(table)
    goals = Table(title="Clinical goals")
    for c in ("structure", "goal", "value", "met"):
        goals.add_column(c)
    for g in s["goals"]:
        goals.add_row(
            g["structure"],
            f"{g['metric']} {g['op']} {g['limit']:g}",
            f"{g['value']:.2f}",
            "[green]yes[/]" if g["met"] else "[red]NO[/]",
        )
    console.print(goals)
    idx = s["plan_indices"]
    console.print(
        "indices: "
        + ", ".join(
            f"{k} {v:.3f}" for k, v in idx.items() if isinstance(v, float) and np.isfinite(v)
        ),
        highlight=False,
    )


def format_wall_times(times_s: dict) -> str:
    """``stage 1.23, ...`` of summary.json's ``wall_times_s`` (s); stages not measured (None,
    e.g. the interpreter start-up off Linux) are left out."""
    return ", ".join(f"{k} {v:.2f}" for k, v in times_s.items() if v is not None)


def print_notes_and_times(summary: dict, out_dir, console: Console) -> None:
    """The plan's notes, its wall times (s) and where the outputs went (the last lines printed)."""
    from rich.markup import escape

    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)
    times = summary["wall_times_s"]
    console.print(
        format_wall_times(times) + f"; outputs in {out_dir}",
        highlight=False,
        markup=False,
    )
