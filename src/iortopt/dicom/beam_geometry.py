"""IEC 61217 machine angles of an external beam from its axis in DICOM patient coordinates.

References: IEC 61217:2011 "Radiotherapy equipment - Coordinates, movements and scales", clause
3 (coordinate systems) and 4 (movements); DICOM PS3.3 C.7.6.2.1.1 (patient coordinates LPS),
C.7.3.1.1.2 (Patient Position) and C.8.8.25.6 (RT coordinate systems, which follow IEC 61217).

Coordinate systems (all right-handed, mm or unit vectors):

- DICOM patient (LPS): +x towards the patient's left, +y posterior, +z superior (head).
- IEC FIXED (f): origin at the isocentre, +Z_f up (towards the ceiling), +Y_f horizontal from
  the isocentre towards the gantry, +X_f to the right of an observer facing the gantry.
- IEC PATIENT SUPPORT (s) = IEC TABLE TOP (t) here (no eccentric, pitch or roll rotation, table
  translations ignored: only directions matter): the FIXED system rotated about Z_f by the
  patient support angle.
- IEC GANTRY (g): the FIXED system rotated about Y_f by the gantry angle; the radiation source
  lies on +Z_g.
- IEC BEAM LIMITING DEVICE (b): the GANTRY system rotated about Z_g by the beam limiting device
  (collimator) angle.

Every IEC rotation is positive clockwise when viewed from the origin along the positive axis (a
right-handed rotation): gantry 90 deg puts the source on +X_f, a positive patient support angle
turns the couch counter-clockwise seen from above, a positive collimator angle turns X_b towards
Y_g (counter-clockwise seen from the source). Angles are written in [0, 360).

Patient Position -> IEC TABLE TOP axes (directions of the patient's left L, superior S and
anterior A = -posterior), derived from the position's words (head/feet towards the gantry,
supine/prone = anterior up/down, decubitus left/right = that side down) with L = P x S:

====== ========= ========= =========
 pos.       L         S         A
====== ========= ========= =========
 HFS      +X_t      +Y_t      +Z_t
 HFP      -X_t      +Y_t      -Z_t
 FFS      -X_t      -Y_t      +Z_t
 FFP      +X_t      -Y_t      -Z_t
 HFDL     -Z_t      +Y_t      +X_t
 HFDR     +Z_t      +Y_t      -X_t
 FFDL     -Z_t      -Y_t      -X_t
 FFDR     +Z_t      -Y_t      +X_t
====== ========= ========= =========

So for HFS a beam from anterior (source anterior, travelling along +y LPS) is gantry 0 and one
from the patient's left (travelling along -x) gantry 90.

From an axis to angles (:func:`angles_from_axis`): gantry and couch alone reach every direction.
The couch angle is kept in (-90, 90] (0 when the beam lies in the table's transverse X_t-Z_t
plane, e.g. every beam of a coplanar plan), the gantry angle follows; the collimator angle puts
X_b along the reference direction (for an electron cone: its toe) projected perpendicular to the
axis (0 when there is none). A beam tilted towards the head or feet therefore needs a couch
rotation; machines that tilt their head (Gantry Pitch Angle) could use that instead, which is
not written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Patient Position -> (3, 3) matrix M with v_table = M @ v_LPS (rows: X_t, Y_t, Z_t in LPS).
_TABLE_FROM_LPS = {
    # columns are the table-top images of L (+x), P (+y), S (+z)
    "HFS": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "HFP": ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 0, -1), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "HFDL": ((0, -1, 0), (0, 0, 1), (-1, 0, 0)),
    "HFDR": ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
    "FFDL": ((0, 1, 0), (0, 0, -1), (-1, 0, 0)),
    "FFDR": ((0, -1, 0), (0, 0, -1), (1, 0, 0)),
}
PATIENT_POSITIONS = tuple(_TABLE_FROM_LPS)
#: Below this horizontal component (of a unit vector) a beam counts as vertical: couch 0.
_VERTICAL = 1e-9


@dataclass(frozen=True)
class BeamAngles:
    """IEC 61217 angles in degrees, each in [0, 360)."""

    gantry_deg: float
    collimator_deg: float
    couch_deg: float


def table_from_patient(patient_position: str) -> np.ndarray:
    """(3, 3) matrix taking LPS vectors to IEC TABLE TOP vectors for ``patient_position``.

    Raises:
        ValueError: an unsupported Patient Position.
    """
    try:
        return np.asarray(_TABLE_FROM_LPS[patient_position], np.float64)
    except KeyError:
        raise ValueError(
            f"Patient Position {patient_position!r} is not supported (one of "
            f"{', '.join(PATIENT_POSITIONS)})"
        ) from None


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _fixed_from_patient(couch_deg: float, patient_position: str) -> np.ndarray:
    return _rot_z(couch_deg) @ table_from_patient(patient_position)


def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(3)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise ValueError(f"{what} must be a finite non-zero 3-vector, got {v.tolist()}")
    return v / n


def _wrap(deg: float) -> float:
    """Into [0, 360), with values that round to 360 written as 0."""
    w = float(deg) % 360.0
    return 0.0 if w >= 360.0 - 1e-9 else w


def axis_from_angles(gantry_deg: float, couch_deg: float, patient_position: str) -> np.ndarray:
    """Unit beam axis (from the source towards the patient) in LPS."""
    source_fixed = _rot_y(gantry_deg) @ np.array([0.0, 0.0, 1.0])
    return _fixed_from_patient(couch_deg, patient_position).T @ -source_fixed


def collimator_x_from_angles(
    gantry_deg: float, collimator_deg: float, couch_deg: float, patient_position: str
) -> np.ndarray:
    """Unit X_b axis of the beam limiting device in LPS."""
    x_fixed = _rot_y(gantry_deg) @ _rot_z(collimator_deg) @ np.array([1.0, 0.0, 0.0])
    return _fixed_from_patient(couch_deg, patient_position).T @ x_fixed


def angles_from_axis(beam_axis, reference_direction=None, patient_position: str = "HFS"):
    """IEC gantry, collimator and couch angles (:class:`BeamAngles`) of a beam along
    ``beam_axis`` (LPS, from the source towards the patient), with X_b along
    ``reference_direction`` (LPS) projected perpendicular to the axis (module docstring);
    collimator 0 when there is none or it has no such part.

    Raises:
        ValueError: a zero or non-finite axis, or an unsupported Patient Position.
    """
    table = table_from_patient(patient_position)
    source = table @ -_unit(beam_axis, "beam_axis")  # towards the source, table-top axes
    if math.hypot(source[0], source[1]) < _VERTICAL:
        couch = 0.0
    else:
        # source_t = R_z(-couch) (sin g, 0, cos g): couch = atan2(-s_y, s_x), kept in (-90, 90]
        couch = math.degrees(math.atan2(-source[1], source[0]))
        if couch > 90.0 + 1e-9:
            couch -= 180.0
        elif couch <= -90.0 + 1e-9:
            couch += 180.0
    c, s = math.cos(math.radians(couch)), math.sin(math.radians(couch))
    gantry = math.degrees(math.atan2(c * source[0] - s * source[1], source[2]))
    collimator = 0.0
    if reference_direction is not None:
        ref = np.asarray(reference_direction, np.float64).reshape(3)
        if not np.all(np.isfinite(ref)):
            raise ValueError(f"reference_direction must be finite, got {ref.tolist()}")
        ref_gantry = _rot_y(gantry).T @ _fixed_from_patient(couch, patient_position) @ ref
        if math.hypot(ref_gantry[0], ref_gantry[1]) > 1e-6 * max(1.0, float(np.abs(ref).max())):
            collimator = math.degrees(math.atan2(ref_gantry[1], ref_gantry[0]))
    return BeamAngles(_wrap(gantry), _wrap(collimator), _wrap(couch))


def angle_between_deg(a, b) -> float:
    """Angle (degrees) between two non-zero vectors."""
    cos = float(_unit(a, "a") @ _unit(b, "b"))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))
