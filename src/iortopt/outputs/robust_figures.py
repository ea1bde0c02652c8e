"""Robust-evaluation outputs: the DVH-band figure, the summary ``robust`` dict and its table.

plot_dvh_bands(bands, path, ...)     dvh_bands.png: per structure the nominal DVH, the
                                     percentile band and the min-max envelope over scenarios
robust_summary(...)                  the summary.json ``robust`` dict
print_robust_table(robust, console)  goal-satisfaction fractions and metric bands
bands_writer(...)                    ``extra_writer`` for :func:`plan_files.write_plan_outputs`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from iortopt.evaluation import robust_metrics
from iortopt.outputs.figures import _new_figure, _save_png_atomic, structure_colours

#: The file the DVH bands go to in a plan's output folder.
BANDS_PNG = "dvh_bands.png"


def plot_dvh_bands(
    bands: Mapping[str, Mapping[str, np.ndarray]],
    path,
    band_percent: tuple[float, float] = (10.0, 90.0),
    prescription_gy: float | None = None,
    title: str | None = None,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """DVH bands (:func:`iortopt.evaluation.robust_metrics.dvh_bands`) as a PNG: per structure the
    nominal curve (solid), the ``band_percent`` band (shaded) and the min-max envelope (dotted)."""
    by_name = structure_colours(list(bands))
    by_name.update(colours or {})
    fig = _new_figure((7.5, 5.0))
    ax = fig.add_subplot()
    low, high = band_percent
    for name, b in bands.items():
        c = by_name[name]
        x = b["dose_gy"]
        ax.fill_between(x, 100 * b["low"], 100 * b["high"], color=c, alpha=0.25, lw=0)
        ax.plot(x, 100 * b["min"], color=c, ls=":", lw=0.9)
        ax.plot(x, 100 * b["max"], color=c, ls=":", lw=0.9)
        ax.plot(x, 100 * b["nominal"], color=c, lw=1.8, label=name)
    if prescription_gy is not None:
        ax.axvline(
            prescription_gy,
            color="k",
            ls="--",
            lw=1.0,
            label=f"prescription {prescription_gy:g} Gy",
        )
    ax.plot([], [], color="grey", lw=6, alpha=0.25, label=f"{low:g}-{high:g} % of scenarios")
    ax.plot([], [], color="grey", ls=":", label="min-max over scenarios")
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return _save_png_atomic(fig, path)


def robust_summary(
    scenario_set: Mapping,
    per_scenario: Sequence[Mapping],
    goals: Sequence,
    band_percent: tuple[float, float],
    extra: Mapping | None = None,
) -> dict:
    """The summary.json ``robust`` dict.

    ``scenario_set``: how the scenarios were made (``kind``, ``names``, ``magnitudes`` with their
    unit and source, ``optimise``, ``aggregate``, ...); ``per_scenario``: the metrics of each
    scenario (scenario 0 nominal); ``goals``: the plan's goal specs.
    """
    out = dict(scenario_set)
    out["n_scenarios"] = len(per_scenario)
    out["band_percent"] = list(band_percent)
    out["goals"] = robust_metrics.goal_fractions(goals, per_scenario, scenario_set.get("names"))
    out["metrics"] = robust_metrics.metric_bands(per_scenario, band_percent)
    out |= dict(extra or {})
    return out


def print_robust_table(robust: Mapping, console: Console) -> None:
    """The goal-satisfaction fractions and, for each goal's metric, its band over scenarios."""
    low, high = robust["band_percent"]
    table = Table(
        title=f"robust evaluation: {robust['n_scenarios']} scenarios ({robust['kind']})"
        + (f", optimised for {robust['aggregate']}" if robust.get("optimise") else ""),
    )
    for col in ("goal", "met in", "nominal", "min", f"p{low:g}", "p50", f"p{high:g}", "max"):
        table.add_column(col, justify="left" if col == "goal" else "right")
    for g in robust["goals"]:
        row = robust["metrics"][g["structure"]][g["metric"]]
        cells = [
            row.get(k, float("nan"))
            for k in ("nominal", "min", f"p{low:g}", "p50", f"p{high:g}", "max")
        ]
        table.add_row(
            f"{g['structure']} {g['metric']} {g['op']} {g['limit']:g}",
            f"{g['n_met']}/{robust['n_scenarios']} ({100 * g['fraction_met']:.0f} %)",
            *(f"{v:.2f}" for v in cells),
        )
    console.print(table)
    assumed = [k for k, m in robust.get("magnitudes", {}).items() if m.get("assumed")]
    if assumed:
        console.print(
            f"assumed magnitudes (no published value): {', '.join(assumed)}", highlight=False
        )


def bands_writer(
    doses_gy: np.ndarray,
    weights: Mapping[str, np.ndarray],
    voxel_volume_cm3: float,
    band_percent: tuple[float, float],
    prescription_gy: float,
    title: str,
    colours: Mapping[str, str] | None = None,
    then: Callable[[Path], None] | None = None,
) -> Callable[[Path], None]:
    """``write(folder)``: dvh_bands.png of ``doses_gy`` (S, P) into ``folder``, then ``then``
    (e.g. the DICOM writer), for the plan writer's ``extra_writer``."""

    def write(folder: Path) -> None:
        bands = robust_metrics.dvh_bands(doses_gy, weights, voxel_volume_cm3, band_percent)
        plot_dvh_bands(
            bands, Path(folder) / BANDS_PNG, band_percent, prescription_gy, title, colours
        )
        if then is not None:
            then(folder)

    return write


def case_bands_writer(
    doses_gy: np.ndarray,
    weights: Mapping[str, np.ndarray],
    structures,
    voxel_volume_cm3: float,
    band_percent: tuple[float, float],
    prescription_gy: float,
    plan_name: str,
    then: Callable[[Path], None] | None = None,
) -> Callable[[Path], None]:
    """:func:`bands_writer` for a case: the clinical structures (role not "other") of
    ``structures`` in the plan's fixed structure colours, titled with the scenario count."""
    from iortopt.outputs.figures import structure_colours

    clinical = {s.name for s in structures if s.role != "other"}
    return bands_writer(
        doses_gy,
        {k: v for k, v in weights.items() if k in clinical},
        voxel_volume_cm3,
        band_percent,
        prescription_gy,
        f"{plan_name}: DVH bands over {len(doses_gy)} scenarios",
        structure_colours([s.name for s in structures]),
        then=then,
    )
