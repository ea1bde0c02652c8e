"""One 50 kV X-ray sphere plan from config to outputs (modality ``xray_sphere``).

    prepare_xray(config, dtype, builtin) -> PreparedXray   the case side (the breast phantom's
                                                  :class:`SphereCaseSide` from
                                                  :mod:`iortopt.phantoms.breast`, or a CT +
                                                  RTSTRUCT case: sphere_problem), beam, names
    run_xray(prepared, out_dir) -> XrayRunResult  catalogue comparison + continuous relaxation
                                                  (:func:`iortopt.modalities.xray_sphere.choice.plan_spheres`),
                                                  metrics/goals, the same outputs as HDR plans

``case.kind = "builtin_breast"`` plans the breast phantom (:mod:`iortopt.cases.breast`, as
:mod:`iortopt.phantoms.breast` sets it up);
``case.kind = "dicom"`` the imported case, with the cavity, target, skin and fit rules of
:mod:`iortopt.modalities.xray_sphere.sphere_problem` (``[xray] centre_mm``,
``cavity_radius_mm``, ``target_thickness_mm``, ``fit_tolerance_mm``; ``[[shields]]`` as on the
phantom, while the target is the tissue shell).

``summary.json`` carries the applicator comparison table (one row per catalogue size), the chosen
size with the reason (``chosen_applicator``: ``diameter_cm``, ``centre_mm``, ``time_min``), the
dosimetry formalism, the prescription and the continuous-radius optimum. ``[output] dicom = true``
adds ``dicom/RTDOSE.dcm`` with the same fields in its description (no RTPLAN: see
:mod:`iortopt.outputs.dicom_export`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from iortopt.cases.case import Case
from iortopt.compute.run_context import RunContext
from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities import COMMON_SECTIONS, stage_settings
from iortopt.modalities.xray_sphere.choice import SphereSetting, plan_spheres
from iortopt.outputs.dicom_export import XRAY_NO_RTPLAN_NOTE, xray_writer
from iortopt.outputs.plan_files import (
    common_summary,
    evaluate_plan,
    print_notes_and_times,
    print_report,
    provenance,
    write_plan_outputs,
)
from iortopt.physics.xray import XrayBeam, load_xray_beam


@dataclass(frozen=True)
class SphereCaseSide:
    """The case side of a sphere plan on a built-in phantom, built by its adapter
    (:mod:`iortopt.phantoms`) from the ``[case.<phantom>]`` parameters."""

    setting: SphereSetting
    case: Case  # at a centred sphere: the structure names the config may use
    #: keyword arguments of ``shield_placement.build_specs`` naming the phantom whose surfaces
    #: shields may be given on (e.g. ``{"breast": params}``)
    shield_surfaces: dict = field(default_factory=dict)


@dataclass
class PreparedXray:
    config: PlanConfig
    beam: XrayBeam
    dtype: object
    setup_s: float
    shield_specs: list = field(default_factory=list)  # shield_placement.ShieldSpec
    setting: SphereSetting | None = None
    problem: object = None  # sphere_problem.SphereProblem of a DICOM case


@dataclass
class XrayRunResult:
    prepared: PreparedXray
    case: object
    dose_gy: np.ndarray
    summary: dict
    out_dir: Path


def prepare_xray(
    cfg: PlanConfig, dtype=jnp.float32, builtin: SphereCaseSide | None = None
) -> PreparedXray:
    """Validate the case side, the beam and every structure name; nothing is written.

    ``builtin``: the built-in phantom's case side (:class:`SphereCaseSide`, from
    :mod:`iortopt.phantoms`); None for a DICOM case, which is imported here.

    Raises:
        ConfigError / SourceDataError naming the field or file at fault.
    """
    t0 = time.perf_counter()
    if cfg.robust is not None:
        from iortopt.modalities.xray_sphere.robust import check

        check(cfg)
    beam = load_xray_beam(cfg.xray.beam)
    sizes = cfg.xray.catalogue_diameters_cm
    if sizes is not None:
        unknown = [d for d in sizes if not np.any(np.isclose(beam.diameters_cm, d))]
        if unknown:
            raise ConfigError(
                f"xray.catalogue_diameters_cm: {unknown} not in beam {beam.name!r} "
                f"(has {list(map(float, beam.diameters_cm))})"
            )
    if cfg.case.kind == "dicom":
        return _prepare_dicom(cfg, beam, dtype, t0)
    # Differing from the default counts as given (a config dumped with every default loads).
    fields = type(cfg.xray).model_fields
    phantom_only = sorted(
        name for name in DICOM_FIELDS if getattr(cfg.xray, name) != fields[name].default
    )
    if phantom_only:
        raise ConfigError(
            f'xray.{phantom_only[0]}: for case.kind "dicom" only; the breast phantom\'s cavity, '
            "target thickness and fit tolerance are [case.breast] fields"
        )
    if builtin is None:
        raise ConfigError(
            f"case.kind {cfg.case.kind!r}: a built-in phantom's case is built by its adapter "
            "(iortopt.phantoms); prepare the plan with iortopt.pipeline.prepare"
        )
    case = builtin.case
    stage_settings.check_config_names(cfg, case)
    shield_specs = []
    if cfg.shields:
        from iortopt.optimisation.shield_placement import build_specs

        shield_specs = build_specs(
            cfg.shields, case, cfg.plan.modality, dtype, **builtin.shield_surfaces
        )
    return PreparedXray(cfg, beam, dtype, time.perf_counter() - t0, shield_specs, builtin.setting)


#: [xray] fields read only on DICOM cases.
DICOM_FIELDS = frozenset(
    {"centre_mm", "cavity_radius_mm", "target_thickness_mm", "fit_tolerance_mm"}
)


def _prepare_dicom(cfg: PlanConfig, beam: XrayBeam, dtype, t0: float) -> PreparedXray:
    """Import the CT + RTSTRUCT and build its sphere problem (cavity, body surface, rules)."""
    from iortopt.cases.dicom_case import import_case
    from iortopt.modalities.xray_sphere.sphere_problem import (
        SphereOptions,
        sphere_problem,
        sphere_setting,
    )

    x = cfg.xray
    extra = None
    if x.centre_mm is not None:
        # the crop must hold the largest applicator's shell about the given centre
        reach = max(beam.radii_mm) + x.target_thickness_mm + x.fit_tolerance_mm
        centre = np.asarray(x.centre_mm, float)
        extra = np.array([centre - reach, centre + reach])
    case = import_case(cfg.case.dicom, cfg.plan.name, extra)
    options = SphereOptions(
        target_name=cfg.prescription.structure,
        target_thickness_mm=x.target_thickness_mm,
        fit_tolerance_mm=x.fit_tolerance_mm,
        centre_mm=x.centre_mm,
        cavity_radius_mm=x.cavity_radius_mm,
        supersampling=cfg.case.dicom.supersample,
    )
    problem = sphere_problem(case, options)
    g = problem.geometry
    radius = float(np.linalg.norm(g.cavity_wall_mm - g.cavity_centre_mm, axis=-1).mean())
    case = problem.case_for(radius, g.cavity_centre_mm)
    stage_settings.check_config_names(cfg, case)
    shield_specs = []
    if cfg.shields:
        from iortopt.optimisation.shield_placement import build_specs

        if not np.isfinite(g.target_thickness_mm):
            raise ConfigError(
                f"shields: the shield placement scores the tissue shell around the applicator; "
                f"with the target {cfg.prescription.structure!r} a mapped ROI there is none "
                "(leave the target unmapped to plan shields, or remove [[shields]])"
            )
        # Surfaces fitted to a structure (surface = "roi") face the applicator's centre.
        shield_specs = build_specs(
            cfg.shields,
            case,
            cfg.plan.modality,
            dtype,
            applicator_points_mm=np.asarray(g.cavity_centre_mm, float)[None, :],
        )
    return PreparedXray(
        cfg,
        beam,
        dtype,
        time.perf_counter() - t0,
        shield_specs,
        sphere_setting(problem),
        problem,
    )


def run_xray(
    prepared: PreparedXray, out_dir: str | Path, ctx: RunContext | None = None
) -> XrayRunResult:
    """Choose the applicator size, position and time; evaluate and write every output."""
    cfg, x = prepared.config, prepared.config.xray
    robust_choice = robust_pose = None
    if cfg.robust is not None:
        from iortopt.modalities.xray_sphere.robust import choice_scenarios, pose_scenarios

        robust_choice, robust_pose = choice_scenarios(cfg), pose_scenarios(cfg)
    try:
        result = plan_spheres(
            prepared.setting,
            prepared.beam,
            prescription_gy=cfg.prescription.dose_gy,
            prescription_mode=x.prescription_mode,
            prescription_depth_mm=x.prescription_depth_mm,
            catalogue_diameters_cm=x.catalogue_diameters_cm,
            min_skin_distance_mm=x.min_skin_distance_mm,
            optimise_position=x.optimise_position,
            dtype=prepared.dtype,
            anisotropy=x.anisotropy,
            shield_specs=prepared.shield_specs or None,
            robust=robust_choice,
            robust_pose=robust_pose,
        )
    except ValueError as exc:
        raise ConfigError(f"xray: {exc}") from None
    case, dose = result.case, np.asarray(result.dose_gy, np.float32)
    evaluation = evaluate_plan(stage_settings.evaluation_settings(cfg), case, dose)
    chosen = result.chosen
    settings = stage_settings.output_settings(cfg)
    summary = common_summary(settings, case, evaluation, prepared.dtype)
    summary |= {
        "beam": result.beam_name,
        "dosimetry_formalism": result.formalism,
        "prescription_mode": x.prescription_mode,
        "prescription_depth_mm": (
            x.prescription_depth_mm if x.prescription_mode == "depth" else None
        ),
        "min_skin_distance_mm": x.min_skin_distance_mm,
        "chosen_applicator": chosen,
        "applicator_comparison": result.comparison,
        "continuous_relaxation": result.continuous,
        **({} if prepared.problem is None else {"cavity": _cavity_summary(prepared.problem)}),
        "notes": result.notes + ([XRAY_NO_RTPLAN_NOTE] if cfg.output.dicom else []),
        "wall_times_s": {"prepare_s": prepared.setup_s, **result.timings},
    }
    groups, shield_points = {}, None
    if result.shields:
        from iortopt.modalities.xray_sphere.shields import shield_report

        extra, groups, shield_points = shield_report(cfg, prepared.shield_specs, result, evaluation)
        summary |= extra
    out_dir = Path(out_dir)
    extra_writer = (
        xray_writer(
            stage_settings.dicom_plan_info(cfg),
            case,
            dose,
            evaluation["dvhs"],
            chosen,
            result.beam_name,
            result.formalism,
            prescription_mode=x.prescription_mode,
            prescription_depth_mm=x.prescription_depth_mm,
        )
        if cfg.output.dicom
        else None
    )
    if cfg.robust is not None:
        from iortopt.modalities.xray_sphere import robust as xray_robust

        t0 = time.perf_counter()
        summary["robust"], extra_writer = xray_robust.evaluate(
            cfg, case, chosen, prepared.beam, prepared.dtype, extra_writer, result.robust_pose
        )
        summary["wall_times_s"]["robust_evaluation_s"] = time.perf_counter() - t0
    centre = np.asarray(chosen["centre_mm"], float)
    write_plan_outputs(
        settings,
        case,
        dose,
        evaluation,
        summary,
        out_dir,
        applicator={
            "applicator": {
                "centre_mm": centre,
                "radius_mm": np.asarray(10.0 * float(chosen["diameter_cm"]) / 2.0),
                "time_min": np.asarray(float(chosen["time_min"])),
            }
        }
        | groups,
        provenance_attrs=provenance(
            cfg.plan.modality,
            case,
            prepared.dtype,
            beam=result.beam_name,
            dosimetry_formalism=result.formalism,
        ),
        markers_mm=centre[None, :],
        markers_label="applicator centre",
        shield_points_mm=shield_points,
        extra_writer=extra_writer,
        ctx=ctx,
    )
    return XrayRunResult(prepared, case, dose, summary, out_dir)


WALL_STATS = {"min": np.min, "mean": np.mean, "max": np.max}


def _cavity_summary(problem) -> dict:
    """The cavity of a DICOM case as summary.json states it (mm, patient coordinates)."""
    g = problem.geometry
    wall = np.linalg.norm(g.cavity_wall_mm - g.cavity_centre_mm, axis=-1)
    return {
        "centre_mm": np.asarray(g.cavity_centre_mm, float).tolist(),
        "wall_radius_mm": {k: float(f(wall)) for k, f in WALL_STATS.items()},
        "fit_tolerance_mm": g.fit_tolerance_mm,
        "target": problem.options.target_name,
        "target_is_roi": problem.target_is_roi,
        "frame": "the case's coordinates (DICOM patient LPS mm)",
    }


COMPARISON_COLUMNS = (
    ("diam cm", "diameter_cm", "{:.1f}"),
    ("fits", "fits_cavity", "{}"),
    ("min", "time_min", "{:.1f}"),
    ("10mm Gy", "dose_at_10mm_gy", "{:.2f}"),
    ("cover %", "target_coverage_percent", "{:.0f}"),
    ("skin mm", "skin_distance_mm", "{:.1f}"),
    ("skin Gy", "skin_max_gy", "{:.1f}"),
    ("CW D2cc", "chest_wall_D2cc_gy", "{:.1f}"),
    ("rib D2cc", "rib_D2cc_gy", "{:.1f}"),
    ("lung", "lung_mean_gy", "{:.2f}"),
    ("score", "score", "{:.1f}"),
)
SKIN_COLUMN = 5


def print_xray_summary(result: XrayRunResult, console: Console) -> None:
    """Applicator comparison, metrics, goals and the choice with its reason."""
    s = result.summary
    chosen = s["chosen_applicator"]
    title = f"Applicator comparison ({s['beam']}, formalism {s['dosimetry_formalism']})"
    table = Table(title=title)
    for title, _, _ in COMPARISON_COLUMNS:
        table.add_column(title, justify="right")
    for row in s["applicator_comparison"]:
        cells = [
            ("yes" if row[key] else "no")
            if key == "fits_cavity"
            else ("-" if row[key] is None else fmt.format(row[key]))
            for _, key, fmt in COMPARISON_COLUMNS
        ]
        if row.get("skin_flag"):
            cells[SKIN_COLUMN] = f"[red]{cells[SKIN_COLUMN]}![/]"
        style = "bold green" if np.isclose(row["diameter_cm"], chosen["diameter_cm"]) else None
        table.add_row(*cells, style=style)
    console.print(table)
    console.print(
        f"10mm Gy: dose 10 mm from the surface; cover: PTV_shell % at the coverage dose; skin mm "
        f"(! = under {s['min_skin_distance_mm']:g} mm); CW: chest wall; lung: mean Gy",
        highlight=False,
    )
    print_report(s, result.case, console)
    if "robust" in s:
        from iortopt.outputs.robust_figures import print_robust_table

        print_robust_table(s["robust"], console)
    cont = s["continuous_relaxation"]
    console.print(
        f"chosen: {chosen['diameter_cm']:.1f} cm sphere, {chosen['time_min']:.1f} min, "
        f"skin distance {chosen['skin_distance_mm']:.1f} mm "
        f"({'ok' if chosen['skin_distance_ok'] else 'UNDER THE MINIMUM'}); {chosen['reason']}",
        highlight=False,
    )
    console.print(
        f"continuous optimum: radius {cont['radius_mm']:.1f} mm, {cont['time_min']:.1f} min",
        highlight=False,
    )
    print_notes_and_times(s, result.out_dir, console)


# ----------------------------------------------------------------------------------------------
# The modality interface (iortopt.modalities)
# ----------------------------------------------------------------------------------------------

NAME = "xray_sphere"
#: The config sections this modality reads; others are refused when given.
SECTIONS = COMMON_SECTIONS | {"xray", "shields", "robust"}
#: Case capabilities it needs (:mod:`iortopt.cases.capabilities`).
NEEDS = frozenset({"cavity"})
DWELL_CHUNKED = False
prepare = prepare_xray
print_result = print_xray_summary


def run(prepared: PreparedXray, out_dir: str | Path, ctx: RunContext):
    """:func:`run_xray`; no TG-43 chunking or voxel mesh applies (only ``ctx``'s clock is read,
    for summary.json's times)."""
    return run_xray(prepared, out_dir, ctx)


def memory_sizes(prepared: PreparedXray) -> dict:
    """The case side's sizes for the largest catalogue applicator (``SphereSetting.memory_sizes``)
    and the number of sizes compared."""
    beam = prepared.beam
    diameters = prepared.config.xray.catalogue_diameters_cm or list(beam.diameters_cm)
    s = prepared.setting.memory_sizes(5.0 * float(max(diameters)))
    return {
        "n_voxels": s["n_voxels"],
        "n_points": s["n_points"],
        "n_sizes": len(diameters),
        "supersampling": s["supersampling"],
        "spacing_mm": s["spacing_mm"],
    }


def memory_estimate(s: dict, chunk: int | None, dtype, influence: str):
    from iortopt.compute import memory

    return memory.xray_plan_estimate(
        s["n_voxels"], s["n_points"], s["n_sizes"], supersampling=s["supersampling"], dtype=dtype
    )
