"""Uncertainty scenarios of an electron (IOERT) plan and their doses: the same cone and disc
engine (:func:`iortopt.physics.electron.cone_dose_gy`) with the cone and the disc moved and the
planned MU kept (the anatomy stays put).

Axes (one sigma each; ``[robust] magnitudes`` overrides :data:`DEFAULTS`; 0 leaves one out):

    cone_shift_mm        the cone end slid along the tissue surface (two in-plane directions)
    cone_tilt_deg        the cone tilted about its end centre (about both in-plane directions)
    disc_shift_mm        the protective disc slid in its plane (two in-plane directions)
    dose_scale_percent   the dose model (output calibration, PDDs) scaled

    build(sigma, kind, n, seed) -> rows
    moved(cone, disc, e1, e2, row) -> (Cone, Disc, dose factor)   (moved_dicts: catalogue dicts)
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from iortopt.optimisation.robust import axis_scenarios

DEFAULTS: dict[str, dict] = {
    "cone_shift_mm": {
        "value": 2.0,
        "source": "assumed (cone placement on the gland surface; no published IOERT value)",
        "assumed": True,
    },
    "cone_tilt_deg": {
        "value": 3.0,
        "source": "assumed (docking a hard-docked or soft-docked cone; no published value)",
        "assumed": True,
    },
    "disc_shift_mm": {
        "value": 3.0,
        "source": "assumed (the disc slides under the gland when it is sutured back; no "
        "published value)",
        "assumed": True,
    },
    "dose_scale_percent": {
        "value": 2.0,
        "source": "IAEA TRS-398, Andreo et al. 2000 (absorbed dose to water in electron beams, "
        "combined standard uncertainty about 1.4-2.1 %, k=1)",
        "assumed": False,
    },
}
AXES = (
    ("cone_shift_mm", 2, False),
    ("cone_tilt_deg", 2, False),
    ("disc_shift_mm", 2, False),
    ("dose_scale_percent", 1, False),
)


def build(sigma: dict[str, float], kind: str = "plus_minus", n: int = 21, seed: int = 0):
    """Scenario rows (:func:`iortopt.optimisation.robust.axis_scenarios`); row 0 nominal."""
    return axis_scenarios(AXES, sigma, kind, n, seed)


def moved_pose(end_mm, axis, toe, disc_centre_mm, disc_normal, e1, e2, row: dict):
    """(end, axis, toe, disc centre, dose factor) of one scenario ``row`` (numpy float64): the
    cone end shifted by ``cone_shift_mm`` along (e1, e2), its axis and toe rotated by
    ``cone_tilt_deg`` about e1 and e2 through the end; the disc centre shifted along e1 and e2
    projected into its plane."""
    e1, e2 = np.asarray(e1, float), np.asarray(e2, float)
    shift = row["cone_shift_mm"] @ np.stack([e1, e2])
    tilt = np.deg2rad(row["cone_tilt_deg"][0]) * e1 + np.deg2rad(row["cone_tilt_deg"][1]) * e2
    r = Rotation.from_rotvec(tilt)
    axis_s, toe_s = (r.apply(np.asarray(v, float)) for v in (axis, toe))
    normal = np.asarray(disc_normal, float)
    in_plane = [v - (v @ normal) * normal for v in (e1, e2)]
    in_plane = [v / np.linalg.norm(v) for v in in_plane]
    disc_shift = row["disc_shift_mm"] @ np.stack(in_plane)
    return (
        np.asarray(end_mm, float) + shift,
        axis_s,
        toe_s,
        np.asarray(disc_centre_mm, float) + disc_shift,
        1.0 + float(row["dose_scale_percent"][0]) / 100.0,
    )


def moved(cone, disc, e1: np.ndarray, e2: np.ndarray, row: dict):
    """(Cone, Disc, dose factor) of one scenario ``row`` (:func:`moved_pose` on the pytrees)."""
    end, axis, toe, centre, factor = moved_pose(
        cone.end_mm, cone.axis, cone.toe, disc.centre_mm, disc.normal, e1, e2, row
    )
    dtype = np.asarray(cone.end_mm).dtype
    cone_s = cone._replace(
        end_mm=np.asarray(end, dtype), axis=np.asarray(axis, dtype), toe=np.asarray(toe, dtype)
    )
    return cone_s, disc._replace(centre_mm=np.asarray(centre, dtype)), factor


def moved_dicts(cone: dict, disc: dict, e1, e2, row: dict):
    """(cone dict, disc dict, dose factor) of one scenario ``row`` (the catalogue's dicts)."""
    end, axis, toe, centre, factor = moved_pose(
        cone["end_mm"], cone["axis"], cone["toe"], disc["centre_mm"], disc["normal"], e1, e2, row
    )
    return cone | {"end_mm": end, "axis": axis, "toe": toe}, disc | {"centre_mm": centre}, factor


def across(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the beam ``axis`` and to each other (the directions a
    cone slides and tilts in; on a flush cone, the tissue surface's)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)
