"""Independent second check of a brachy RTPLAN (``iortopt check-plan``).

The plan is read by :func:`iortopt.dicom.rtplan_reader.read_brachy_plan` and recomputed with
iortopt's TG-43 engine (:func:`iortopt.physics.tg43.dose_gy`, 2-D line-source formalism) with the
strength the TPS used (as written; see the reader). Doses are totals: each dwell's time of one
pulse x its channel's pulses x the fractions.

* Points: every dose reference with coordinates and a TPS dose
  (:func:`iortopt.dicom.rtplan_reader.tps_point_dose_gy`; ``tps_from`` says which encoding) is
  compared: ``diff_percent`` = 100 (iortopt - TPS) / TPS, within tolerance when
  |diff| <= ``tolerance_percent``.
* RTDOSE: iortopt's dose on the TPS's grid; an RTDOSE of DoseSummationType PLAN / MULTI_PLAN holds
  every fraction, any other type (FRACTION, BRACHY, ...) one fraction, and iortopt's dose is
  scaled to match. Statistics of the difference over voxels with TPS dose >= the gamma cut-off;
  3-D gamma (pymedphys.gamma, global, normalised to the plan's prescription or else the TPS
  maximum, low-dose cut-off ``gamma_cutoff_percent`` of it, scipy interpolation); passes when the
  pass rate >= ``gamma_pass_percent``.
* DVH (RTDOSE and RTSTRUCT): per ROI iortopt's metrics of both doses
  (:func:`iortopt.evaluation.dvh.structure_metrics`, fractional occupancy on the TPS grid).
  Prescription for V100/150/200: the sum of the Brachy Application Setup Doses x fractions
  (x pulses for PDR).
* Source strength: S_K as written and decayed to the treatment time (plan date-time unless
  given), the decay factor and the dwell-time scaling an afterloader applies (1 / factor); total
  dwell time (all pulses) and Total Reference Air Kerma (S_K used x the dwell time of one pulse of
  one fraction, uGy m^2, as a setup's Total Reference Air Kerma) against the plan's.
* Frames of reference: an RTDOSE (or RTSTRUCT) in another frame than the RTPLAN is refused.

The check passes when every point and the gamma criterion pass; it needs at least one point or an
RTDOSE.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iortopt.dicom.rtplan_reader import BrachyPlan, is_placeholder, tps_point_dose_gy
from iortopt.errors import InputFileError

CHECK_JSON = "check.json"
CHECK_PNG = "check.png"
DVH_METRICS = (
    "volume_cm3",
    "D98_gy",
    "D90_gy",
    "D2cc_gy",
    "D0.1cc_gy",
    "V100_percent",
    "V150_percent",
    "V200_percent",
    "mean_gy",
    "max_gy",
)
ALL_FRACTIONS = ("PLAN", "MULTI_PLAN")
#: Gamma is evaluated on at most this many voxels above the cut-off (a fixed random subset).
GAMMA_MAX_POINTS = 100_000
GAMMA_SEED = 20261202


@dataclass(frozen=True)
class CheckSettings:
    tolerance_percent: float = 2.0
    gamma_dose_percent: float = 3.0
    gamma_distance_mm: float = 2.0
    gamma_cutoff_percent: float = 10.0
    gamma_pass_percent: float = 95.0
    treatment: dt.datetime | None = None


@dataclass(eq=False)
class CheckResult:
    """What :func:`run_check` found: ``report`` is the check.json document."""

    report: dict
    passed: bool
    tps_dose: np.ndarray | None = None
    our_dose: np.ndarray | None = None
    grid: object = None
    dvhs: dict = field(default_factory=dict)


def iortopt_dose_gy(plan: BrachyPlan, source, points_mm: np.ndarray, n_fractions: int):
    """iortopt's total dose (Gy) at (P, 3) points: times x pulses x ``n_fractions``, S_K as the
    TPS used."""
    import jax

    from iortopt.physics.tg43 import dose_gy, make_kernel

    kernel = make_kernel(source, "2d")
    sk = plan.sk_tps_U

    # One compiled program (the kernel's static axis sizes stay Python values in the closure).
    compiled = jax.jit(lambda pts, pos, axes, t: dose_gy(pts, pos, axes, t, kernel, sk))
    times = plan.times_s * plan.pulses * n_fractions
    points = np.asarray(points_mm, float).reshape(-1, 3)
    return np.asarray(compiled(points, plan.positions_mm, plan.axes, times), float)


def prescription_gy(plan: BrachyPlan) -> float | None:
    """Sum of the Brachy Application Setup Doses x fractions (x pulses for PDR); None if absent."""
    if not plan.setup_dose_gy:
        return None
    pulses = max(c.n_pulses for c in plan.channels)
    return float(sum(plan.setup_dose_gy.values())) * plan.n_fractions * pulses


def decay_report(plan: BrachyPlan, treatment: dt.datetime | None, source=None) -> dict:
    """S_K as written and at treatment, the decay factor and the afterloader's time scaling
    (half-life: the plan's, else the dataset ``source``'s)."""
    src = plan.source
    half_life = src.half_life_days or (source.half_life_days if source is not None else None)
    when = treatment or plan.plan_datetime
    out = {
        "sk_written_U": src.sk_U,
        "sk_reference_datetime": src.reference_datetime.isoformat()
        if src.reference_datetime
        else None,
        "treatment_datetime": when.isoformat() if when else None,
        "treatment_from": "--treatment" if treatment else "plan date-time",
        "half_life_days": half_life,
        "sk_at_treatment_U": None,
        "decay_factor": None,
        "dwell_time_scaling": None,
    }
    if is_placeholder(when) or is_placeholder(src.reference_datetime) or not half_life:
        return out
    days = (when - src.reference_datetime).total_seconds() / 86400.0
    factor = 2.0 ** (-days / half_life)
    out.update(
        sk_at_treatment_U=src.sk_U * factor,
        decay_factor=factor,
        dwell_time_scaling=1.0 / factor,
        elapsed_days=days,
    )
    return out


def point_rows(plan: BrachyPlan, source, tolerance_percent: float) -> list[dict]:
    """One row per dose reference with coordinates; one without a TPS dose has ``tps_gy``,
    ``diff_percent`` and ``within_tolerance`` None (reported, not judged)."""
    refs = [r for r in plan.dose_references if r.xyz_mm is not None]
    if not refs:
        return []
    ours = iortopt_dose_gy(plan, source, np.array([r.xyz_mm for r in refs]), plan.n_fractions)
    rows = []
    for ref, our in zip(refs, ours, strict=True):
        tps_gy, how = tps_point_dose_gy(plan, ref)
        diff = within = None
        if tps_gy is not None:
            diff = 100.0 * (our - tps_gy) / tps_gy if tps_gy > 0 else math.nan
            within = bool(abs(diff) <= tolerance_percent)
        rows.append(
            {
                "name": ref.name,
                "number": ref.number,
                "xyz_mm": list(ref.xyz_mm),
                "tps_gy": tps_gy,
                "iortopt_gy": float(our),
                "diff_percent": diff,
                "within_tolerance": within,
                "tps_from": how,
            }
        )
    return rows


def judged(points: list[dict]) -> list[dict]:
    """The points with a TPS dose."""
    return [p for p in points if p["within_tolerance"] is not None]


def gamma_pass(tps, ours, grid, settings: CheckSettings, norm_gy: float) -> dict:
    """3-D global gamma of ``ours`` against ``tps`` (both (nz, ny, nx) on ``grid``)."""
    import warnings

    from pymedphys import gamma

    axes = tuple(grid.axis_mm(a) for a in "zyx")
    n_above = int(np.count_nonzero(tps >= settings.gamma_cutoff_percent / 100.0 * norm_gy))
    subset = GAMMA_MAX_POINTS if n_above > GAMMA_MAX_POINTS else None
    state = np.random.get_state()  # pymedphys draws the subset with the global generator
    np.random.seed(GAMMA_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = gamma(
            axes,
            tps,
            axes,
            ours,
            settings.gamma_dose_percent,
            settings.gamma_distance_mm,
            lower_percent_dose_cutoff=settings.gamma_cutoff_percent,
            global_normalisation=norm_gy,
            interp_fraction=5,
            max_gamma=1.1,
            skip_once_passed=True,
            interp_algo="scipy",
            random_subset=subset,
            quiet=True,
        )
    np.random.set_state(state)
    valid = np.isfinite(values)
    rate = 100.0 * float(np.mean(values[valid] <= 1.0)) if valid.any() else math.nan
    return {
        "criterion": f"{settings.gamma_dose_percent:g}%/{settings.gamma_distance_mm:g} mm global",
        "normalisation_gy": norm_gy,
        "cutoff_percent": settings.gamma_cutoff_percent,
        "n_points": int(valid.sum()),
        "n_points_above_cutoff": n_above,
        "random_subset": subset,
        "pass_rate_percent": rate,
        "required_percent": settings.gamma_pass_percent,
        "passed": bool(rate >= settings.gamma_pass_percent),
        "implementation": "pymedphys.gamma (scipy interpolation)",
    }


def dose_difference_stats(tps, ours, cutoff_gy: float) -> dict:
    """Difference statistics (ours - TPS) over voxels with TPS dose >= ``cutoff_gy``."""
    mask = tps >= cutoff_gy
    diff = (ours - tps)[mask]
    rel = 100.0 * diff / tps[mask]
    if diff.size == 0:
        return {"n_voxels": 0}
    return {
        "n_voxels": int(diff.size),
        "cutoff_gy": cutoff_gy,
        "mean_diff_gy": float(diff.mean()),
        "max_abs_diff_gy": float(np.abs(diff).max()),
        "mean_diff_percent": float(rel.mean()),
        "p95_abs_diff_percent": float(np.percentile(np.abs(rel), 95)),
    }


def dvh_rows(tps, ours, grid, structure_set, thickness_mm, rx_gy) -> tuple[list[dict], dict]:
    """Per ROI with volume in the grid: our metrics of both doses side by side; and the DVHs."""
    from iortopt.dicom.rtstruct import rasterise_roi
    from iortopt.evaluation.dvh import cumulative_dvh, structure_metrics

    voxel = grid.voxel_volume_cm3
    rows, dvhs = [], {}
    for roi in structure_set.rois:
        weights = rasterise_roi(roi.contours, grid, thickness_mm, 4)
        if not np.any(weights > 0):
            continue
        a = structure_metrics(tps, weights, voxel, rx_gy or 1.0)
        b = structure_metrics(ours, weights, voxel, rx_gy or 1.0)
        row = {"name": roi.name}
        for key in DVH_METRICS:
            if key.startswith("V") and not rx_gy:
                continue
            row[f"tps_{key}"] = float(a[key])
            row[f"iortopt_{key}"] = float(b[key])
        rows.append(row)
        dvhs[roi.name] = (cumulative_dvh(tps, weights, voxel), cumulative_dvh(ours, weights, voxel))
    return rows, dvhs


def run_check(
    plan: BrachyPlan,
    source,
    source_warnings: list[str],
    settings: CheckSettings,
    rtdose=None,
    structure_set=None,
) -> CheckResult:
    """Every comparison of the module docstring.

    Raises:
        InputFileError: nothing to compare (no point with coordinates and a TPS dose, and no
            RTDOSE).
    """
    points = point_rows(plan, source, settings.tolerance_percent)
    if not judged(points) and rtdose is None:
        raise InputFileError(
            f"{plan.path}: no DoseReferenceSequence point with DoseReferencePointCoordinates "
            "(300A,0018) and a TPS dose, and no --rtdose: nothing to check against"
        )
    total_time = float(np.sum(plan.times_s * plan.pulses))
    plan_time = float(sum(c.channel_total_time_s * c.n_pulses for c in plan.channels))
    trak_ours = plan.sk_tps_U * float(plan.times_s.sum()) / 3600.0
    rx = prescription_gy(plan)
    report = {
        "plan": plan.path,
        "vendor": plan.vendor,
        "treatment_type": plan.treatment_type,
        "plan_datetime": plan.plan_datetime.isoformat() if plan.plan_datetime else None,
        "source": {
            "plan_model": plan.source.model,
            "plan_isotope": plan.source.isotope,
            "dataset": source.key,
            "formalism": "TG-43 2-D line source",
        },
        "sk_used_U": plan.sk_tps_U,
        "sk_rule": plan.sk_rule,
        "decay": decay_report(plan, settings.treatment, source),
        "warnings": list(plan.warnings)
        + list(source_warnings)
        + _treatment_warning(plan, settings),
        "n_channels": len(plan.channels),
        "n_dwells": plan.n_dwells,
        "n_fractions": plan.n_fractions,
        "n_pulses": max(c.n_pulses for c in plan.channels),
        "total_time_s": total_time,
        "plan_channel_total_time_s": plan_time,
        "trak_iortopt_uGy_m2": trak_ours,
        "trak_plan_uGy_m2": plan.total_reference_air_kerma_plan,
        "trak_diff_percent": _percent(trak_ours, plan.total_reference_air_kerma_plan),
        "total_time_diff_percent": _percent(total_time, plan_time),
        "prescription_gy": rx,
        "axis_rules": _count(r for c in plan.channels for r in c.axis_rules),
        "channels": [
            {
                "number": c.number,
                "afterloader_channel_id": c.afterloader_channel_id,
                "source_applicator_id": c.source_applicator_id,
                "n_dwells": len(c.times_s),
                "time_s": float(c.times_s.sum()),
                "n_pulses": c.n_pulses,
                "pulse_interval_s": c.pulse_interval_s,
            }
            for c in plan.channels
        ],
        "tolerance_percent": settings.tolerance_percent,
        "points": points,
        "gamma": None,
        "dose_difference": None,
        "dvh": [],
    }
    passed = all(p["within_tolerance"] for p in judged(points))
    result = CheckResult(report, passed)
    if rtdose is not None:
        dose_frame = str(rtdose.dataset.get("FrameOfReferenceUID", "") or "")
        if dose_frame and plan.frame_of_reference_uid and dose_frame != plan.frame_of_reference_uid:
            raise InputFileError(
                f"{plan.path}: the RTPLAN is in frame of reference {plan.frame_of_reference_uid}, "
                f"the RTDOSE in {dose_frame}; they do not belong to the same study"
            )
        summation = str(rtdose.dataset.get("DoseSummationType", "") or "").upper()
        fractions = plan.n_fractions if summation in ALL_FRACTIONS else 1
        tps = np.asarray(rtdose.dose_gy, float)
        ours = iortopt_dose_gy(plan, source, rtdose.grid.points_mm(), fractions)
        ours = ours.reshape(rtdose.grid.shape_zyx)
        rx_grid = rx * fractions / plan.n_fractions if rx else None
        norm = rx_grid if rx_grid else float(tps.max())
        report["rtdose_summation"] = {"type": summation, "fractions_in_grid": fractions}
        report["gamma"] = gamma_pass(tps, ours, rtdose.grid, settings, norm)
        report["dose_difference"] = dose_difference_stats(
            tps, ours, settings.gamma_cutoff_percent / 100.0 * norm
        )
        passed = passed and report["gamma"]["passed"]
        mean_diff = report["dose_difference"].get("mean_diff_percent")
        if mean_diff is not None and abs(mean_diff) > settings.tolerance_percent:
            report["warnings"].append(
                f"iortopt's dose differs from the RTDOSE by {mean_diff:+.2f} % on average over "
                f"the voxels above the gamma cut-off (more than the {settings.tolerance_percent:g}"
                " % tolerance): a systematic difference that gamma hides in steep gradients"
            )
        result.tps_dose, result.our_dose, result.grid = tps, ours, rtdose.grid
        if structure_set is not None:
            from iortopt.outputs.external_dose import contour_slice_thickness_mm

            thickness = contour_slice_thickness_mm(structure_set, rtdose.grid.spacing_xyz_mm[2])
            rows, dvhs = dvh_rows(tps, ours, rtdose.grid, structure_set, thickness, rx_grid)
            report["dvh"], result.dvhs = rows, dvhs
    report["passed"] = bool(passed)
    report["second_check"] = second_check_summary(report)
    result.passed = bool(passed)
    return result


def _percent(ours: float, theirs: float | None) -> float | None:
    return None if not theirs else 100.0 * (ours - theirs) / theirs


def _treatment_warning(plan: BrachyPlan, settings: CheckSettings) -> list[str]:
    ref = plan.source.reference_datetime
    if settings.treatment and ref and settings.treatment < ref:
        return [
            f"the treatment time {settings.treatment.isoformat()} is before the source strength "
            f"reference date {ref.isoformat()}"
        ]
    return []


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def second_check_summary(report: dict) -> dict:
    """A flat dict a report can render: title, verdict, and label -> text lines."""
    points = judged(report["points"])
    worst = max((abs(p["diff_percent"]) for p in points), default=math.nan)
    decay = report["decay"]
    lines = {
        "Source": f"{report['source']['plan_model']} -> {report['source']['dataset']}",
        "S_K used (U)": f"{report['sk_used_U']:.1f} ({report['sk_rule']})",
        "Dwells": f"{report['n_dwells']} in {report['n_channels']} channels, "
        f"{report['total_time_s']:.1f} s (plan {report['plan_channel_total_time_s']:.1f} s)",
        "Points": f"{sum(p['within_tolerance'] for p in points)}/{len(points)} within "
        f"{report['tolerance_percent']:g} % (worst {worst:.2f} %)",
    }
    if decay["decay_factor"] is not None:
        lines["Decay to treatment"] = (
            f"x{decay['decay_factor']:.4f} (S_K {decay['sk_at_treatment_U']:.1f} U); afterloader "
            f"times x{decay['dwell_time_scaling']:.4f}"
        )
    if report["gamma"]:
        g = report["gamma"]
        lines["Gamma"] = f"{g['pass_rate_percent']:.1f} % pass at {g['criterion']}"
    return {
        "title": "Independent second check (TG-43)",
        "passed": report["passed"],
        "lines": lines,
        "warnings": report["warnings"],
    }


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _finite(value):
    """JSON has no nan: nan -> None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_check(folder: str | Path, result: CheckResult) -> None:
    """``check.json`` and ``check.png`` into ``folder`` (a temporary folder, published whole)."""
    folder = Path(folder)
    text = json.dumps(_finite(result.report), indent=2, default=_json_default)
    (folder / CHECK_JSON).write_text(text + "\n", encoding="utf-8")
    plot_check(result, folder / CHECK_PNG)


def plot_check(result: CheckResult, path: Path) -> Path:
    """Point differences; with an RTDOSE the dose difference on three slices through the hottest
    TPS voxel; with ROIs both DVHs (solid iortopt, dashed TPS)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from iortopt.io.store import atomic_path

    points = judged(result.report["points"])
    n_panels = bool(points) + (3 if result.tps_dose is not None else 0) + bool(result.dvhs)
    n_panels = max(n_panels, 1)
    # A fixed layout: the constrained layout engine would double the drawing time.
    fig = Figure(figsize=(4.2 * n_panels, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    width_in = 4.2 * n_panels
    fig.subplots_adjust(left=0.8 / width_in, right=1 - 0.15 / width_in, bottom=0.2, top=0.9)
    fig.subplots_adjust(wspace=0.45)
    k = 0
    if points:
        ax = axes[0]
        diffs = [p["diff_percent"] for p in points]
        ax.bar(
            range(len(points)),
            diffs,
            color=["C0" if p["within_tolerance"] else "C3" for p in points],
        )
        ax.set_xticks(range(len(points)), [p["name"][:10] for p in points], rotation=60, fontsize=7)
        tol = result.report["tolerance_percent"]
        ax.axhline(tol, ls="--", c="k", lw=0.8)
        ax.axhline(-tol, ls="--", c="k", lw=0.8)
        ax.set_ylabel("iortopt - TPS (%)")
        ax.set_title("dose reference points")
        k = 1
    if result.tps_dose is not None:
        tps, ours, grid = result.tps_dose, result.our_dose, result.grid
        diff = ours - tps
        iz, iy, ix = np.unravel_index(int(np.argmax(tps)), tps.shape)
        limit = float(np.percentile(np.abs(diff), 99)) or 1e-6
        for name, image, extent in (
            ("axial", diff[iz], _extent(grid, "x", "y")),
            ("coronal", diff[:, iy, :], _extent(grid, "x", "z")),
            ("sagittal", diff[:, :, ix], _extent(grid, "y", "z")),
        ):
            ax = axes[k]
            shown = ax.imshow(
                image, origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit
            )
            ax.set_title(f"{name}: iortopt - TPS (Gy)", fontsize=9)
            ax.set_xlabel("mm", fontsize=8)
            k += 1
        fig.colorbar(shown, ax=axes[k - 1], shrink=0.8)
    if result.dvhs:
        ax = axes[k]
        for i, (name, (tps_dvh, our_dvh)) in enumerate(result.dvhs.items()):
            colour = f"C{i % 10}"
            ax.plot(our_dvh.dose_gy, 100 * our_dvh.volume_fraction, c=colour, label=name)
            ax.plot(tps_dvh.dose_gy, 100 * tps_dvh.volume_fraction, c=colour, ls="--")
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)")
        ax.set_title("DVH: iortopt (solid), TPS (dashed)", fontsize=9)
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")
    return Path(path)


def _extent(grid, horizontal: str, vertical: str) -> tuple[float, float, float, float]:
    h, v = grid.axis_mm(horizontal), grid.axis_mm(vertical)
    return (float(h[0]), float(h[-1]), float(v[0]), float(v[-1]))
