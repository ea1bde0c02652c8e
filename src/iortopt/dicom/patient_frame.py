"""The rigid mapping from a case's planning frame to DICOM patient coordinates (LPS, mm).

A case imported from DICOM is planned in patient coordinates already (identity mapping, the CT's
Patient Position). A built-in phantom is built in its own frame and declares in
``case.info["patient_frame"]`` how it lies on the couch::

    {"patient_position": "HFS", "rotation": [[...], [...], [...]], "translation_mm": [x, y, z]}

meaning p_LPS = rotation @ p_case + translation_mm. Exports (RTPLAN, RTDOSE) apply it so that
the plan's beam and the dose grid are in the patient frame. The rotation must be a signed
permutation (a multiple of 90 degrees about the axes) with determinant +1, so that the dose grid
stays axis-aligned: :meth:`PatientFrame.dose_to_patient` then permutes and flips the array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from iortopt.dicom.beam_geometry import PATIENT_POSITIONS
from iortopt.grid import Grid

#: The Patient Position assumed when a study does not record one.
DEFAULT_PATIENT_POSITION = "HFS"


def _identity() -> np.ndarray:
    return np.eye(3)


@dataclass(frozen=True, eq=False)
class PatientFrame:
    """p_LPS = ``rotation`` @ p_case + ``translation_mm``, patient lying as ``patient_position``."""

    patient_position: str = DEFAULT_PATIENT_POSITION
    rotation: np.ndarray = field(default_factory=_identity)
    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        r = np.asarray(self.rotation, np.float64)
        t = np.asarray(self.translation_mm, np.float64)
        if self.patient_position not in PATIENT_POSITIONS:
            raise ValueError(
                f"patient_position: {self.patient_position!r} is not one of "
                f"{', '.join(PATIENT_POSITIONS)}"
            )
        signed_permutation = (
            r.shape == (3, 3)
            and np.all(np.isin(r, (-1.0, 0.0, 1.0)))
            and np.all(np.abs(r).sum(axis=0) == 1)
            and np.all(np.abs(r).sum(axis=1) == 1)
        )
        if not signed_permutation or round(float(np.linalg.det(r))) != 1:
            raise ValueError(
                f"rotation: {r.tolist()} is not a proper rotation by multiples of 90 degrees "
                "(a signed permutation matrix with determinant +1)"
            )
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise ValueError(f"translation_mm: {t.tolist()} is not three finite numbers")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation_mm", t)

    @classmethod
    def from_info(cls, info: dict) -> PatientFrame:
        """The case's declared frame, else the identity with the imported study's Patient
        Position (``info["dicom"]["patient_position"]``), else HFS.

        Raises:
            ValueError: a malformed declaration or an unsupported Patient Position.
        """
        declared = info.get("patient_frame")
        if declared is not None:
            return cls(
                str(declared.get("patient_position", DEFAULT_PATIENT_POSITION)),
                np.asarray(declared.get("rotation", _identity()), np.float64),
                np.asarray(declared.get("translation_mm", (0.0, 0.0, 0.0)), np.float64),
            )
        position = str((info.get("dicom") or {}).get("patient_position") or "")
        return cls(position or DEFAULT_PATIENT_POSITION)

    def to_dict(self) -> dict:
        return {
            "patient_position": self.patient_position,
            "rotation": self.rotation.tolist(),
            "translation_mm": self.translation_mm.tolist(),
        }

    def points_to_patient(self, points_mm) -> np.ndarray:
        """Points (..., 3) case mm -> LPS mm."""
        return np.asarray(points_mm, np.float64) @ self.rotation.T + self.translation_mm

    def vectors_to_patient(self, vectors) -> np.ndarray:
        """Directions (..., 3) case -> LPS (rotation only)."""
        return np.asarray(vectors, np.float64) @ self.rotation.T

    def dose_to_patient(self, dose_zyx: np.ndarray, grid: Grid) -> tuple[np.ndarray, Grid]:
        """The (z, y, x) array on ``grid`` (case frame) as an array on an axis-aligned LPS grid:
        the value at case point p lands at LPS point rotation @ p + translation_mm."""
        dose = np.asarray(dose_zyx)
        # patient axis i = sign * case axis k(i); numpy axes are (z, y, x) = 2 - xyz index
        source_axis = [int(np.flatnonzero(self.rotation[i])[0]) for i in range(3)]
        sign = [float(self.rotation[i, source_axis[i]]) for i in range(3)]
        out = np.transpose(dose, [2 - source_axis[2 - a] for a in range(3)])
        spacing = np.asarray(grid.spacing_xyz_mm)
        first = np.asarray(grid.origin_xyz_mm)
        last = first + spacing * (np.asarray(grid.shape_zyx[::-1]) - 1)
        origin = np.empty(3)
        for i in range(3):
            k = source_axis[i]
            if sign[i] < 0:
                out = np.flip(out, axis=2 - i)
                origin[i] = -last[k] + self.translation_mm[i]
            else:
                origin[i] = first[k] + self.translation_mm[i]
        new_spacing = tuple(spacing[source_axis[i]] for i in range(3))
        return np.ascontiguousarray(out), Grid(out.shape, new_spacing, tuple(origin))
