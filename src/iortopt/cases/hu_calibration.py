"""CT number (HU) -> relative electron density and mass density: the HU calibration of a case.

A calibration is a table of points (HU, relative electron density to water, mass density in
g/cm^3), read from a TOML file with one ``[calibration]`` table (format in the packaged
``iortopt/data/hu/generic_ct_calibration.toml``). Densities are piecewise linear in HU between
the points and constant beyond the first and the last point (a CT number below the first point
gets the first point's densities, one above the last the last's). A table must cover
``COVERED_HU`` (-1000 to +1000 HU), so the clamp only ever applies outside air .. dense bone.

The packaged ``generic_ct_calibration`` is ILLUSTRATIVE: typical textbook values in the style of
Schneider et al. 1996 stoichiometric calibrations, not a commissioned calibration of any scanner.

``MATERIAL_HU`` are the CT numbers the built-in phantoms give their materials (also illustrative,
typical values); the phantoms' module docstrings say which structure is which material.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.data_checks import fail, number_list, string
from iortopt.io.toml_file import read_packaged_or_file

#: Name of the packaged default calibration (``iortopt/data/hu/<name>.toml``).
DEFAULT_CALIBRATION = "generic_ct_calibration"
#: Range of CT numbers a calibration table must cover (HU).
COVERED_HU = (-1000.0, 1000.0)

#: CT numbers (HU) of the phantoms' materials: ILLUSTRATIVE typical values.
MATERIAL_HU = {
    "air": -1000.0,
    "lung": -750.0,
    "adipose": -100.0,
    "breast_tissue": -50.0,  # an adipose-glandular mix, about half and half
    "water": 0.0,  # also: cavity fluid (seroma, saline), the silicone flap (TG-43 treats it so)
    "soft_tissue": 40.0,  # skin, gland, ureter, bowel, tumour bed
    "muscle": 50.0,
    "bone": 700.0,  # sacrum, rib: cancellous bone with its cortex, averaged
}


@dataclass(frozen=True, eq=False)
class HuCalibration:
    """A validated calibration table (see the module docstring)."""

    origin: str
    source: str
    illustrative: bool
    hu: np.ndarray  # (N,) strictly increasing
    relative_electron_density: np.ndarray  # (N,) >= 0, non-decreasing
    mass_density_g_cm3: np.ndarray  # (N,) >= 0, non-decreasing
    materials: tuple[str, ...] = ()

    def relative_electron_density_of(self, hu) -> np.ndarray:
        """Relative electron density (to water) of CT numbers ``hu`` (any shape), float32."""
        return _interp(hu, self.hu, self.relative_electron_density)

    def mass_density_g_cm3_of(self, hu) -> np.ndarray:
        """Mass density (g/cm^3) of CT numbers ``hu`` (any shape), float32."""
        return _interp(hu, self.hu, self.mass_density_g_cm3)


def _interp(hu, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    # np.interp clamps to the end values beyond the table, the documented rule.
    return np.interp(hu.ravel(), knots, values).astype(np.float32).reshape(hu.shape)


def parse_calibration(doc: dict, origin: str) -> HuCalibration:
    """Validate a calibration document.

    Raises:
        SourceDataError: naming ``origin``, the table and the field at fault.
    """
    table = doc.get("calibration")
    if not isinstance(table, dict):
        got = "missing" if table is None else f"expected a table, got {type(table).__name__}"
        raise fail(origin, "[calibration]", got)
    where = "[calibration]"
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise fail(origin, f"{where} {unknown[0]}", f"unknown field; expected {sorted(_FIELDS)}")
    source = string(origin, table, where, "source", required=True)
    illustrative = table.get("illustrative", False)
    if not isinstance(illustrative, bool):
        raise fail(origin, f"{where} illustrative", f"expected true or false, got {illustrative!r}")
    hu = number_list(origin, table, where, "hu", min_len=2)
    _strictly_increasing(origin, f"{where} hu", hu)
    if hu[0] > COVERED_HU[0] or hu[-1] < COVERED_HU[1]:
        raise fail(
            origin,
            f"{where} hu",
            f"must cover {COVERED_HU[0]:g} to {COVERED_HU[1]:g} HU, got {hu[0]:g} to {hu[-1]:g}",
        )
    densities = {}
    for key in ("relative_electron_density", "mass_density_g_cm3"):
        values = number_list(origin, table, where, key, min_len=2)
        _density_column(origin, f"{where} {key}", values, len(hu))
        densities[key] = values
    materials = _materials(origin, table, where, len(hu))
    return HuCalibration(origin, source, illustrative, hu, materials=materials, **densities)


_FIELDS = {
    "source",
    "illustrative",
    "hu",
    "relative_electron_density",
    "mass_density_g_cm3",
    "materials",
}


def _strictly_increasing(origin: str, where: str, values: np.ndarray) -> None:
    steps = np.diff(values)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0)) + 1
        raise fail(
            origin,
            where,
            f"must be strictly increasing (entry {k}: {values[k]:g} after {values[k - 1]:g})",
        )


def _density_column(origin: str, where: str, values: np.ndarray, n: int) -> None:
    if len(values) != n:
        raise fail(origin, where, f"expected {n} values (one per hu), got {len(values)}")
    if np.any(values < 0):
        k = int(np.argmax(values < 0))
        raise fail(origin, where, f"must be >= 0 (entry {k}: {values[k]:g})")
    steps = np.diff(values)
    if np.any(steps < 0):
        k = int(np.argmax(steps < 0)) + 1
        raise fail(
            origin,
            where,
            f"must not decrease with HU (entry {k}: {values[k]:g} after {values[k - 1]:g})",
        )


def _materials(origin: str, table: dict, where: str, n: int) -> tuple[str, ...]:
    value = table.get("materials")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, str) for v in value):
        raise fail(origin, f"{where} materials", f"expected {n} strings (one per hu)")
    return tuple(value)


def load_calibration(path_or_name: str = DEFAULT_CALIBRATION) -> HuCalibration:
    """A packaged calibration by name or a TOML file by path, validated.

    Raises:
        SourceDataError: the file cannot be read or a field is invalid (naming file and field).
    """
    doc, origin = read_packaged_or_file(path_or_name, "hu", SourceDataError, "HU calibration")
    return parse_calibration(doc, origin)


@lru_cache(maxsize=1)
def default_calibration() -> HuCalibration:
    """The packaged ILLUSTRATIVE generic calibration (read once)."""
    return load_calibration(DEFAULT_CALIBRATION)
