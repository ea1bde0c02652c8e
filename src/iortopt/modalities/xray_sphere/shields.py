"""Shields for 50 kV spherical applicators: positions and catalogue sizes per applicator.

The source sits at the sphere's centre, so a shield multiplies the open dose at each evaluation
point by one transmission factor along the centre -> point segment. For a given applicator
(centre, radius, time fixed by the prescription) the shields' positions are optimised (Adam,
a fixed number of steps, one compiled program for every applicator and size) on the same smooth
score as the X-ray relaxation: soft PTV coverage minus the weighted OAR doses, plus the distance
constraint, every point of a shield at least ``min_target_distance_mm`` outside the PTV shell
(|p - c| >= radius + target thickness + distance). Each shield's size is chosen from its
catalogue (lowest objective; ties, within a relative 1e-4, go to the smaller sheet).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iortopt.modalities.xray_sphere.scoring import smooth_coverage_and_oar
from iortopt.optimisation import shield_placement as shl
from iortopt.physics import shield as sh

#: Adam steps per placement, and the learning rate on the bounded angle variables.
ITERATIONS = 120
LEARNING_RATE = 0.05


@dataclass
class SpherePlacement:
    pose: np.ndarray  # (S, 3): u mm, v mm, rotation rad
    size_index: np.ndarray  # (S,)
    objective: float
    factor: np.ndarray  # (P,) transmission at the evaluation points
    placed: list  # Shield pytrees
    trials: list


def sphere_distance_penalty(placed, specs, centre, reach_mm):
    """Sum over shields of mean((required - (|p - c| - reach))_+^2), mm^2, over rim points."""
    total = 0.0
    for shield, spec in zip(placed, specs, strict=True):
        if spec.min_target_distance_mm <= 0:
            continue
        pts = sh.patch_points_mm(shield, spec.shape, spec.surface)
        dist = jnp.sqrt(jnp.sum(jnp.square(pts - centre), axis=-1) + 1e-12) - reach_mm
        total = total + jnp.mean(jnp.square(jnp.maximum(spec.min_target_distance_mm - dist, 0.0)))
    return total


def make_placer(
    ev, specs, *, prescription_gy, coverage_dose_gy, oar_weight, target_thickness_mm, dtype
):
    """A function placing the shields for one applicator: ``place(dose0 (P,), centre (3,),
    radius_mm) -> SpherePlacement``, with ``dose0`` the open dose at ``ev.points_mm``."""
    pts = jnp.asarray(ev.points_mm, dtype)
    idx = ev.groups
    weight = {name: jnp.asarray(ev.weights_cm3[i], dtype) for name, i in idx.items()}
    low, high = (jnp.asarray(a, dtype) for a in shl.pose_ranges(specs))

    def placed_at(z, half):
        return shl.shields_at(specs, shl.pose_from_z(z, low, high), half)

    def factor_at(z, half, centre):
        return shl.transmission_factor(centre[None, :], pts, placed_at(z, half), specs)

    def objective(z, half, dose0, centre, radius):
        dose = dose0 * factor_at(z, half, centre)
        coverage, oar = smooth_coverage_and_oar(
            dose, pts, idx, weight, centre, radius, target_thickness_mm, coverage_dose_gy
        )
        score = coverage - oar_weight * oar / prescription_gy
        reach = radius + target_thickness_mm
        penalty = sphere_distance_penalty(placed_at(z, half), specs, centre, reach)
        return (-score + shl.DISTANCE_PENALTY_WEIGHT * penalty).astype(dtype)

    opt = optax.adam(optax.exponential_decay(LEARNING_RATE, ITERATIONS, 0.1))
    value_and_grad = jax.value_and_grad(objective)

    @jax.jit
    def run(z0, half, dose0, centre, radius):
        def step(carry, _):
            z, state = carry
            _, grad = value_and_grad(z, half, dose0, centre, radius)
            updates, state = opt.update(grad, state, z)
            return (optax.apply_updates(z, updates), state), None

        (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=ITERATIONS)
        return z, objective(z, half, dose0, centre, radius), factor_at(z, half, centre)

    z_start = jnp.asarray(shl.z_from_pose(shl.start_pose(specs), specs), dtype)

    def place(dose0, centre, radius) -> SpherePlacement:
        args = (
            jnp.asarray(dose0, dtype),
            jnp.asarray(centre, dtype),
            jnp.asarray(radius, dtype),
        )

        def half_of(sizes):
            return jnp.asarray(shl.half_sizes(specs, sizes), dtype)

        def trial(sizes, _):
            out = run(z_start, half_of(sizes), *args)
            return out[1], out

        size_index, result, trials = shl.choose_sizes(specs, trial, None)
        if result is None:
            result = run(z_start, half_of(size_index), *args)
        z, value, factor = result
        pose = np.asarray(shl.pose_from_z(z, low, high), np.float64)
        placed = shl.shields_at(specs, jnp.asarray(pose, dtype), half_of(size_index))
        return SpherePlacement(
            pose, size_index, float(value), np.asarray(factor, np.float64), placed, trials
        )

    return place


def grid_factor(points_mm: np.ndarray, centre_mm, placed, specs, chunk: int = 262144):
    """Transmission factor (N,) at grid points for a source at ``centre_mm``."""
    dtype = placed[0].offset_mm.dtype
    fn = jax.jit(lambda p, c: shl.transmission_factor(c[None, :], p, placed, specs))
    c = jnp.asarray(centre_mm, dtype)
    out = np.empty(points_mm.shape[0], np.float64)
    for start in range(0, points_mm.shape[0], chunk):
        block = points_mm[start : start + chunk]
        padded = np.zeros((chunk, 3), np.float32)
        padded[: len(block)] = block
        out[start : start + len(block)] = np.asarray(fn(jnp.asarray(padded, dtype), c))[
            : len(block)
        ]
    return out


def shield_report(cfg, specs, result, evaluation):
    """Summary fields, zarr groups and figure points of an X-ray plan's shields: placements,
    size trials, and protected-OAR / target metrics with the shields and with them removed
    (same applicator and time)."""
    from iortopt.modalities.stage_settings import evaluation_settings
    from iortopt.outputs.plan_files import evaluate_plan

    case = result.case
    centre = np.asarray(result.chosen["centre_mm"], np.float64)
    reach = float(result.chosen["radius_mm"]) + float(result.geometry.target_thickness_mm)
    placed_info = []
    for spec, shield, k in zip(specs, result.shields, result.shield_size_index, strict=True):
        rim = np.asarray(sh.patch_points_mm(shield, spec.shape, spec.surface, n_per_side=16))
        distance = float(np.min(np.linalg.norm(rim - centre, axis=-1)) - reach)
        placed_info.append(shl.describe(spec, shield, int(k), distance))
    settings = evaluation_settings(cfg)
    removed = evaluate_plan(settings, case, np.asarray(result.dose_without_shields_gy))["metrics"]
    target = cfg.prescription.structure

    def pick(metrics):
        return shl.comparison_metrics(metrics, specs, target, ("D90_gy", "D98_gy", "mean_gy"))

    summary = {
        "shields": placed_info,
        "shield_optimisation": {"size_trials": result.shield_trials},
        "shield_comparison": {
            "with_shields": pick(evaluation["metrics"]),
            "same_plan_shields_removed": pick(removed),
        },
    }
    groups = shl.store_groups(specs, result.shields, result.shield_size_index)
    return summary, groups, shl.figure_points(specs, result.shields)
