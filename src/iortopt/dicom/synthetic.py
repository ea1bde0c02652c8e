"""A small, consistent synthetic study (CT series + RTSTRUCT) with analytic structures.

For tests and the demo (``scripts/make_dicom_example.py``); not patient data. Patient frame
(LPS, mm): x to the patient's left, y posterior, z to the head. Structures (exact volumes in
``SyntheticStudy.exact_volumes_cm3``):

- ``GTV``: sphere of radius ``SPHERE_RADIUS_MM`` at the origin (the target);
- ``Ureter``: cylinder along z, radius ``CYLINDER_RADIUS_MM``, z in [-20, 20) mm (flat ends
  half-way between slices, so the slabs of the contoured slices add up to its length);
- ``Sacrum``: box posterior to the target;
- ``Ring``: annulus (an outer and an inner contour per slice: a hole by the even-odd rule);
- ``BODY``: elliptic cylinder over every slice.

``catheters_mm`` are five straight flap catheters 10 mm apart, 5 mm anterior of the sphere's
top, tips at -x. ``feet_first=True`` writes the same anatomy as a feet-first supine (FFS) series:
image columns run towards -x and the slices are numbered from the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iortopt.dicom.files import save_atomic
from iortopt.dicom.phantom_study import (
    Patient,
    StudyIds,
    ct_slice_dataset,
    write_rtstruct,
)
from iortopt.dicom.uids import new_uid

SPHERE_RADIUS_MM = 12.0
CYLINDER_RADIUS_MM = 4.0
CYLINDER_CENTRE_XY_MM = (25.0, 5.0)
CYLINDER_Z_MM = (-20.0, 20.0)
BOX_MM = ((-20.0, 20.0), (20.0, 30.0), (-20.0, 20.0))  # x, y, z ranges
RING_CENTRE_XY_MM = (-28.0, 0.0)
RING_RADII_MM = (5.0, 10.0)
RING_Z_MM = (-10.0, 10.0)
BODY_SEMI_AXES_MM = (46.0, 38.0)
HU = {"air": -1000.0, "water": 0.0, "GTV": 40.0, "Sacrum": 700.0}
CONTOUR_POINTS = 180
PATIENT = Patient()


@dataclass(frozen=True)
class SyntheticStudy:
    """Paths and truths of a written study."""

    folder: Path
    ct_folder: Path
    rtstruct: Path
    exact_volumes_cm3: dict[str, float]
    catheters_mm: list[list[list[float]]]
    roles: dict[str, str] = field(default_factory=dict)
    study_uid: str = ""
    frame_of_reference_uid: str = ""


def _circle(cx, cy, r, z, n=CONTOUR_POINTS) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)], axis=-1)


def _ellipse(a, b, z, n=CONTOUR_POINTS) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([a * np.cos(t), b * np.sin(t), np.full(n, z)], axis=-1)


def _rectangle(xr, yr, z) -> np.ndarray:
    (x0, x1), (y0, y1) = xr, yr
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], float)


def _contours(z_slices: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Polygons of every ROI on the slices it crosses (contour on a slice = its slab)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("GTV", "Ureter", "Sacrum", "Ring", "BODY")}
    for z in z_slices:
        if abs(z) < SPHERE_RADIUS_MM:
            out["GTV"].append(_circle(0.0, 0.0, np.sqrt(SPHERE_RADIUS_MM**2 - z**2), z))
        if CYLINDER_Z_MM[0] <= z < CYLINDER_Z_MM[1]:
            out["Ureter"].append(_circle(*CYLINDER_CENTRE_XY_MM, CYLINDER_RADIUS_MM, z))
        if BOX_MM[2][0] <= z < BOX_MM[2][1]:
            out["Sacrum"].append(_rectangle(BOX_MM[0], BOX_MM[1], z))
        if RING_Z_MM[0] <= z < RING_Z_MM[1]:
            out["Ring"].append(_circle(*RING_CENTRE_XY_MM, RING_RADII_MM[1], z))
            out["Ring"].append(_circle(*RING_CENTRE_XY_MM, RING_RADII_MM[0], z)[::-1])
        out["BODY"].append(_ellipse(*BODY_SEMI_AXES_MM, z))
    return out


def exact_volumes_cm3(z_extent_mm: float) -> dict[str, float]:
    """Analytic volumes (cm^3); the BODY spans ``z_extent_mm``."""
    r_in, r_out = RING_RADII_MM
    (x0, x1), (y0, y1), (z0, z1) = BOX_MM
    return {
        "GTV": 4.0 / 3.0 * np.pi * SPHERE_RADIUS_MM**3 * 1e-3,
        "Ureter": np.pi * CYLINDER_RADIUS_MM**2 * (CYLINDER_Z_MM[1] - CYLINDER_Z_MM[0]) * 1e-3,
        "Sacrum": (x1 - x0) * (y1 - y0) * (z1 - z0) * 1e-3,
        "Ring": np.pi * (r_out**2 - r_in**2) * (RING_Z_MM[1] - RING_Z_MM[0]) * 1e-3,
        "BODY": np.pi * BODY_SEMI_AXES_MM[0] * BODY_SEMI_AXES_MM[1] * z_extent_mm * 1e-3,
    }


def _hu_plane(x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    xx, yy = np.meshgrid(x, y)
    hu = np.full(xx.shape, HU["air"])
    a, b = BODY_SEMI_AXES_MM
    hu[(xx / a) ** 2 + (yy / b) ** 2 <= 1] = HU["water"]
    (bx0, bx1), (by0, by1), (bz0, bz1) = BOX_MM
    if bz0 <= z < bz1:
        hu[(xx >= bx0) & (xx < bx1) & (yy >= by0) & (yy < by1)] = HU["Sacrum"]
    hu[xx**2 + yy**2 + z**2 <= SPHERE_RADIUS_MM**2] = HU["GTV"]
    return hu


def write_synthetic_study(
    folder: str | Path,
    *,
    pixel_mm: float = 1.25,
    n_pixels: int = 80,
    slice_mm: float = 2.0,
    n_slices: int = 40,
    feet_first: bool = False,
) -> SyntheticStudy:
    """Write ``folder/CT/CT_*.dcm`` and ``folder/RS.dcm``; slices at z = -39, -37, ... mm."""
    folder = Path(folder)
    ct_folder = folder / "CT"
    ct_folder.mkdir(parents=True, exist_ok=True)
    ids = StudyIds()
    x = (np.arange(n_pixels) - (n_pixels - 1) / 2) * pixel_mm
    y = x.copy()
    z_slices = (np.arange(n_slices) - (n_slices - 1) / 2) * slice_mm
    position = "FFS" if feet_first else "HFS"
    orientation = [-1, 0, 0, 0, 1, 0] if feet_first else [1, 0, 0, 0, 1, 0]
    slice_uids = []
    for k, z in enumerate(z_slices):
        uid = new_uid()
        slice_uids.append(uid)
        plane = _hu_plane(x, y, z)
        first_x = x[-1] if feet_first else x[0]
        if feet_first:
            plane = plane[:, ::-1]
        ds = ct_slice_dataset(
            plane,
            ids,
            PATIENT,
            sop_uid=uid,
            instance_number=(n_slices - k) if feet_first else (k + 1),
            position_mm=[first_x, y[0], z],
            orientation=orientation,
            pixel_mm=(pixel_mm, pixel_mm),
            slice_mm=slice_mm,
            patient_position=position,
            description=f"synthetic CT {position}",
        )
        save_atomic(ds, ct_folder / f"CT_{k:03d}.dcm")
    rtstruct = folder / "RS.dcm"
    roles = dict(GTV="PTV", Ureter="ORGAN", Sacrum="ORGAN", Ring="ORGAN", BODY="EXTERNAL")
    write_rtstruct(rtstruct, _contours(z_slices), roles, z_slices, slice_uids, ids, PATIENT)
    return SyntheticStudy(
        folder=folder,
        ct_folder=ct_folder,
        rtstruct=rtstruct,
        exact_volumes_cm3=exact_volumes_cm3(n_slices * slice_mm),
        catheters_mm=catheters_mm(),
        roles=roles,
        study_uid=ids.study_uid,
        frame_of_reference_uid=ids.frame_uid,
    )


def catheters_mm() -> list[list[list[float]]]:
    """Five straight catheters along x, 10 mm apart in z, 5 mm anterior of the sphere."""
    y = -SPHERE_RADIUS_MM - 5.0
    return [[[-30.0, y, z], [30.0, y, z]] for z in (-20.0, -10.0, 0.0, 10.0, 20.0)]


def example_config_toml(study: SyntheticStudy, name: str = "dicom_flap_example") -> str:
    """An HDR flap plan config for a synthetic study (absolute paths), with DICOM output."""
    catheters = ",\n    ".join(
        "[" + ", ".join(f"[{x:g}, {y:g}, {z:g}]" for x, y, z in c) + "]" for c in study.catheters_mm
    )
    return f'''# HDR flap plan on a synthetic DICOM study (scripts/make_dicom_example.py).
[plan]
name = "{name}"
modality = "hdr_flap"
description = "Synthetic CT + RTSTRUCT: sphere target, ureter (cylinder) and sacrum (box)"

[case]
kind = "dicom"
[case.dicom]
ct_folder = "{study.ct_folder.as_posix()}"
rtstruct = "{study.rtstruct.as_posix()}"
spacing_mm = 2.5               # dose grid spacing; "ct" = the CT voxels
crop = true                    # grid = mapped ROIs and catheters + margin_mm
margin_mm = 10.0
[case.dicom.structures]        # planning name = {{ roi = RTSTRUCT ROI name, role }}
CTV = {{ roi = "GTV", role = "target" }}
ureter = {{ roi = "Ureter", role = "oar" }}
sacrum = {{ roi = "Sacrum", role = "oar" }}

[source]
model = "mHDR-v2_HEBD2012"
air_kerma_strength_U = 40700.0

[applicator]
step_mm = 5.0
active = "auto"
active_margin_mm = 10.0
source_to_surface_mm = 5.0     # catheter to tissue, for the automatic active dwells
max_dwell_time_s = 60.0
catheters_mm = [               # patient mm, tip first
    {catheters},
]

[prescription]
dose_gy = 10.0
structure = "CTV"

[[objectives]]
type = "underdose"
structure = "CTV"
dose_gy = 10.0
weight = 100.0

[[objectives]]
type = "max_dose"
structure = "ureter"
dose_gy = 8.0
weight = 1.0

[[objectives]]
type = "modulation"
weight = 0.05

[[goals]]
structure = "CTV"
metric = "D90_gy"
op = ">="
value = 10.0

[optimizer]
max_iterations = 100

[output]
dicom = true                   # also write dicom/RTPLAN.dcm and dicom/RTDOSE.dcm
'''
