"""One electron IORT plan from config to outputs (modality ``electron``).

    prepare_electron(config, dtype, builtin) -> PreparedElectron   the case (the ELIOT-type
                                                          phantom's
                                                          :class:`~iortopt.modalities.electron.choice.ElectronSetting`
                                                          from :mod:`iortopt.phantoms.eliot`, or
                                                          a CT + RTSTRUCT), beam, validated names
    run_electron(prepared, out_dir) -> ElectronRunResult  catalogue comparison + joint cone/disc
                                                          placement
                                                          (:func:`iortopt.modalities.electron.choice.optimise_electron`;
                                                          on a DICOM case
                                                          :func:`iortopt.modalities.electron.generic_case.plan_generic_case`:
                                                          nominal placement, no joint
                                                          optimisation), metrics/goals, the
                                                          standard outputs

``summary.json`` carries the catalogue comparison (``catalogue_comparison``: one row per energy,
cone and bevel), the chosen energy, cone, bevel, MU and cone placement with the reason
(``chosen_applicator``, in the case's frame), the beam in the patient frame with its IEC 61217
gantry, collimator and couch angles as the RTPLAN states them (``beam_geometry``), the disc
placement (``disc``), the ``flags`` (disc covers the field plus
margin, beam axis within reach, target covered: at least ``TARGET_COVERED_PERCENT`` of PTV_gland
inside the prescription isodose) and the joint optimisation's outcome (``joint_optimisation``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from iortopt.compute.run_context import RunContext
from iortopt.config import PlanConfig
from iortopt.errors import ConfigError
from iortopt.modalities import COMMON_SECTIONS, stage_settings
from iortopt.modalities.electron.choice import ElectronSetting
from iortopt.modalities.electron.generic_case import GenericElectronProblem
from iortopt.outputs.dicom_export import electron_beam_geometry, electron_writer
from iortopt.outputs.plan_files import (
    common_summary,
    evaluate_plan,
    print_notes_and_times,
    print_report,
    provenance,
    write_plan_outputs,
)
from iortopt.physics.electron import ElectronBeam, load_electron_beam

#: Rows of the catalogue table printed on the terminal (best scores; summary.json has them all).
PRINTED_ROWS = 12
#: Coverage (% of the target at >= Rx) above which the ``target_covered`` flag is set.
TARGET_COVERED_PERCENT = 95.0


@dataclass
class PreparedElectron:
    config: PlanConfig
    beam: ElectronBeam
    setting: ElectronSetting | None  # the built-in phantom's case side (None on a DICOM case)
    dtype: object
    setup_s: float
    problem: GenericElectronProblem | None = None  # a DICOM case's cone, disc plane and points


@dataclass
class ElectronRunResult:
    prepared: PreparedElectron
    case: object
    dose_gy: np.ndarray
    summary: dict
    out_dir: Path


def _check_catalogue(values, have, field: str, unit: str, beam_name: str) -> None:
    if values is None:
        return
    unknown = [v for v in values if not np.any(np.isclose(have, v))]
    if unknown:
        raise ConfigError(
            f"electron.{field}: {unknown} not in beam {beam_name!r} "
            f"(has {[float(h) for h in have]} {unit})"
        )


def prepare_electron(
    cfg: PlanConfig, dtype=jnp.float32, builtin: ElectronSetting | None = None
) -> PreparedElectron:
    """Validate the case side, the beam, the catalogue, the disc and every structure name;
    nothing is written.

    ``builtin``: the built-in phantom's case side (an
    :class:`~iortopt.modalities.electron.choice.ElectronSetting`, from :mod:`iortopt.phantoms`);
    None for a DICOM case, which is imported here.

    Raises:
        ConfigError / SourceDataError naming the field or file at fault.
    """
    if cfg.robust is not None:
        from iortopt.modalities.electron.robust import check

        check(cfg)
    t0 = time.perf_counter()
    e = cfg.electron
    beam = load_electron_beam(e.beam)
    _check_catalogue(e.energies_mev, beam.energies_mev, "energies_mev", "MeV", beam.name)
    _check_catalogue(e.cone_diameters_cm, beam.diameters_cm, "cone_diameters_cm", "cm", beam.name)
    _check_catalogue(e.bevels_deg, beam.bevels, "bevels_deg", "deg", beam.name)
    names = [d.name for d in beam.discs]
    if e.disc not in names:
        raise ConfigError(f"electron.disc: {e.disc!r} is not in beam {beam.name!r} (has {names})")
    if cfg.case.kind == "dicom":
        return _prepare_dicom(cfg, beam, dtype, t0)
    given = [k for k in PATIENT_GEOMETRY if getattr(e, k) is not None]
    if given:
        raise ConfigError(
            f"electron.{', electron.'.join(given)}: for case.kind 'dicom' only (the built-in "
            "case places the cone on its own surface); remove them"
        )
    if builtin is None:
        raise ConfigError(
            f"case.kind {cfg.case.kind!r}: a built-in phantom's case is built by its adapter "
            "(iortopt.phantoms); prepare the plan with iortopt.pipeline.prepare"
        )
    thickness = beam.discs[names.index(e.disc)].thickness_mm
    if thickness > builtin.disc_space_mm + 1e-9:
        raise ConfigError(
            f"{builtin.disc_space_field}: {builtin.disc_space_mm:g} mm is thinner than the "
            f"{thickness:g} mm disc {e.disc!r}"
        )
    case, geometry = builtin.case, builtin.geometry
    toe = np.asarray(e.toe_direction, float)
    in_plane = toe - (toe @ geometry.surface_normal) * geometry.surface_normal
    if np.linalg.norm(in_plane) < 1e-6:
        raise ConfigError(
            f"electron.toe_direction: {list(e.toe_direction)} has no component along the gland "
            "surface (it must not be parallel to the surface normal)"
        )
    stage_settings.check_config_names(cfg, case)
    return PreparedElectron(cfg, beam, builtin, dtype, time.perf_counter() - t0)


#: [electron] fields that place the cone and disc in patient mm (DICOM cases).
PATIENT_GEOMETRY = ("cone_end_mm", "cone_axis", "disc_centre_mm", "disc_normal")


def _prepare_dicom(cfg: PlanConfig, beam: ElectronBeam, dtype, t0: float) -> PreparedElectron:
    """The CT + RTSTRUCT case (its grid also covering the cone end) and the plan's geometry."""
    from iortopt.cases.dicom_case import import_case
    from iortopt.modalities.electron.generic_case import build_problem

    e = cfg.electron
    if e.optimise_pose:
        raise ConfigError(
            "electron.optimise_pose: the joint cone/disc optimisation runs on case.kind "
            "'builtin_eliot' only; set optimise_pose = false for a DICOM case (the catalogue is "
            "compared at the cone pose given by electron.cone_end_mm / cone_axis)"
        )
    case = import_case(cfg.case.dicom, cfg.plan.name, np.asarray([e.cone_end_mm], float))
    stage_settings.check_config_names(cfg, case)
    try:
        problem = build_problem(
            case,
            cfg.prescription.structure,
            e.cone_end_mm,
            e.cone_axis,
            e.toe_direction,
            e.disc_centre_mm,
            e.disc_normal,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return PreparedElectron(cfg, beam, None, dtype, time.perf_counter() - t0, problem=problem)


def _optimise(prepared: PreparedElectron):
    """The plan of the prepared case (phantom: catalogue + joint optimisation; DICOM case:
    catalogue at the given pose)."""
    from iortopt.modalities.electron.choice import optimise_electron
    from iortopt.modalities.electron.generic_case import plan_generic_case

    cfg, e = prepared.config, prepared.config.electron
    common = dict(
        prescription_gy=cfg.prescription.dose_gy,
        isodose_percent=e.isodose_percent,
        energies_mev=e.energies_mev,
        diameters_cm=e.cone_diameters_cm,
        bevels_deg=e.bevels_deg,
        disc=e.disc,
        disc_radius_mm=e.disc_radius_mm,
        disc_margin_mm=e.disc_margin_mm,
        dtype=prepared.dtype,
        max_axis_tilt_deg=e.max_axis_tilt_deg,
        oar_weight=e.oar_weight,
        disc_edge_mm=e.disc_edge_mm,
    )
    if prepared.problem is not None:
        return plan_generic_case(prepared.problem, prepared.beam, **common)
    return optimise_electron(
        prepared.setting,
        prepared.beam,
        **common,
        optimise_pose=e.optimise_pose,
        toe_direction=e.toe_direction,
        max_shift_mm=e.max_shift_mm,
        max_air_gap_mm=e.max_air_gap_mm,
        max_tilt_deg=e.max_tilt_deg,
        max_disc_shift_mm=e.max_disc_shift_mm,
        max_disc_tilt_deg=e.max_disc_tilt_deg,
        iterations=e.iterations,
        robust=_robust_choice(prepared.config),
        robust_pose=_robust_pose(prepared.config),
    )


def _robust_choice(cfg: PlanConfig):
    """``robust`` of ``optimise_electron``: the scenario moves for a robust row choice, or None."""
    if cfg.robust is None:
        return None
    from iortopt.modalities.electron.robust import choice_scenarios

    return choice_scenarios(cfg)


def _robust_pose(cfg: PlanConfig):
    """``robust_pose`` of ``optimise_electron``: the scenarios of a robust pose and MU, or None."""
    if cfg.robust is None:
        return None
    from iortopt.modalities.electron.robust import pose_scenarios

    return pose_scenarios(cfg)


def run_electron(
    prepared: PreparedElectron, out_dir: str | Path, ctx: RunContext | None = None
) -> ElectronRunResult:
    """Choose energy, cone and bevel, place cone and disc; evaluate and write every output."""
    cfg, e = prepared.config, prepared.config.electron
    try:
        result = _optimise(prepared)
    except ValueError as exc:
        raise ConfigError(f"electron: {exc}") from None
    case, dose = result.case, np.asarray(result.dose_gy, np.float32)
    evaluation = evaluate_plan(stage_settings.evaluation_settings(cfg), case, dose)
    chosen, disc = result.chosen, result.disc
    settings = stage_settings.output_settings(cfg)
    summary = common_summary(settings, case, evaluation, prepared.dtype)
    summary |= {
        "beam": result.beam_name,
        "machine": prepared.beam.machine,
        "isodose_percent": e.isodose_percent,
        "d100_gy": cfg.prescription.dose_gy / (e.isodose_percent / 100.0),
        "chosen_applicator": chosen,
        "beam_geometry": electron_beam_geometry(case, chosen),
        "disc": disc,
        "flags": {
            "disc_covers_field": bool(chosen["disc_covers_field"]),
            "axis_tilt_ok": bool(chosen["axis_tilt_ok"]),
            "target_covered": bool(chosen["target_coverage_percent"] >= TARGET_COVERED_PERCENT),
        },
        "catalogue_comparison": result.comparison,
        "joint_optimisation": result.optimisation,
        "notes": result.notes,
        "wall_times_s": {"prepare_s": prepared.setup_s, **result.timings},
    }
    out_dir = Path(out_dir)
    extra_writer = (
        electron_writer(
            stage_settings.dicom_plan_info(cfg),
            case,
            dose,
            evaluation["dvhs"],
            chosen,
            prepared.beam.machine,
        )
        if cfg.output.dicom
        else None
    )
    if cfg.robust is not None:
        from iortopt.modalities.electron import robust as electron_robust

        t0 = time.perf_counter()
        summary["robust"], extra_writer = electron_robust.evaluate(
            cfg,
            case,
            result.final_pose,
            prepared.dtype,
            extra_writer,
            getattr(result, "nominal_pose", None),
            result.optimisation.get("robust"),
        )
        summary["wall_times_s"]["robust_evaluation_s"] = time.perf_counter() - t0
    cone_end = np.asarray(chosen["cone_end_mm"], float)
    disc_centre = np.asarray(disc["centre_mm"], float)
    write_plan_outputs(
        settings,
        case,
        dose,
        evaluation,
        summary,
        out_dir,
        applicator={
            "cone": {
                "end_mm": cone_end,
                "axis": np.asarray(chosen["cone_axis"], float),
                "toe": np.asarray(chosen["cone_toe"], float),
                "diameter_mm": np.asarray(10.0 * float(chosen["diameter_cm"])),
                "bevel_deg": np.asarray(float(chosen["bevel_deg"])),
                "energy_MeV": np.asarray(float(chosen["energy_MeV"])),
                "mu": np.asarray(float(chosen["mu"])),
            },
            "disc": {
                "centre_mm": disc_centre,
                "normal": np.asarray(disc["normal"], float),
                "radius_mm": np.asarray(float(disc["radius_mm"])),
                "thickness_mm": np.asarray(float(disc["thickness_mm"])),
            },
        },
        provenance_attrs=provenance(
            cfg.plan.modality, case, prepared.dtype, beam=result.beam_name, disc=disc["material"]
        ),
        markers_mm=np.stack([cone_end, disc_centre]),
        markers_label="cone end, disc centre",
        extra_writer=extra_writer,
        ctx=ctx,
    )
    return ElectronRunResult(prepared, case, dose, summary, out_dir)


COMPARISON_COLUMNS = (
    ("MeV", "energy_MeV", "{:g}"),
    ("cm", "diameter_cm", "{:g}"),
    ("bevel", "bevel_deg", "{:g}"),
    ("MU", "mu", "{:.0f}"),
    ("cover", "target_coverage_percent", "{:.1f}"),
    ("max", "max_dose_gy", "{:.1f}"),
    ("beyond", "beyond_disc_max_gy", "{:.2f}"),
    ("lung", "lung_mean_gy", "{:.2f}"),
    ("rib", "rib_D2cc_gy", "{:.2f}"),
    ("skin", "skin_max_gy", "{:.2f}"),
    ("disc", "disc_margin_mm", "{:.1f}"),
    ("score", "score", "{:.1f}"),
)
DISC_COLUMN = 10


def _same(row: dict, chosen: dict) -> bool:
    return all(np.isclose(row[k], chosen[k]) for k in ("energy_MeV", "diameter_cm", "bevel_deg"))


def print_electron_summary(result: ElectronRunResult, console: Console) -> None:
    """Catalogue comparison (best rows), metrics, goals, the choice with its reason, the disc."""
    s = result.summary
    chosen, disc = s["chosen_applicator"], s["disc"]
    rows = s["catalogue_comparison"]
    ranked = sorted(rows, key=lambda r: -r["score"])[:PRINTED_ROWS]
    if not any(_same(r, chosen) for r in ranked):
        ranked.append(next(r for r in rows if _same(r, chosen)))
    table = Table(
        title=f"Catalogue comparison ({s['beam']}): best {len(ranked)} of {len(rows)} rows",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    for title, _, _ in COMPARISON_COLUMNS:
        table.add_column(title, justify="right")
    for row in ranked:
        cells = [fmt.format(row[key]) for _, key, fmt in COMPARISON_COLUMNS]
        if not row["disc_covers_field"]:
            cells[DISC_COLUMN] = f"[red]{cells[DISC_COLUMN]}![/]"
        table.add_row(*cells, style="bold green" if _same(row, chosen) else None)
    console.print(table)
    console.print(
        f"cm: cone diameter; bevel: deg; cover: {s['prescription_structure']} % at >= "
        f"{s['prescription_gy']:g} Gy "
        f"(the {s['isodose_percent']:g} % isodose, 100 % = {s['d100_gy']:.2f} Gy); max: Gy; "
        "beyond: max Gy beyond the disc; lung: mean Gy; rib: D2cc Gy; skin: max Gy; disc: mm of "
        f"disc radius left over the field (! = under the {disc['required_margin_mm']:g} mm "
        "margin); all rows in summary.json",
        highlight=False,
    )
    print_report(s, result.case, console)
    if "robust" in s:
        from iortopt.outputs.robust_figures import print_robust_table

        print_robust_table(s["robust"], console)
    console.print(
        f"chosen: {chosen['energy_MeV']:g} MeV, {chosen['diameter_cm']:g} cm cone, bevel "
        f"{chosen['bevel_deg']:g} deg, {chosen['mu']:.0f} MU; {chosen['reason']}",
        highlight=False,
    )
    geometry = s["beam_geometry"]
    console.print(
        f"beam ({geometry['patient_position']}, IEC 61217): gantry "
        f"{geometry['gantry_angle_deg']:.1f}, collimator {geometry['collimator_angle_deg']:.1f}, "
        f"couch {geometry['couch_angle_deg']:.1f} deg; axis (LPS) "
        f"({', '.join(f'{v:.3f}' for v in geometry['beam_axis_patient'])})",
        highlight=False,
    )
    console.print(
        f"disc {disc['material']} ({disc['description']}): radius {disc['radius_mm']:g} mm, "
        f"upstream face {disc['depth_below_surface_mm']:.1f} mm below the gland surface at "
        f"({', '.join(f'{v:.1f}' for v in disc['centre_mm'])}) mm, margin over the field "
        f"{disc['margin_mm']:.1f} mm ({'covers' if disc['covers_field'] else 'DOES NOT COVER'} "
        f"the field plus {disc['required_margin_mm']:g} mm)",
        highlight=False,
    )
    opt = s["joint_optimisation"]
    if opt.get("run"):
        console.print(
            f"joint cone/disc optimisation: score {opt['score_nominal']:.2f} -> "
            f"{opt['score_optimised']:.2f} ({'kept' if opt['accepted'] else 'nominal kept'})",
            highlight=False,
        )
    print_notes_and_times(s, result.out_dir, console)


# ----------------------------------------------------------------------------------------------
# The modality interface (iortopt.modalities)
# ----------------------------------------------------------------------------------------------

NAME = "electron"
#: The config sections this modality reads; others are refused when given.
SECTIONS = COMMON_SECTIONS | {"electron", "robust"}
#: Case capabilities it needs (:mod:`iortopt.cases.capabilities`).
NEEDS = frozenset({"tissue_surface", "cone_pose"})
DWELL_CHUNKED = False
prepare = prepare_electron
print_result = print_electron_summary


def run(prepared: PreparedElectron, out_dir: str | Path, ctx: RunContext):
    """:func:`run_electron`; no TG-43 chunking or voxel mesh applies (only ``ctx``'s clock is read,
    for summary.json's times)."""
    return run_electron(prepared, out_dir, ctx)


def memory_sizes(prepared: PreparedElectron) -> dict:
    from iortopt.modalities.electron.choice import CHUNK

    if prepared.problem is not None:
        case = prepared.problem.case
        return {
            "n_voxels": case.grid.n_voxels,
            "n_points": len(prepared.problem.ev.weights_cm3),
            "n_rows": CHUNK,
            "n_structures": len(case.structures),
            "supersampling": 1,
            "spacing_mm": min(case.grid.spacing_xyz_mm),
        }
    setting = prepared.setting
    case = setting.case
    return {
        "n_voxels": case.grid.n_voxels,
        "n_points": int(sum(len(weights) for _, weights in setting.samples.values())),
        "n_rows": CHUNK,
        "n_structures": len(case.structures),
        "supersampling": setting.supersampling,
        "spacing_mm": min(case.grid.spacing_xyz_mm),
    }


def memory_estimate(s: dict, chunk: int | None, dtype, influence: str):
    from iortopt.compute import memory

    return memory.electron_plan_estimate(
        s["n_voxels"], s["n_points"], s["n_rows"], 8, s["n_structures"], s["supersampling"], dtype
    )
