"""Report figures: cumulative DVHs and orthogonal dose slices with isodoses, saved as PNG.

matplotlib is imported inside the functions (importing this module stays cheap) and figures are
drawn on the non-interactive Agg canvas directly, without pyplot, so no global backend or figure
state is touched. Each PNG is written to a temporary file in the destination directory and then
renamed over the final name, so a crash never leaves a half-written PNG under that name.

Slice display follows the usual radiological orientation for DICOM patient coordinates (LPS):
axial with x to the right and y downwards, coronal with x to the right and z upwards, sagittal
with y to the right and z upwards; axes in mm with equal aspect. With the case's HU given, each
dose slice is drawn over the CT (grey, window ``CT_WINDOW_HU``), so the isodoses can be read
against the anatomy.

Every figure of a plan draws a structure in the same colour: :func:`structure_colours` maps the
case's structure names (in the case's order) to colours, and the plan writer passes that one map
to both figures (and to the label image of plan.zarr). Isodose lines are labelled in Gy and, when
the prescription is given, in % of it; the DVH carries a marker at each clinical goal's point.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from iortopt.cases.case import Structure
from iortopt.evaluation.dvh import DVH
from iortopt.grid import Grid

_STRUCTURE_COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip
#: Face colours of the goal markers on the DVH.
GOAL_MET_COLOUR = "#00c853"
GOAL_NOT_MET_COLOUR = "#ff1744"
_DWELL_MARKER = dict(marker="o", ms=4.5, mfc="white", mec="k", mew=1.0)
_SHIELD_MARKER = dict(marker="s", ms=2.0, mfc="dimgray", mec="none")
#: Grey-scale window of the CT under the dose slices (HU): wide enough to show air, lung, fat,
#: soft tissue and bone apart.
CT_WINDOW_HU = (-1000.0, 1000.0)


def structure_colours(names: Sequence[str]) -> dict[str, str]:
    """Colour (``"#rrggbb"``) of each structure, by its position in ``names`` (pass the case's
    structure names in the case's order, so every figure and the label image agree)."""
    return {name: _STRUCTURE_COLOURS[k % len(_STRUCTURE_COLOURS)] for k, name in enumerate(names)}


def goal_point(goal: Mapping, dvh: DVH, prescription_gy: float | None):
    """Where a clinical goal lies on a cumulative DVH: (dose Gy, volume %), or None.

    ``D<x>_gy`` -> (limit, x %); ``D<x>cc_gy`` -> (limit, x cm3 as % of the structure);
    ``V<x>_percent`` -> (x % of the prescription, limit); ``max_gy`` -> (limit, 0 %);
    ``min_gy`` -> (limit, 100 %). Goals on other metrics (mean, HI, volume) have no DVH point.
    """
    metric, limit = goal["metric"], float(goal["limit"])
    if m := re.fullmatch(r"D(\d+(?:\.\d+)?)_gy", metric):
        return limit, float(m.group(1))
    if m := re.fullmatch(r"D(\d+(?:\.\d+)?)cc_gy", metric):
        if dvh.total_volume_cm3 <= 0:
            return None
        return limit, min(100.0, 100.0 * float(m.group(1)) / dvh.total_volume_cm3)
    if m := re.fullmatch(r"V(\d+(?:\.\d+)?)_percent", metric):
        if prescription_gy is None:
            return None
        return float(m.group(1)) / 100.0 * prescription_gy, limit
    if metric == "max_gy":
        return limit, 0.0
    if metric == "min_gy":
        return limit, 100.0
    return None


def goal_text(goal: Mapping) -> str:
    """Short text of a goal on the DVH, e.g. ``"ureter D0.1cc <= 15 Gy"``."""
    metric = str(goal["metric"])
    unit = " %" if metric.endswith("_percent") else " Gy" if metric.endswith("_gy") else ""
    short = metric.removesuffix("_percent").removesuffix("_gy")
    return f"{goal['structure']} {short} {goal['op']} {float(goal['limit']):g}{unit}"


def isodose_label(level_gy: float, prescription_gy: float | None) -> str:
    """``"10 Gy"``, or ``"10 Gy (100 %)"`` with the prescription known."""
    if prescription_gy is None or not prescription_gy > 0:
        return f"{level_gy:g} Gy"
    return f"{level_gy:g} Gy ({100.0 * level_gy / prescription_gy:.0f} %)"


def _new_figure(figsize):
    # Margins are set by hand (fig.subplots_adjust) rather than by a layout engine: constrained
    # layout measured ~0.15 s per dose-slice figure on the 2-core CPU, a tenth of a warm run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


#: Heights (inches) of the text rows the slice figure's margins hold: one legend row, the tick
#: labels plus axis label under a panel, the suptitle plus the panel titles.
_LEGEND_ROW_IN, _XLABEL_IN, _TITLES_IN = 0.24, 0.62, 0.72


def _save_png_atomic(fig, path) -> Path:
    """Write ``fig`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the PNG gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def plot_dvh(
    dvhs: Mapping[str, DVH],
    path,
    prescription_gy=None,
    title=None,
    colours: Mapping[str, str] | None = None,
    goals: Sequence[Mapping] = (),
) -> Path:
    """Cumulative DVH curves (volume %, dose Gy) of several structures, saved as a PNG.

    Args:
        dvhs: structure name -> DVH (see :func:`iortopt.evaluation.dvh.cumulative_dvh`).
        path: output PNG path.
        prescription_gy: draws a dashed vertical line at the prescription if given.
        title: figure title.
        colours: structure name -> colour (:func:`structure_colours`); default by order in
            ``dvhs``.
        goals: clinical goals as evaluated (``structure``, ``metric``, ``op``, ``limit``,
            ``met``): a marker at each goal's point (:func:`goal_point`) on its structure's
            DVH, filled green if met and red if not, pointing up for ``>=`` and down for ``<=``,
            numbered in the structure's colour; the legend gives each number's goal
            (:func:`goal_text`) and whether it is met.

    Returns:
        The output path.
    """
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    by_name = structure_colours(list(dvhs))
    by_name.update(colours or {})
    fig = _new_figure((7.5, 5.0))
    ax = fig.add_subplot()
    for name, dvh in dvhs.items():
        colour = by_name[name]
        label = f"{name} ({dvh.total_volume_cm3:.3g} cm³)"  # not mathtext: ~35 ms to parse
        ax.plot(dvh.dose_gy, 100.0 * dvh.volume_fraction, color=colour, lw=1.8, label=label)
    if prescription_gy is not None:
        ax.axvline(prescription_gy, color="k", ls="--", lw=1.0,
                   label=f"prescription {prescription_gy:g} Gy")  # fmt: skip
    goal_handles = []
    for number, goal in enumerate(goals, start=1):
        dvh = dvhs.get(goal["structure"])
        point = None if dvh is None else goal_point(goal, dvh, prescription_gy)
        if point is None:
            continue
        met = bool(goal["met"])
        style = dict(
            ls="none",
            marker="^" if goal["op"] == ">=" else "v",
            ms=9,
            mfc=GOAL_MET_COLOUR if met else GOAL_NOT_MET_COLOUR,
            mec="k",
            mew=1.0,
        )
        ax.plot(*point, zorder=5, clip_on=False, **style)
        # a number beside the marker, the goal itself in the legend: labels never overlap
        ax.annotate(
            str(number),
            point,
            xytext=(5, 3),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold",
            color=by_name[goal["structure"]],
            path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
            zorder=6,
        )
        status = "met" if met else "NOT met"
        goal_handles.append(
            Line2D([], [], label=f"{number}: {goal_text(goal)} ({status})", **style)
        )
    handles = ax.get_legend_handles_labels()[0] + goal_handles
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.93 if title else 0.97)
    return _save_png_atomic(fig, path)


def _default_centre_xyz_mm(grid: Grid, structures: Sequence[Structure]) -> np.ndarray:
    """Occupancy-weighted centroid (x, y, z) mm of the first target; the grid centre if none."""
    for s in structures:
        occ = np.asarray(s.occupancy, dtype=np.float64)
        total = occ.sum()
        if s.role == "target" and total > 0:
            index_zyx = [
                (occ.sum(axis=tuple(a for a in range(3) if a != k)) * np.arange(n)).sum() / total
                for k, n in enumerate(grid.shape_zyx)
            ]
            return grid.index_to_mm(index_zyx)
    return grid.index_to_mm((np.asarray(grid.shape_zyx) - 1) / 2.0)


def _extent_mm(grid: Grid, axis: str) -> tuple[float, float]:
    """Outer edges (mm) of the voxels along ``axis``."""
    coords = grid.axis_mm(axis)
    half = grid.spacing_xyz_mm["xyz".index(axis)] / 2.0
    return float(coords[0] - half), float(coords[-1] + half)


def plot_dose_slices(
    dose_gy,
    grid: Grid,
    structures: Sequence[Structure],
    path,
    isodose_levels_gy: Sequence[float],
    centre_xyz_mm=None,
    dwell_positions_mm=None,
    title=None,
    dose_max_gy=None,
    markers_label: str = "dwell positions",
    shield_points_mm=None,
    hu=None,
    colours: Mapping[str, str] | None = None,
    prescription_gy: float | None = None,
) -> Path:
    """Axial, coronal and sagittal dose slices through one point, saved as a PNG.

    Args:
        dose_gy: (nz, ny, nx) dose, Gy, on ``grid``.
        grid: the dose grid.
        structures: structures on ``grid``; outlined at occupancy 0.5, one colour each.
        path: output PNG path.
        isodose_levels_gy: isodose lines drawn and labelled (Gy).
        centre_xyz_mm: (3,) (x, y, z) mm the slices pass through (nearest voxel centre); default
            the first target's occupancy-weighted centroid, else the grid centre.
        dwell_positions_mm: optional (n, 3) (x, y, z) mm; those within one voxel spacing of a slice
            are drawn on it.
        title: figure title.
        dose_max_gy: top of the colour scale; default 1.25 x the highest isodose level (the dose
            near a source is far higher than any level of interest), else the max dose.
        shield_points_mm: optional (k, 3) points sampling shield surfaces; those within half a
            voxel of a slice are drawn on it (the shield's cut through the slice).
        hu: optional (nz, ny, nx) HU on ``grid`` (the case's CT): drawn in grey under the dose.
        colours: structure name -> colour (:func:`structure_colours`); default by order in
            ``structures``.
        prescription_gy: isodose labels also give % of this dose when given.

    Returns:
        The output path.
    """
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    dose = np.asarray(dose_gy, dtype=np.float64)
    if dose.shape != grid.shape_zyx:
        raise ValueError(f"dose shape {dose.shape} does not match grid shape {grid.shape_zyx}")
    levels = np.sort(np.asarray(isodose_levels_gy, dtype=np.float64).ravel())
    if dose_max_gy is None:
        dose_max_gy = 1.25 * levels[-1] if levels.size else float(np.nanmax(dose))
    dose_max_gy = float(dose_max_gy) if dose_max_gy > 0 else 1.0
    wash_floor_gy = 0.5 * levels[0] if levels.size else 0.0
    ct = None if hu is None else np.asarray(hu, dtype=np.float32)
    if ct is not None and ct.shape != grid.shape_zyx:
        raise ValueError(f"hu shape {ct.shape} does not match grid shape {grid.shape_zyx}")

    centre = (
        _default_centre_xyz_mm(grid, structures)
        if centre_xyz_mm is None
        else np.asarray(centre_xyz_mm, dtype=np.float64)
    )
    k, j, i = np.clip(
        np.rint(grid.mm_to_index(centre)).astype(int), 0, np.array(grid.shape_zyx) - 1
    )
    slice_mm = grid.index_to_mm((k, j, i))  # (x, y, z) of the voxel the slices pass through
    dwells = (
        None if dwell_positions_mm is None else np.asarray(dwell_positions_mm, float).reshape(-1, 3)
    )

    # (title, array index, horizontal axis, vertical axis, normal axis, invert vertical axis)
    panels = (
        ("axial", np.s_[k, :, :], "x", "y", "z", True),
        ("coronal", np.s_[:, j, :], "x", "z", "y", False),
        ("sagittal", np.s_[:, :, i], "y", "z", "x", False),
    )
    halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
    by_name = structure_colours([s.name for s in structures])
    by_name.update(colours or {})
    colours = [by_name[s.name] for s in structures]
    fig = _new_figure((16.0, 6.0))
    axes = fig.subplots(1, 3)
    image = None
    any_dwell_drawn = False
    any_shield_drawn = False
    shield_pts = (
        None if shield_points_mm is None else np.asarray(shield_points_mm, float).reshape(-1, 3)
    )
    for ax, (name, sl, h, v, normal, invert) in zip(axes, panels, strict=True):
        # Each 2-D slice has rows along the vertical axis, columns along the horizontal one.
        h_mm, v_mm = grid.axis_mm(h), grid.axis_mm(v)
        plane = dose[sl]
        if ct is not None:
            ax.imshow(
                ct[sl],
                origin="lower",
                extent=(*_extent_mm(grid, h), *_extent_mm(grid, v)),
                cmap="gray",
                vmin=CT_WINDOW_HU[0],
                vmax=CT_WINDOW_HU[1],
                interpolation="nearest",
            )
        image = ax.imshow(
            np.ma.masked_less(plane, wash_floor_gy),
            origin="lower",
            extent=(*_extent_mm(grid, h), *_extent_mm(grid, v)),
            cmap="turbo",
            vmin=0.0,
            vmax=dose_max_gy,
            alpha=0.6,
            interpolation="nearest",
        )
        in_range = levels[(levels > np.nanmin(plane)) & (levels < np.nanmax(plane))]
        if in_range.size:
            cs = ax.contour(h_mm, v_mm, plane, levels=in_range, colors="k", linewidths=0.9)
            ax.clabel(
                cs, fmt=lambda lv: isodose_label(lv, prescription_gy), fontsize=7, inline=True
            )
        for s, colour in zip(structures, colours, strict=True):
            occ = np.asarray(s.occupancy, dtype=np.float64)[sl]
            if occ.min() < 0.5 < occ.max():
                cs = ax.contour(h_mm, v_mm, occ, levels=[0.5], linewidths=1.8, colors=[colour])
                cs.set_path_effects(halo)
        if dwells is not None:
            kn, kh, kv = ("xyz".index(a) for a in (normal, h, v))
            near = np.abs(dwells[:, kn] - slice_mm[kn]) <= grid.spacing_xyz_mm[kn]
            ax.plot(dwells[near, kh], dwells[near, kv], ls="none", **_DWELL_MARKER)
            any_dwell_drawn |= bool(near.any())
        if shield_pts is not None:
            kn, kh, kv = ("xyz".index(a) for a in (normal, h, v))
            near = np.abs(shield_pts[:, kn] - slice_mm[kn]) <= 0.5 * grid.spacing_xyz_mm[kn]
            ax.plot(shield_pts[near, kh], shield_pts[near, kv], ls="none", **_SHIELD_MARKER)
            any_shield_drawn |= bool(near.any())
        # Fixed limits: dwell positions off the grid must not stretch the panel.
        ax.set_xlim(*_extent_mm(grid, h))
        ax.set_ylim(*(_extent_mm(grid, v)[::-1] if invert else _extent_mm(grid, v)))
        ax.set_aspect("equal")
        ax.set_title(f"{name}, {normal} = {slice_mm['xyz'.index(normal)]:.1f} mm")
        ax.set_xlabel(f"{h} (mm)")
        ax.set_ylabel(f"{v} (mm)")

    handles = [
        Line2D([], [], color=colour, lw=1.8, label=s.name)
        for s, colour in zip(structures, colours, strict=True)
    ]
    if levels.size:
        unit = "Gy" if prescription_gy is None else f"Gy, % of {prescription_gy:g} Gy"
        handles.append(Line2D([], [], color="k", lw=0.9, label=f"isodose ({unit})"))
    if any_dwell_drawn:
        handles.append(Line2D([], [], ls="none", label=f"{markers_label} (within 1 voxel)",
                              **_DWELL_MARKER))  # fmt: skip
    if any_shield_drawn:
        handles.append(Line2D([], [], ls="none", label="shields", **_SHIELD_MARKER))
    ncols = min(len(handles), 6)
    height_in = fig.get_figheight()
    legend_in = (-(-len(handles) // ncols) * _LEGEND_ROW_IN + 0.1) if handles else 0.0
    bottom = (legend_in + _XLABEL_IN) / height_in
    top = 1.0 - (_TITLES_IN if title else _TITLES_IN - 0.3) / height_in
    fig.subplots_adjust(left=0.045, right=0.9, bottom=bottom, top=top, wspace=0.28)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncols=ncols, bbox_to_anchor=(0.47, 0.005))
    span = top - bottom
    cax = fig.add_axes((0.925, bottom + 0.1 * span, 0.011, 0.8 * span))
    fig.colorbar(image, cax=cax, label="dose (Gy)", extend="max")
    if title:
        fig.suptitle(title)
    return _save_png_atomic(fig, path)
