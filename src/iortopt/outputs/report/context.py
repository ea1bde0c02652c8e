"""What the plan report shows, read from a plan's output folder alone.

    read_output(out_dir) -> PlanOutput     the folder's files: summary.json, plan.zarr (attrs,
                                           DVHs, dwells, structure roles and colours), the PNGs
    report_context(output) -> dict         the template's values (pure: no file access)

Nothing here sees the in-memory plan: ``iortopt report OUT`` rebuilds the same report from the
same files. plan.zarr is optional (a batch job's ``files/<id>`` folder has none): without it the
report keeps every section that summary.json can fill and says what it could not show.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iortopt.errors import InputFileError

#: The kind of plan a summary describes (:func:`plan_kind`, read from the fields it holds, never
#: from the modality's name) -> how the report names its technique.
TECHNIQUES = {
    "dwells": "HDR brachytherapy: source dwell positions and times in catheters (AAPM TG-43)",
    "sphere": "Low-energy X-ray IORT with a spherical applicator",
    "beam": "Electron IORT (IOERT): cone applicator, protective disc",
    "": "",
}
#: Metrics per structure in the report's table: (column title, summary key).
METRIC_COLUMNS = (
    ("volume (cm³)", "volume_cm3"),
    ("mean (Gy)", "mean_gy"),
    ("min (Gy)", "min_gy"),
    ("max (Gy)", "max_gy"),
    ("D98 (Gy)", "D98_gy"),
    ("D90 (Gy)", "D90_gy"),
    ("D50 (Gy)", "D50_gy"),
    ("D2cc (Gy)", "D2cc_gy"),
    ("D0.1cc (Gy)", "D0.1cc_gy"),
    ("V100 (%)", "V100_percent"),
    ("V150 (%)", "V150_percent"),
)
#: Optional result blocks other stages add to summary.json; each renders as its own section.
OPTIONAL_SECTIONS = (
    ("robust", "Robustness: DVH bands under setup and model uncertainty"),
    ("pareto", "Pareto front and the chosen plan"),
    ("second_check", "Independent second check"),
)
#: Points kept per DVH curve in the interactive plot (the curves are smooth).
DVH_POINTS = 240
#: Words in a note that put it in the warnings box at the top.
WARNING_WORDS = ("illustrative", "not for clinical", "flag", "warning", "outside", "fallback")


@dataclass(frozen=True)
class PlanOutput:
    """The files of one output folder, parsed (nothing computed)."""

    folder: Path
    summary: dict
    attrs: dict = field(default_factory=dict)  # plan.zarr root attributes ({} without it)
    structures: list[dict] = field(default_factory=list)  # name, role, colour (case order)
    dvhs: dict[str, dict] = field(default_factory=dict)  # name -> dose_gy, volume_percent, cm3
    dwells: dict[str, np.ndarray] = field(default_factory=dict)  # plan.zarr dwells/ arrays
    figures: dict[str, str] = field(default_factory=dict)  # "dvh" / "slices" -> data: URI
    missing: list[str] = field(default_factory=list)  # what could not be read, in words


def read_output(out_dir: str | Path) -> PlanOutput:
    """Parse the files of the output folder ``out_dir``.

    Raises:
        InputFileError: naming the path, when it is not a folder or has no readable summary.json.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise InputFileError(f"{folder}: not a plan output folder (no such folder)")
    summary_path = folder / "summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(
            f"{summary_path}: not found; {folder} is not a plan output folder "
            "(iortopt run writes summary.json there)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(f"{summary_path}: not a readable summary ({exc})") from None
    if not isinstance(summary, dict) or "plan" not in summary or "metrics" not in summary:
        raise InputFileError(f"{summary_path}: not a plan summary (no 'plan' or 'metrics')")
    missing: list[str] = []
    attrs, structures, dvhs, dwells = _read_store(plan_store_of(folder), missing)
    figures = {}
    wanted = [("dvh", "dvh.png"), ("slices", "dose_slices.png")]
    if summary.get("oar_hot_spots"):
        wanted.append(("hot_spot", "hot_spot_slices.png"))
    for key, name in wanted:
        try:
            figures[key] = "data:image/png;base64," + base64.b64encode(
                (folder / name).read_bytes()
            ).decode("ascii")
        except OSError:
            missing.append(f"{name} (figure not found)")
    return PlanOutput(folder, summary, attrs, structures, dvhs, dwells, figures, missing)


def plan_store_of(folder: Path) -> Path:
    """The plan store of an output folder: ``plan.zarr`` inside it or, for a batch job's
    ``STORE/files/<id>``, the job's group ``STORE/batch.zarr/jobs/<id>``."""
    inside = folder / "plan.zarr"
    if inside.exists() or folder.parent.name != "files":
        return inside
    job_group = folder.parent.parent / "batch.zarr" / "jobs" / folder.name
    return job_group if job_group.is_dir() else inside


def _read_store(path: Path, missing: list[str]):
    attrs: dict = {}
    structures: list[dict] = []
    dvhs: dict[str, dict] = {}
    dwells: dict[str, np.ndarray] = {}
    if not (path / "zarr.json").is_file():
        missing.append("plan.zarr (DVH curves, dwell table and structure roles come from it)")
        return attrs, structures, dvhs, dwells
    try:
        import zarr

        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        attrs = dict(root.attrs)
        structures = _structure_list(path)
        if "dvh" in root:
            for name, array in root["dvh"].arrays():
                curve = np.asarray(array[...], float)
                total = float(array.attrs.get("total_volume_cm3", curve[1, 0]))
                dvhs[name] = _dvh_points(curve[0], curve[1], total)
        if "dwells" in root:
            dwells = {k: np.asarray(a[...]) for k, a in root["dwells"].arrays()}
    except Exception as exc:  # a damaged store: the report still shows the summary
        missing.append(f"plan.zarr (not readable: {type(exc).__name__}: {exc})")
    return attrs, structures, dvhs, dwells


def _structure_list(store: Path) -> list[dict]:
    """Name, role and colour of each structure, in the case's order, from the label image."""
    try:
        meta = json.loads((store / "labels" / "structures" / "zarr.json").read_text())
        label = meta["attributes"]["ome"]["image-label"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    colours = {c["label-value"]: c["rgba"] for c in label.get("colors", [])}
    out = []
    for prop in sorted(label.get("properties", []), key=lambda p: p["label-value"]):
        r, g, b = (colours.get(prop["label-value"]) or [128, 128, 128])[:3]
        out.append(
            {
                "name": prop["name"],
                "role": prop.get("role", ""),
                "colour": f"#{r:02x}{g:02x}{b:02x}",
            }
        )
    return out


def _dvh_points(dose_gy: np.ndarray, volume_cm3: np.ndarray, total_cm3: float) -> dict:
    """A cumulative DVH thinned to about :data:`DVH_POINTS` points, volume in % of the
    structure (the curve's end points kept)."""
    keep = np.unique(np.linspace(0, dose_gy.size - 1, min(DVH_POINTS, dose_gy.size)).astype(int))
    percent = 100.0 * volume_cm3[keep] / total_cm3 if total_cm3 > 0 else 0.0 * volume_cm3[keep]
    return {
        "dose_gy": [round(float(d), 4) for d in dose_gy[keep]],
        "volume_percent": [round(float(v), 3) for v in percent],
        "total_cm3": total_cm3,
    }


# ----------------------------------------------------------------------------------------------
# The template's values
# ----------------------------------------------------------------------------------------------


def report_context(output: PlanOutput) -> dict:
    """Every value the report template shows, from the parsed folder (pure)."""
    s = output.summary
    modality = str(s.get("modality", ""))
    config = output.attrs.get("config") or {}
    roles = {st["name"]: st["role"] for st in output.structures}
    kind = plan_kind(s)
    ctx = {
        "plan": s.get("plan", ""),
        "modality": modality,
        "technique": TECHNIQUES[kind] or modality,
        "identification": identification_rows(s, config, output.attrs),
        "warnings": warnings(s),
        "notes": [n for n in s.get("notes", []) if not _is_warning(n)],
        "prescription": prescription_rows(s, config),
        "goals": s.get("goals", []),
        "goals_all_met": s.get("goals_all_met"),
        "metric_columns": [title for title, _ in METRIC_COLUMNS],
        "metrics": metric_rows(s, roles),
        "indices": index_rows(s.get("plan_indices", {})),
        "radiobiology": s.get("radiobiology", {}),
        "dvh_data": dvh_data(output, roles),
        "figures": output.figures,
        "hot_spots": [
            (h["structure"], fmt(h["dose_gy"]), fmt(h["position_mm"]))
            for h in s.get("oar_hot_spots", [])
        ],
        "missing": output.missing,
        "hdr": hdr_context(s, output.dwells) if kind == "dwells" else None,
        "xray": xray_rows(s) if kind == "sphere" else None,
        "electron": electron_rows(s) if kind == "beam" else None,
        "shields": s.get("shields", []),
        "disc": disc_rows(s.get("disc")),
        "extra_sections": [
            {"id": key.replace("_", "-"), "title": title, "blocks": generic_blocks(s[key])}
            for key, title in OPTIONAL_SECTIONS
            if s.get(key)
        ],
        "provenance": provenance_rows(s, output.attrs),
        "config_source": s.get("config_source"),
        "config_json": None
        if s.get("config_source") or not config
        else json.dumps(config, indent=2, sort_keys=True),
    }
    ctx["section_ids"] = section_ids(ctx)
    return ctx


def plan_kind(s: dict) -> str:
    """What the summary describes, from its fields: ``"dwells"`` (dwell times: HDR),
    ``"sphere"`` (a spherical applicator's time and formalism: X-ray), ``"beam"`` (energy, cone
    and MU: electrons) or ``""``."""
    if "n_dwells_active" in s:
        return "dwells"
    if "dosimetry_formalism" in s:
        return "sphere"
    if "energy_MeV" in (s.get("chosen_applicator") or {}):
        return "beam"
    return ""


def section_ids(ctx: dict) -> list[str]:
    """The ids of the sections the report holds, in order (tests and the table of contents)."""
    ids = ["warnings", "identification", "technique"]
    if ctx["hdr"] is not None:
        ids.append("dwells")
    ids += ["prescription", "goals", "metrics", "dvh", "isodoses"]
    if ctx["shields"] or ctx["disc"]:
        ids.append("shields")
    ids += [e["id"] for e in ctx["extra_sections"]]
    ids += ["provenance", "signature"]
    return ids


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as the report prints it: numbers to ``digits`` significant figures, None/NaN as
    an en dash, booleans as yes/no, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if 10**digits <= abs(value) < 1e9:  # S_K in U, MU: whole numbers, not 4.07e+04
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def _is_warning(note: Any) -> bool:
    text = str(note).lower()
    return any(word in text for word in WARNING_WORDS)


def identification_rows(s: dict, config: dict, attrs: dict) -> list[tuple[str, str]]:
    ident = s.get("case_identification") or {}
    plan_section = config.get("plan") or {}
    rows = [
        ("plan", s.get("plan", "")),
        ("description", plan_section.get("description", "")),
        ("case", ident.get("case") or (attrs.get("provenance") or {}).get("case", "")),
    ]
    labels = (
        ("patient name", "patient_name"),
        ("patient ID", "patient_id"),
        ("study ID", "study_id"),
        ("study date", "study_date"),
        ("study description", "study_description"),
        ("study instance UID", "study_uid"),
    )
    rows += [(label, ident[key]) for label, key in labels if key in ident]
    created = s.get("created_utc") or (attrs.get("provenance") or {}).get("created_utc", "")
    rows += [
        ("planned (UTC)", created),
        ("modality", s.get("modality", "")),
        ("iortopt version", s.get("iortopt_version", "")),
    ]
    return [(k, fmt(v)) for k, v in rows if v not in ("", None)]


def warnings(s: dict) -> list[str]:
    """What the planner must see first: illustrative data, unmet goals, flagged geometry."""
    out = [str(n) for n in s.get("notes", []) if _is_warning(n)]
    for g in s.get("goals", []):
        if not g.get("met", True):
            out.append(
                f"goal not met: {g['structure']} {g['metric']} {g['op']} {fmt(g['limit'])} "
                f"(plan: {fmt(g['value'])})"
            )
    for name, ok in (s.get("flags") or {}).items():
        if ok is False:
            out.append(f"flag: {name.replace('_', ' ')} is false")
    chosen = s.get("chosen_applicator") or {}
    if chosen.get("skin_distance_ok") is False:
        out.append(
            f"applicator surface {fmt(chosen.get('skin_distance_mm'))} mm from the skin "
            f"(minimum {fmt(s.get('min_skin_distance_mm'))} mm)"
        )
    for shield in s.get("shields", []):
        if shield.get("distance_ok") is False:
            out.append(
                f"shield {shield.get('name')}: {fmt(shield.get('min_target_distance_mm'))} mm "
                f"from the target (minimum {fmt(shield.get('required_min_target_distance_mm'))})"
            )
        if shield.get("materials_illustrative"):
            out.append(
                f"shield {shield.get('name')}: transmission data are ILLUSTRATIVE, not for "
                "clinical use"
            )
    return list(dict.fromkeys(out))


def prescription_rows(s: dict, config: dict) -> list[tuple[str, str]]:
    rx, structure = s.get("prescription_gy"), s.get("prescription_structure", "")
    fractions = (config.get("prescription") or {}).get("n_fractions")
    kind = plan_kind(s)
    if kind == "sphere":
        mode = s.get("prescription_mode", "")
        depth = (config.get("xray") or {}).get("prescription_depth_mm")
        spec = (
            f"{fmt(rx)} Gy at {fmt(depth)} mm depth from the applicator surface"
            if mode == "depth"
            else f"{fmt(rx)} Gy at the applicator surface"
        )
    elif kind == "beam":
        spec = (
            f"{fmt(rx)} Gy to the {fmt(s.get('isodose_percent'))} % isodose "
            f"(100 % = {fmt(s.get('d100_gy'))} Gy at dmax on the central axis)"
        )
    else:
        spec = f"{fmt(rx)} Gy to the {structure} (optimised dwell times; see the goals)"
    rows = [
        ("prescribed dose", f"{fmt(rx)} Gy"),
        ("prescription structure", structure),
        ("specification", spec),
    ]
    if fractions is not None:
        rows.append(("fractions", fmt(fractions)))
    return rows


def metric_rows(s: dict, roles: dict[str, str]) -> list[dict]:
    rows = []
    for name, m in (s.get("metrics") or {}).items():
        if roles.get(name) == "other":
            continue
        rows.append(
            {
                "name": name,
                "role": roles.get(name, ""),
                "cells": [fmt(m.get(key)) for _, key in METRIC_COLUMNS],
            }
        )
    return rows


def index_rows(indices: dict) -> list[tuple[str, str]]:
    return [(k, fmt(v)) for k, v in indices.items() if not isinstance(v, dict)]


def dvh_data(output: PlanOutput, roles: dict[str, str]) -> dict:
    """Curves of the clinical structures (targets and OARs) for the interactive DVH."""
    colours = {st["name"]: st["colour"] for st in output.structures}
    order = [st["name"] for st in output.structures] or sorted(output.dvhs)
    curves = [
        {"name": name, "colour": colours.get(name, "#555555"), **output.dvhs[name]}
        for name in order
        if name in output.dvhs and roles.get(name) != "other"
    ]
    return {"prescription_gy": output.summary.get("prescription_gy"), "curves": curves}


def hdr_context(s: dict, dwells: dict[str, np.ndarray]) -> dict:
    src = s.get("source_strength") or {}
    total_s = s.get("total_treatment_time_s")
    source_rows = [
        ("source model / dataset", src.get("model", s.get("source", ""))),
        ("citation", src.get("citation", "")),
        ("dose formalism", f"TG-43 {src.get('formalism', '')}".strip()),
        ("half-life (days)", src.get("half_life_days")),
        ("calibration date-time", src.get("calibration") or "not given (no decay applied)"),
        ("treatment date-time", src.get("treatment") or "not given"),
        ("S_K at calibration (U = µGy m² h⁻¹)", src.get("air_kerma_strength_U_at_calibration")),
        ("decay factor", src.get("decay_factor")),
        (
            "S_K at treatment (U = µGy m² h⁻¹)",
            src.get("air_kerma_strength_U_at_treatment", s.get("air_kerma_strength_U")),
        ),
    ]
    trak = s.get("total_reference_air_kerma_uGy_m2")
    totals = [
        ("active dwells", f"{fmt(s.get('n_dwells_active'))} of {fmt(s.get('n_dwells_total'))}"),
        (
            "total treatment time",
            f"{fmt(total_s)} s ({fmt(total_s / 60.0)} min)" if _finite(total_s) else "–",
        ),
        (
            "total reference air kerma (TRAK = S_K × time)",
            f"{fmt(trak)} µGy m² (= {fmt(trak / 1e4)} cGy m²)" if _finite(trak) else "–",
        ),
        (
            "optimiser",
            f"{s.get('method', '')}: {fmt(s.get('iterations'))} iterations, "
            f"{s.get('stop_reason', '')}",
        ),
    ]
    return {
        "source": [(k, fmt(v)) for k, v in source_rows if v not in ("", None)],
        "totals": totals,
        "catheters": dwell_tables(dwells),
    }


def dwell_tables(dwells: dict[str, np.ndarray]) -> list[dict]:
    """One table per catheter: position index, x/y/z (mm) and time (s), with its sum."""
    needed = ("positions_mm", "times_s", "catheter", "index")
    if not all(k in dwells for k in needed):
        return []
    pos, times = dwells["positions_mm"], dwells["times_s"]
    catheter, index = dwells["catheter"], dwells["index"]
    tables = []
    for c in np.unique(catheter):
        rows = np.flatnonzero(catheter == c)
        rows = rows[np.argsort(index[rows], kind="stable")]
        tables.append(
            {
                "catheter": int(c) + 1,
                "rows": [
                    (
                        int(index[k]) + 1,
                        f"{pos[k, 0]:.1f}",
                        f"{pos[k, 1]:.1f}",
                        f"{pos[k, 2]:.1f}",
                        f"{float(times[k]):.1f}",
                    )
                    for k in rows
                ],
                "total_s": f"{float(np.sum(times[rows])):.1f}",
            }
        )
    return tables


def xray_rows(s: dict) -> list[tuple[str, str]]:
    a = s.get("chosen_applicator") or {}
    time_min = a.get("time_min")
    rows = [
        ("beam data", s.get("beam")),
        ("dosimetry formalism", s.get("dosimetry_formalism")),
        ("applicator", f"sphere {fmt(a.get('diameter_cm'))} cm diameter"),
        ("centre (mm)", a.get("centre_mm")),
        (
            "treatment time",
            f"{fmt(time_min)} min ({fmt(time_min * 60.0)} s)" if _finite(time_min) else None,
        ),
        ("surface dose (Gy)", a.get("surface_dose_gy")),
        ("dose at 10 mm depth (Gy)", a.get("dose_at_10mm_gy")),
        ("skin distance (mm)", a.get("skin_distance_mm")),
        ("why this size", a.get("reason")),
    ]
    return [(k, fmt(v)) for k, v in rows if v is not None]


def electron_rows(s: dict) -> list[tuple[str, str]]:
    a = s.get("chosen_applicator") or {}
    rows = [
        ("beam data / machine", f"{s.get('beam', '')} ({s.get('machine', '')})"),
        ("energy (MeV)", a.get("energy_MeV")),
        ("cone diameter (cm)", a.get("diameter_cm")),
        ("bevel (deg)", a.get("bevel_deg")),
        ("monitor units (MU)", a.get("mu")),
        ("D100 at dmax (Gy)", a.get("d100_gy")),
        ("cone end (mm)", a.get("cone_end_mm")),
        ("beam axis", a.get("cone_axis")),
        ("axis tilt (deg)", a.get("axis_tilt_deg")),
        ("why this beam", a.get("reason")),
    ]
    return [(k, fmt(v)) for k, v in rows if v is not None]


def disc_rows(disc: dict | None) -> list[tuple[str, str]]:
    if not disc:
        return []
    keys = (
        ("material", "material"),
        ("description", "description"),
        ("radius (mm)", "radius_mm"),
        ("thickness (mm)", "thickness_mm"),
        ("centre (mm)", "centre_mm"),
        ("normal", "normal"),
        ("depth below the surface (mm)", "depth_below_surface_mm"),
        ("margin over the field (mm)", "margin_mm"),
        ("covers the field", "covers_field"),
        ("transmission", "transmission"),
        ("backscatter (%)", "backscatter_percent"),
    )
    return [(label, fmt(disc[key])) for label, key in keys if key in disc]


def generic_blocks(value: Any) -> list[dict]:
    """Any JSON result as tables: scalars as one key/value table, each list of records as a
    table of its fields, each nested mapping as its own block (one level deep)."""
    if not isinstance(value, dict):
        value = {"value": value}
    blocks: list[dict] = []
    scalars = [(k, fmt(v)) for k, v in value.items() if not isinstance(v, (dict, list))]
    simple_lists = [
        (k, fmt(v))
        for k, v in value.items()
        if isinstance(v, list) and not any(isinstance(x, dict) for x in v)
    ]
    if scalars or simple_lists:
        blocks.append({"title": "", "kind": "pairs", "rows": scalars + simple_lists})
    for key, v in value.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            columns = list(dict.fromkeys(c for row in v for c in row))
            blocks.append(
                {
                    "title": key,
                    "kind": "table",
                    "columns": columns,
                    "rows": [[fmt(row.get(c)) for c in columns] for row in v],
                }
            )
        elif isinstance(v, dict):
            blocks.append(
                {"title": key, "kind": "pairs", "rows": [(k, fmt(x)) for k, x in v.items()]}
            )
    return blocks


def provenance_rows(s: dict, attrs: dict) -> list[tuple[str, str]]:
    prov = attrs.get("provenance") or {}
    device = s.get("device") or prov.get("device") or {}
    data_files = []
    if "source_strength" in s or "source" in s:
        src = s.get("source_strength") or {}
        data_files.append(
            f"source {src.get('model', s.get('source', ''))}: {src.get('citation', '')}"
        )
    for key in ("beam", "machine", "dosimetry_formalism"):
        if s.get(key):
            data_files.append(f"{key.replace('_', ' ')}: {s[key]}")
    for shield in s.get("shields", []):
        data_files.append(f"shield materials: {shield.get('materials', '')}")
    rows = [
        ("iortopt version", s.get("iortopt_version")),
        (
            "device",
            f"{device.get('platform', '')} ({device.get('device_kind', '')}, "
            f"{fmt(device.get('device_count'))} device(s), JAX {device.get('jax_version', '')})",
        ),
        ("precision", s.get("precision")),
        ("grid (z, y, x voxels)", s.get("grid_shape_zyx")),
        ("data files", "; ".join(dict.fromkeys(data_files)) or None),
        ("wall times (s)", s.get("wall_times_s")),
    ]
    return [(k, fmt(v)) for k, v in rows if v not in (None, "", [], {})]
