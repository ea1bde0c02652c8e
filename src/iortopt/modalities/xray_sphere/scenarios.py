"""Uncertainty scenarios of a 50 kV sphere plan and their doses (the same sphere engine,
:func:`iortopt.physics.xray.sphere_dose_gy`, on moved geometry; the anatomy stays put).

Axes (one sigma each; ``[robust] magnitudes`` overrides :data:`DEFAULTS`; 0 leaves one out):

    centre_shift_mm      the applicator centre off its planned position (x, y, z)
    tissue_gap_mm        the cavity wall not conforming: a gap of g mm between the applicator
                         surface and the tissue, all round (one-sided); the tissue sits g mm
                         further out along each ray from the centre, the gap counted as water
                         (so the dose is slightly underestimated: conservative)
    dose_scale_percent   the dose model (output calibration, depth-dose data) scaled

    build(sigma, kind, n, seed) -> list of (label, deviations)
    scenario_doses(points, centre, radius, time, beam, rows, dtype) -> (S, P) Gy
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.optimisation.robust import axis_scenarios
from iortopt.physics.xray import XrayBeam, sphere_dose_gy

DEFAULTS: dict[str, dict] = {
    "centre_shift_mm": {
        "value": 2.0,
        "source": "assumed (no published positioning uncertainty of spherical IORT "
        "applicators in the cavity; 2 mm, as for brachytherapy applicator placement in "
        "Kirisits et al. 2014 Radiother Oncol 110:199)",
        "assumed": True,
    },
    "tissue_gap_mm": {
        "value": 1.0,
        "source": "assumed (the purse-string suture is meant to close the tissue onto the "
        "sphere; 1 mm of residual gap)",
        "assumed": True,
    },
    "dose_scale_percent": {
        "value": 5.0,
        "source": "assumed (low-energy X-ray IORT dosimetry carries several per cent; no "
        "consensus value)",
        "assumed": True,
    },
}
AXES = (("centre_shift_mm", 3, False), ("tissue_gap_mm", 1, True), ("dose_scale_percent", 1, False))


def build(sigma: dict[str, float], kind: str = "plus_minus", n: int = 21, seed: int = 0):
    """Scenario rows (:func:`iortopt.optimisation.robust.axis_scenarios`); row 0 nominal."""
    return axis_scenarios(AXES, sigma, kind, n, seed)


def stacked(rows) -> dict[str, np.ndarray]:
    """The rows' deviations as (S, ...) arrays: ``shift_mm`` (S, 3), ``gap_mm`` (S,),
    ``scale`` (S,) (1 + percent / 100)."""
    return {
        "shift_mm": np.stack([r["centre_shift_mm"] for _, r in rows]),
        "gap_mm": np.array([r["tissue_gap_mm"][0] for _, r in rows]),
        "scale": 1.0 + np.array([r["dose_scale_percent"][0] for _, r in rows]) / 100.0,
    }


def moved_points(points_mm: np.ndarray, centre_mm, shift_mm, gap_mm) -> np.ndarray:
    """Where the tissue points sit relative to the planned applicator: the applicator moved by
    ``shift_mm`` is the tissue moved by -shift; a gap moves each point ``gap_mm`` outward along
    its ray from the (shifted) centre."""
    centre = np.asarray(centre_mm, float) + np.asarray(shift_mm, float)
    offset = np.asarray(points_mm, float) - centre
    r = np.linalg.norm(offset, axis=-1, keepdims=True)
    unit = offset / np.maximum(r, 1e-9)
    return centre + offset + gap_mm * unit - np.asarray(shift_mm, float)


def scenario_doses(
    points_mm, centre_mm, radius_mm: float, time_min: float, beam: XrayBeam, rows, dtype
) -> np.ndarray:
    """(S, P) dose (Gy) at the tissue ``points_mm`` in every scenario (voxel centres, no
    sub-sampling of the voxels cut by the applicator surface)."""
    s = stacked(rows)
    pts = np.stack(
        [
            moved_points(points_mm, centre_mm, sh, g)
            for sh, g in zip(s["shift_mm"], s["gap_mm"], strict=True)
        ]
    )
    one = jax.jit(
        lambda p: sphere_dose_gy(
            p,
            jnp.asarray(centre_mm, dtype),
            jnp.asarray(radius_mm, dtype),
            jnp.asarray(time_min, dtype),
            beam,
        )
    )
    return np.stack(
        [
            np.asarray(one(jnp.asarray(p, dtype)), np.float64) * f
            for p, f in zip(pts, s["scale"], strict=True)
        ]
    )
