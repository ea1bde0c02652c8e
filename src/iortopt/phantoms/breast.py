"""The breast phantom (:mod:`iortopt.cases.breast`) as the case side of a 50 kV X-ray sphere plan.

    build(config, dtype)         -> SphereCaseSide   the setting, the case for the name checks and
                                                     the phantom's shield surfaces
    breast_setting(params)       -> SphereSetting    what :func:`plan_spheres` plans
    optimise_xray(params, ...)   -> XrayPlanResult   :func:`plan_spheres` on the phantom

The evaluation points are a lattice of cells over the phantom's slab anatomy
(:func:`lattice_evaluation_points`; the planner's module docstring describes them).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from iortopt.cases.breast import (
    BreastCaseParams,
    BreastGeometry,
    breast_geometry,
    build_breast_case,
    case_grid,
)
from iortopt.cases.case import Case
from iortopt.config import PlanConfig, case_params
from iortopt.evaluation.dvh import dose_at_volume_cm3, volume_at_dose
from iortopt.modalities.xray_sphere.choice import (
    OAR_NAMES,
    EvalPoints,
    SphereSetting,
    XrayPlanResult,
    full_grid_dose_gy,
    plan_spheres,
)
from iortopt.modalities.xray_sphere.pipeline import SphereCaseSide
from iortopt.modalities.xray_sphere.scoring import D2CC_CM3
from iortopt.physics.xray import XrayBeam

#: Spacing (mm) and half-width (mm) of the sample of the deepest skin layer.
SKIN_SAMPLE_SPACING_MM = 1.0
SKIN_SAMPLE_HALF_WIDTH_MM = 30.0


def _lattice_axis(low: float, high: float, spacing: float) -> np.ndarray:
    n = max(int(np.ceil((high - low) / spacing - 1e-9)), 1)
    return low + (np.arange(n) + 0.5) * spacing


def lattice_evaluation_points(
    g: BreastGeometry, spacing_mm: float, reach_mm: float, supersampling: int
) -> EvalPoints:
    """Evaluation points (see :class:`~iortopt.modalities.xray_sphere.choice.EvalPoints`): a
    lattice of ``spacing_mm`` cells over the region, offset half a spacing from the dose grid;
    breast cells within ``reach_mm`` of the cavity centre; OAR parts of cells from
    ``supersampling``^3 sub-samples per cell."""
    w = g.region_half_width_mm
    lo = np.floor(np.array([-w, -w, g.lung_back_z_mm]) / spacing_mm) * spacing_mm
    hi = np.array([w, w, g.skin_surface_z_mm])
    x, y, z = (_lattice_axis(lo[k], hi[k], spacing_mm) for k in range(3))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    cells = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=-1)
    cell_cm3 = spacing_mm**3 * 1e-3

    centre_labels = g.tissue_labels(cells)
    near = np.linalg.norm(cells - g.cavity_centre_mm, axis=-1) <= reach_mm
    points, weights, groups = [cells[centre_labels["breast_tissue"] & near]], [], {}
    weights.append(np.full(len(points[0]), cell_cm3))
    groups["breast"] = np.arange(len(points[0]))

    # Only cells that can touch an OAR slab are sub-sampled.
    half = 0.5 * spacing_mm
    candidate = (cells[:, 2] >= g.skin_inner_z_mm - half) | (
        cells[:, 2] <= g.muscle_front_z_mm + half
    )
    cand = cells[candidate]
    offsets = ((np.arange(supersampling) + 0.5) / supersampling - 0.5) * spacing_mm
    count = {name: np.zeros(len(cand)) for name in OAR_NAMES}
    total = {name: np.zeros((len(cand), 3)) for name in OAR_NAMES}
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                sub = cand + np.array([ox, oy, oz])
                labels = g.tissue_labels(sub)
                for name in OAR_NAMES:
                    count[name] += labels[name]
                    total[name] += labels[name][:, None] * sub
    n = len(points[0])
    for name in OAR_NAMES:
        has = count[name] > 0
        points.append(total[name][has] / count[name][has, None])
        weights.append(count[name][has] / supersampling**3 * cell_cm3)
        groups[name] = n + np.arange(int(has.sum()))
        n += int(has.sum())

    hw = SKIN_SAMPLE_HALF_WIDTH_MM
    s = np.arange(-hw, hw + 1e-9, SKIN_SAMPLE_SPACING_MM)
    sy, sx = np.meshgrid(s, s, indexing="ij")
    skin = np.stack([sx.ravel(), sy.ravel(), np.full(sx.size, g.skin_inner_z_mm)], axis=-1)
    points.append(skin)
    weights.append(np.zeros(len(skin)))
    groups["skin"] = np.concatenate([groups["skin"], n + np.arange(len(skin))])
    return EvalPoints(np.concatenate(points), np.concatenate(weights), groups)


def breast_setting(params: BreastCaseParams, eval_spacing_mm: float | None = None) -> SphereSetting:
    """The breast phantom as a :class:`SphereSetting` (evaluation lattice of ``eval_spacing_mm``,
    default ``params.spacing_mm``)."""
    g = breast_geometry(params)
    spacing = float(eval_spacing_mm or params.spacing_mm)

    def evaluation_points(max_radius_mm: float, max_shift_mm: float) -> EvalPoints:
        reach = max_radius_mm + params.target_thickness_mm + max_shift_mm + spacing
        return lattice_evaluation_points(g, spacing, reach, params.supersampling)

    def final_case(radius_mm, centre_mm, time_min, beam, shaft_axis, anisotropy, dtype):
        case, geometry = build_breast_case(params, radius_mm, centre_mm)
        dose = full_grid_dose_gy(
            case, centre_mm, radius_mm, time_min, beam, params.supersampling, shaft_axis,
            anisotropy, dtype,
        )  # fmt: skip
        return case, dose, geometry

    return SphereSetting(
        geometry=g,
        evaluation_points=evaluation_points,
        final_case=final_case,
        grid_metrics=breast_grid_metrics,
        tissue_note=(
            "tissue model: rigid anatomy, cavity conforming to the applicator "
            "(iortopt.cases.breast)"
        ),
        memory_sizes=lambda max_radius_mm: memory_sizes(params, max_radius_mm),
    )


def optimise_xray(
    params: BreastCaseParams,
    beam: XrayBeam | str | Path = "generic_50kV_spheres",
    prescription_gy: float = 20.0,
    prescription_mode: str = "surface",
    prescription_depth_mm: float = 10.0,
    catalogue_diameters_cm=None,
    min_skin_distance_mm: float = 5.0,
    optimise_position: bool = True,
    dtype=jnp.float32,
    *,
    coverage_fraction: float | None = None,
    oar_weight: float = 0.1,
    fit_weight: float = 0.1,
    max_shift_mm: float = 3.0,
    shaft_axis=(0.0, 0.0, 1.0),
    anisotropy: float = 0.0,
    eval_spacing_mm: float | None = None,
    relaxation_iterations: int = 150,
    shield_specs=None,
) -> XrayPlanResult:
    """Choose applicator size, position and time for the breast phantom
    (:func:`~iortopt.modalities.xray_sphere.choice.plan_spheres` on :func:`breast_setting`).

    Args:
        params: the breast phantom.
        beam: an :class:`XrayBeam`, or a packaged beam name / TOML path for
            :func:`~iortopt.physics.xray.load_xray_beam`.
        prescription_gy: prescribed dose, Gy.
        prescription_mode: ``"surface"`` (at the applicator surface) or ``"depth"`` (at
            ``prescription_depth_mm`` from it).
        catalogue_diameters_cm: sizes to compare (default: all in the beam).
        min_skin_distance_mm: applicator surface to skin surface, mm; smaller distances are
            flagged.
        optimise_position: optimise the centre (within ``max_shift_mm`` per axis) in the
            relaxation and for the chosen size.
        dtype: float dtype of the dose computations.
        coverage_fraction: coverage level as a fraction of Rx (default 0.25 surface, 1.0 depth).
        oar_weight, fit_weight: weights of the score.
        shaft_axis, anisotropy: probe-shaft anisotropy model (default isotropic).
        eval_spacing_mm: lattice spacing of the evaluation points (default ``params.spacing_mm``).
        relaxation_iterations: Adam iterations of each continuous optimisation.
        shield_specs: shields (:func:`iortopt.optimisation.shield_placement.build_specs`): placed
        and sized for every
            catalogue applicator (:mod:`iortopt.modalities.xray_sphere.shields`), so the
            comparison, the choice and
            the final dose include them; the continuous relaxation stays unshielded.
    Returns:
        :class:`XrayPlanResult`.
    """
    return plan_spheres(
        breast_setting(params, eval_spacing_mm),
        beam,
        prescription_gy,
        prescription_mode,
        prescription_depth_mm,
        catalogue_diameters_cm,
        min_skin_distance_mm,
        optimise_position,
        dtype,
        coverage_fraction=coverage_fraction,
        oar_weight=oar_weight,
        fit_weight=fit_weight,
        max_shift_mm=max_shift_mm,
        shaft_axis=shaft_axis,
        anisotropy=anisotropy,
        relaxation_iterations=relaxation_iterations,
        shield_specs=shield_specs,
    )


def breast_grid_metrics(case: Case, dose: np.ndarray, coverage_dose: float) -> dict:
    """The breast phantom's cross-check metrics from the full grid and the fractional
    occupancies."""
    v = case.grid.voxel_volume_cm3

    def occ(name):
        return case.structure(name).occupancy

    return {
        "target_coverage_percent": 100.0 * volume_at_dose(dose, occ("PTV_shell"), coverage_dose),
        "PTV_shell_cm3": case.structure("PTV_shell").volume_cm3(case.grid),
        "skin_max_gy": float(dose[occ("skin") > 0].max()),
        "chest_wall_D2cc_gy": float(dose_at_volume_cm3(dose, occ("chest_wall"), v, D2CC_CM3)),
        "rib_D2cc_gy": float(dose_at_volume_cm3(dose, occ("rib"), v, D2CC_CM3)),
        "lung_mean_gy": float((dose * occ("lung")).sum() / occ("lung").sum()),
    }


def build(cfg: PlanConfig, dtype) -> SphereCaseSide:
    """The breast phantom of ``[case.breast]`` as the X-ray plan's case side.

    Raises:
        ConfigError: invalid ``[case.breast]`` parameters, naming the field.
    """
    params = case_params(BreastCaseParams, cfg.case.breast, "breast")
    # Structure names do not depend on the applicator size: check them on a centred sphere.
    case, _ = build_breast_case(params)
    return SphereCaseSide(breast_setting(params), case, {"breast": params})


def memory_sizes(params: BreastCaseParams, max_radius_mm: float) -> dict:
    """The memory-estimate sizes of a plan whose largest applicator has radius ``max_radius_mm``
    (nothing is built): the phantom's grid for it and at most the lattice points."""
    grid = case_grid(params, breast_geometry(params, max_radius_mm))
    # Evaluation points: breast cells within reach of the cavity (a ball, at most the grid) plus
    # at most one OAR point per cell.
    reach_mm = max_radius_mm + params.target_thickness_mm + 3.0 + params.spacing_mm
    ball = 4.0 / 3.0 * math.pi * reach_mm**3 / params.spacing_mm**3
    return {
        "n_voxels": grid.n_voxels,
        "n_points": int(min(ball, grid.n_voxels)) + grid.n_voxels,
        "supersampling": params.supersampling,
        "spacing_mm": float(params.spacing_mm),
    }
