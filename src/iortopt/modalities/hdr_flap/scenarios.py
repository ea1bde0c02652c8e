"""Uncertainty scenarios of an HDR flap plan: the dwell geometry moved, the dwell times and the
dose model scaled. The scenario dose is the same TG-43 engine on the moved dwells (not a blurred
dose).

Axes (one sigma each, ``[robust] magnitudes`` overrides :data:`DEFAULTS`; 0 leaves an axis out):

    shift_mm             rigid applicator shift along x, y and z (three axes)
    rotation_deg         rigid rotation about x, y and z through the active dwells' centroid
    lift_off_mm          the flap lifting off the tissue: every dwell moved along its local
                         tissue normal, away from the target (one-sided: +sigma only; sampled:
                         |N(0, sigma)| per catheter)
    source_position_mm   the source stopping short or long along the catheter (dwell axis)
    dwell_time_percent   dwell-time delivery error (plus_minus: all dwells +-sigma, a systematic
                         timer error; sampled: independent per dwell)
    dose_scale_percent   the dose model (S_K calibration and TG-43 data) scaled

    build(prepared_geometry, magnitudes, kind, n, seed) -> Scenarios (arrays with a scenario axis)
    moved_dwells(positions, axes, normals, catheter, centre, scenario arrays) -> positions, axes
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from iortopt.errors import ConfigError
from iortopt.optimisation.robust import check_magnitudes

#: Default one-sigma magnitudes: value, unit, source. ``assumed``: no published value for IORT
#: flaps; chosen by us as plausible and labelled so in the summary.
DEFAULTS: dict[str, dict] = {
    "shift_mm": {
        "value": 2.0,
        "source": "Kirisits et al. 2014 Radiother Oncol 110:199 (GEC-ESTRO/AAPM review of "
        "brachytherapy uncertainties: applicator reconstruction and placement, order 1-3 mm, k=1)",
        "assumed": False,
    },
    "rotation_deg": {
        "value": 2.0,
        "source": "assumed (no published flap value; a 2 deg tilt moves a dwell 40 mm from the "
        "centroid by 1.4 mm, inside the shift uncertainty of Kirisits et al. 2014)",
        "assumed": True,
    },
    "lift_off_mm": {
        "value": 2.0,
        "source": "assumed (flap lift-off from the tumour bed is not reported; 2 mm is a "
        "packing gap easily missed at surgery)",
        "assumed": True,
    },
    "source_position_mm": {
        "value": 1.0,
        "source": "AAPM TG-56, Nath et al. 1997 Med Phys 24:1557 (source positioning "
        "accuracy +-1 mm)",
        "assumed": False,
    },
    "dwell_time_percent": {
        "value": 1.0,
        "source": "assumed (afterloader timer error; TG-56 timer checks, Nath et al. 1997, "
        "expect better than about 1 % for clinical dwell times)",
        "assumed": True,
    },
    "dose_scale_percent": {
        "value": 3.0,
        "source": "DeWerd et al. 2011 Med Phys 38:782 (AAPM TG-138: S_K calibration and TG-43 "
        "dose-rate uncertainties, about 2-3 % k=1); Kirisits et al. 2014",
        "assumed": False,
    },
}
#: Axes whose deviation is one-sided (a flap lifts off the bed, never presses into it).
ONE_SIDED = frozenset({"lift_off_mm"})


@dataclass(frozen=True)
class Scenarios:
    """S scenarios as arrays; scenario 0 is the nominal one.

    shift_mm (S, 3); rotation_deg (S, 3) (x, y, z rotation vector in degrees); lift_mm (S, C)
    per catheter; along_mm (S,) along the dwell axis; time_factor (S, N) per active dwell;
    dose_factor (S,); names: S labels.
    """

    names: tuple[str, ...]
    shift_mm: np.ndarray
    rotation_deg: np.ndarray
    lift_mm: np.ndarray
    along_mm: np.ndarray
    time_factor: np.ndarray
    dose_factor: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def magnitudes(overrides: dict[str, float]) -> dict[str, dict]:
    """DEFAULTS with ``[robust] magnitudes`` applied (an override is labelled "config";
    :func:`iortopt.optimisation.robust.check_magnitudes`).

    Raises:
        ConfigError: an unknown axis name.
    """
    try:
        return check_magnitudes("hdr_flap", DEFAULTS, overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _nominal(n_catheters: int, n_dwells: int) -> dict[str, np.ndarray]:
    return {
        "shift_mm": np.zeros(3),
        "rotation_deg": np.zeros(3),
        "lift_mm": np.zeros(n_catheters),
        "along_mm": np.zeros(()),
        "time_factor": np.ones(n_dwells),
        "dose_factor": np.ones(()),
    }


def _plus_minus(sigma: dict[str, float], n_catheters: int, n_dwells: int):
    rows = [("nominal", _nominal(n_catheters, n_dwells))]

    def add(name: str, key: str, value):
        row = _nominal(n_catheters, n_dwells)
        row[key] = np.broadcast_to(np.asarray(value, np.float64), row[key].shape).copy()
        rows.append((name, row))

    for axis_name, key in (("shift", "shift_mm"), ("rotation", "rotation_deg")):
        s = sigma[f"{axis_name}_{'mm' if axis_name == 'shift' else 'deg'}"]
        if s > 0:
            for i, xyz in enumerate("xyz"):
                for sign in (+1, -1):
                    v = np.zeros(3)
                    v[i] = sign * s
                    add(f"{axis_name}_{xyz}{'+' if sign > 0 else '-'}", key, v)
    if sigma["lift_off_mm"] > 0:
        add("lift_off+", "lift_mm", sigma["lift_off_mm"])
    for name, key, value in (
        ("source_position", "along_mm", sigma["source_position_mm"]),
        ("dwell_time", "time_factor", sigma["dwell_time_percent"] / 100),
        ("dose_scale", "dose_factor", sigma["dose_scale_percent"] / 100),
    ):
        if value > 0:
            base = 1.0 if key in ("time_factor", "dose_factor") else 0.0
            add(f"{name}+", key, base + value)
            add(f"{name}-", key, base - value)
    return rows


def _sampled(sigma: dict[str, float], n_catheters: int, n_dwells: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = [("nominal", _nominal(n_catheters, n_dwells))]
    for k in range(1, n):
        rows.append(
            (
                f"sample_{k}",
                {
                    "shift_mm": rng.normal(0, sigma["shift_mm"], 3),
                    "rotation_deg": rng.normal(0, sigma["rotation_deg"], 3),
                    "lift_mm": np.abs(rng.normal(0, sigma["lift_off_mm"], n_catheters)),
                    "along_mm": np.asarray(rng.normal(0, sigma["source_position_mm"])),
                    "time_factor": 1 + rng.normal(0, sigma["dwell_time_percent"] / 100, n_dwells),
                    "dose_factor": np.asarray(1 + rng.normal(0, sigma["dose_scale_percent"] / 100)),
                },
            )
        )
    return rows


def build(
    sigma: dict[str, float],
    n_catheters: int,
    n_dwells: int,
    kind: str = "plus_minus",
    n_scenarios: int = 21,
    seed: int = 0,
) -> Scenarios:
    """The scenario set: ``sigma`` axis -> one sigma (see the module doc); ``kind``
    ``"plus_minus"`` (nominal, then +-sigma per axis with sigma > 0) or ``"sampled"`` (nominal,
    then ``n_scenarios - 1`` seeded samples). With every sigma 0 only the nominal scenario."""
    if kind == "plus_minus" or all(v == 0 for v in sigma.values()):
        rows = _plus_minus(sigma, n_catheters, n_dwells)
    else:
        rows = _sampled(sigma, n_catheters, n_dwells, n_scenarios, seed)
    stack = {k: np.stack([r[k] for _, r in rows]) for k in rows[0][1]}
    return Scenarios(names=tuple(name for name, _ in rows), **stack)


def tissue_normals(positions_mm: np.ndarray, axes: np.ndarray, target_points_mm: np.ndarray):
    """(N, 3) unit directions away from the target at each dwell: from the nearest target voxel
    centre to the dwell, with the component along the dwell axis removed (a flap's local tissue
    normal, for lift-off)."""
    _, nearest = cKDTree(target_points_mm).query(positions_mm)
    away = positions_mm - target_points_mm[nearest]
    away -= np.sum(away * axes, axis=1, keepdims=True) * axes
    norm = np.linalg.norm(away, axis=1, keepdims=True)
    return np.where(norm > 1e-9, away / np.maximum(norm, 1e-12), 0.0)


def moved_dwells(
    positions_mm: np.ndarray,
    axes: np.ndarray,
    normals: np.ndarray,
    catheter_index: np.ndarray,
    centre_mm: np.ndarray,
    scenarios: Scenarios,
) -> tuple[np.ndarray, np.ndarray]:
    """(S, N, 3) dwell positions and (S, N, 3) source axes of every scenario: lift-off along the
    normals (per catheter), source position along the axes, then the rigid rotation about
    ``centre_mm`` and the shift. Scenario 0 (all zero) returns the inputs exactly."""
    pos_out, axes_out = [], []
    for s in range(len(scenarios)):
        p = positions_mm + scenarios.lift_mm[s][catheter_index, None] * normals
        p = p + scenarios.along_mm[s] * axes
        a = axes
        rot = scenarios.rotation_deg[s]
        if np.any(rot != 0):
            r = Rotation.from_rotvec(np.deg2rad(rot))
            p = r.apply(p - centre_mm) + centre_mm
            a = r.apply(axes)
        pos_out.append(p + scenarios.shift_mm[s])
        axes_out.append(a)
    return np.stack(pos_out), np.stack(axes_out)


def describe(mags: dict[str, dict], kind: str, scenarios: Scenarios, **extra) -> dict:
    """The ``scenario_set`` part of the summary's ``robust`` dict."""
    return {
        "modality": "hdr_flap",
        "kind": kind,
        "names": list(scenarios.names),
        "magnitudes": mags,
        "one_sided": sorted(ONE_SIDED),
        **extra,
    }
