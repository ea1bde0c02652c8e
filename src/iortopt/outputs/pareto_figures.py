"""The trade-off figure of a Pareto set (``pareto.png``): one metric against another, coloured
by a third; non-dominated plans filled, dominated ones faint, the nominal plan (row 0) marked.
Drawn on the Agg canvas without pyplot and saved atomically, like :mod:`iortopt.outputs.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iortopt.outputs.figures import _new_figure, _save_png_atomic


def _label(column: str) -> str:
    structure, _, metric = column.partition(".")
    unit = " (%)" if metric.endswith("_percent") else " (Gy)" if metric.endswith("_gy") else ""
    return f"{structure} {metric.removesuffix('_percent').removesuffix('_gy')}{unit}"


def plot_tradeoff(
    columns: Sequence[np.ndarray],
    names: Sequence[str],
    non_dominated: np.ndarray,
    path: str | Path,
    title: str = "",
    nominal_index: int = 0,
) -> Path:
    """Scatter of ``columns[1]`` (y) against ``columns[0]`` (x), coloured by ``columns[2]`` when
    given (``names``: ``structure.metric`` of each); with one column, the values by plan."""
    keep = np.asarray(non_dominated, bool)
    x = np.asarray(columns[0], np.float64)
    if len(columns) >= 2:
        y, y_name = np.asarray(columns[1], np.float64), _label(names[1])
    else:
        x, y, y_name = np.arange(x.size, dtype=np.float64), x, _label(names[0])
    fig = _new_figure((6.4, 4.8))
    ax = fig.add_subplot()
    ax.scatter(x[~keep], y[~keep], s=6, c="0.8", label="dominated")
    colour = np.asarray(columns[2], np.float64)[keep] if len(columns) >= 3 else "tab:blue"
    dots = ax.scatter(x[keep], y[keep], s=10, c=colour, cmap="viridis", label="non-dominated")
    if len(columns) >= 3:
        fig.colorbar(dots, ax=ax, label=_label(names[2]))
    ax.scatter(
        x[nominal_index], y[nominal_index], s=80, marker="*", c="red", label="nominal", zorder=3
    )
    ax.set_xlabel(_label(names[0]) if len(columns) >= 2 else "plan")
    ax.set_ylabel(y_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save_png_atomic(fig, path)
