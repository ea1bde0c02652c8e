"""TG-43 source datasets: the packaged consensus/CLRP data and user-commissioned files.

File format (TOML, one source per file; the packaged ``iortopt/data/sources`` files are examples)::

    [source]
    name = "mHDR-v2"                              # model name
    dataset = "HEBD2012"                          # which consistent dataset the numbers come from
    isotope = "Ir-192"
    dose_rate_constant_cGy_h-1_U-1 = 1.10942      # Lambda
    active_length_cm = 0.35                       # L of the line-source geometry function (> 0)
    half_life_days = 73.83
    citation = "..."

    [radial_dose_function]
    r_cm = [0.0, 0.06, ...]                       # strictly increasing, >= 0, must bracket 1 cm
    g_line = [...]                                # g_L(r), normalised to 1 at r0 = 1 cm
    g_point = [...]                               # optional: g_P(r), for the 1-D formalism

    [anisotropy_function]
    theta_deg = [0.0, ..., 180.0]                 # strictly increasing, within 0..180, incl. 90
    r_cm = [...]                                  # strictly increasing, >= 0
    F = [[...], ...]                              # F[i][j] at theta_deg[i], r_cm[j]; nan = no data

    [anisotropy_factor_1d]                        # optional: phi_an(r), for the 1-D formalism
    r_cm = [...]
    phi_an = [...]

theta is measured from the source's long axis, theta = 0 at the distal tip (HEBD/CLRP convention).
Missing F values (``nan``, CLRP "-" entries near the axis) are filled with the nearest published
value at the same angle; angles outside the tabulated range take the nearest tabulated angle.
Every dataset is self-consistent: never mix one dataset's Lambda with another's
tables, which is why each file carries all of them. ``iortopt sources import FILE.xls`` writes this
format from a consensus (HEBD 2012 / ESTRO) spreadsheet (see :mod:`iortopt.physics.consensus_xls`).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.toml_file import read_toml

R0_CM = 1.0
THETA0_DEG = 90.0
#: Tolerance for the normalisation checks g(r0) = 1 and F(r0, 90 deg) = 1.
NORMALISATION_TOLERANCE = 0.02


@dataclass(frozen=True, eq=False)
class SourceData:
    """One consistent TG-43 dataset of a source model. Distances in cm, angles in degrees."""

    name: str
    dataset: str
    isotope: str
    dose_rate_constant: float  # Lambda, cGy h^-1 U^-1
    active_length_cm: float
    half_life_days: float
    citation: str
    g_r_cm: np.ndarray
    g_line: np.ndarray
    F_theta_deg: np.ndarray
    F_r_cm: np.ndarray
    F: np.ndarray  # (n_theta, n_r), gaps filled
    g_point: np.ndarray | None = None
    phi_r_cm: np.ndarray | None = None
    phi_an: np.ndarray | None = None
    path: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """Identifier used on the command line: ``<name>_<dataset>``."""
        return f"{self.name}_{self.dataset}"

    @property
    def has_1d(self) -> bool:
        """True if the dataset carries g_P(r) and phi_an(r) for the 1-D formalism."""
        return self.g_point is not None and self.phi_an is not None


def _fail(origin: str, where: str, problem: str) -> SourceDataError:
    return SourceDataError(f"{origin}: {where}: {problem}")


def _array(origin: str, table: dict, section: str, key: str, *, required: bool = True):
    if key not in table:
        if required:
            raise _fail(origin, f"[{section}] {key}", "missing")
        return None
    value = table[key]
    flat = value
    while isinstance(flat, list) and flat and isinstance(flat[0], list):
        flat = [item for row in flat for item in (row if isinstance(row, list) else [row])]
    items = flat if isinstance(flat, list) else [flat]
    bad = next((v for v in items if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    if bad is not None:
        raise _fail(origin, f"[{section}] {key}", f"expected numbers, found {bad!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _fail(origin, f"[{section}] {key}", f"expected numbers ({exc})") from None
    return arr


def _knots(origin: str, table: dict, section: str, key: str, lo: float, hi: float | None):
    arr = _array(origin, table, section, key)
    where = f"[{section}] {key}"
    if arr.ndim != 1 or arr.size < 2:
        raise _fail(origin, where, f"expected a list of at least 2 numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise _fail(origin, where, "contains nan or inf")
    if np.any(np.diff(arr) <= 0):
        bad = int(np.argmax(np.diff(arr) <= 0))
        raise _fail(origin, where, f"must be strictly increasing (entry {bad + 1}: {arr[bad + 1]})")
    if arr[0] < lo or (hi is not None and arr[-1] > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _fail(origin, where, f"values must lie in {rng}, got {arr[0]} .. {arr[-1]}")
    return arr


def _values(origin: str, table: dict, section: str, key: str, n: int, *, required: bool = True):
    arr = _array(origin, table, section, key, required=required)
    if arr is None:
        return None
    where = f"[{section}] {key}"
    if arr.shape != (n,):
        raise _fail(origin, where, f"expected {n} values (one per r_cm), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise _fail(origin, where, "values must be finite and non-negative")
    return arr


def _fill_gaps_along_r(F: np.ndarray) -> np.ndarray:
    filled = F.copy()
    cols = np.arange(F.shape[1])
    for row in filled:
        ok = np.isfinite(row)
        nearest = cols[ok][np.abs(cols[:, None] - cols[ok][None, :]).argmin(axis=1)]
        row[:] = row[nearest]
    return filled


def parse_source(doc: dict, origin: str = "<source data>") -> SourceData:
    """Validate a parsed source document (the TOML layout above) and build :class:`SourceData`.

    Raises:
        SourceDataError: naming the file, section and field that is wrong and what was expected.
    """
    for section in ("source", "radial_dose_function", "anisotropy_function"):
        if section not in doc:
            raise _fail(origin, f"[{section}]", "section missing")
        if not isinstance(doc[section], dict):
            raise _fail(origin, f"[{section}]", f"expected a table, got {doc[section]!r}")
    src = doc["source"]
    for key in ("name", "dataset"):
        if not isinstance(src.get(key), str) or not src[key].strip():
            raise _fail(origin, f"[source] {key}", "expected a non-empty string")
    for key in ("isotope", "citation"):
        if not isinstance(src.get(key, ""), str):
            raise _fail(origin, f"[source] {key}", f"expected a string, got {src[key]!r}")
    scalars = {}
    for key in ("dose_rate_constant_cGy_h-1_U-1", "active_length_cm", "half_life_days"):
        value = src.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(origin, f"[source] {key}", f"expected a positive number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise _fail(origin, f"[source] {key}", f"expected a positive number, got {value!r}")
        scalars[key] = float(value)

    rad = doc["radial_dose_function"]
    g_r = _knots(origin, rad, "radial_dose_function", "r_cm", 0.0, None)
    g_line = _values(origin, rad, "radial_dose_function", "g_line", g_r.size)
    g_point = _values(origin, rad, "radial_dose_function", "g_point", g_r.size, required=False)
    if not (g_r[0] <= R0_CM <= g_r[-1]):
        raise _fail(origin, "[radial_dose_function] r_cm", "must bracket the reference r0 = 1 cm")
    g_at_r0 = float(np.interp(R0_CM, g_r, g_line))
    if abs(g_at_r0 - 1.0) > NORMALISATION_TOLERANCE:
        raise _fail(
            origin, "[radial_dose_function] g_line", f"g_L(1 cm) = {g_at_r0:.4f}, expected 1"
        )

    ani = doc["anisotropy_function"]
    th = _knots(origin, ani, "anisotropy_function", "theta_deg", 0.0, 180.0)
    f_r = _knots(origin, ani, "anisotropy_function", "r_cm", 0.0, None)
    F = _array(origin, ani, "anisotropy_function", "F")
    if F.shape != (th.size, f_r.size):
        raise _fail(
            origin,
            "[anisotropy_function] F",
            f"expected {th.size} rows (theta_deg) of {f_r.size} values (r_cm), got shape {F.shape}",
        )
    if np.any(np.isinf(F)) or np.any(F[np.isfinite(F)] < 0):
        raise _fail(
            origin, "[anisotropy_function] F", "values must be non-negative (nan = no data)"
        )
    empty_rows = np.flatnonzero(~np.isfinite(F).any(axis=1))
    if empty_rows.size:
        raise _fail(
            origin, "[anisotropy_function] F", f"no value at theta = {th[empty_rows[0]]} deg"
        )
    F = _fill_gaps_along_r(F)
    row90 = np.interp(THETA0_DEG, th, np.arange(th.size))
    if row90 != int(row90):
        raise _fail(origin, "[anisotropy_function] theta_deg", "must include 90 degrees")
    f_90_r0 = float(np.interp(R0_CM, f_r, F[int(row90)]))
    if abs(f_90_r0 - 1.0) > NORMALISATION_TOLERANCE:
        raise _fail(
            origin, "[anisotropy_function] F", f"F(1 cm, 90 deg) = {f_90_r0:.4f}, expected 1"
        )

    phi_r = phi = None
    if "anisotropy_factor_1d" in doc:
        one_d = doc["anisotropy_factor_1d"]
        if not isinstance(one_d, dict):
            raise _fail(origin, "[anisotropy_factor_1d]", f"expected a table, got {one_d!r}")
        phi_r = _knots(origin, one_d, "anisotropy_factor_1d", "r_cm", 0.0, None)
        phi = _values(origin, one_d, "anisotropy_factor_1d", "phi_an", phi_r.size)

    return SourceData(
        name=src["name"].strip(),
        dataset=src["dataset"].strip(),
        isotope=str(src.get("isotope", "Ir-192")),
        dose_rate_constant=scalars["dose_rate_constant_cGy_h-1_U-1"],
        active_length_cm=scalars["active_length_cm"],
        half_life_days=scalars["half_life_days"],
        citation=str(src.get("citation", "")),
        g_r_cm=g_r,
        g_line=g_line,
        F_theta_deg=th,
        F_r_cm=f_r,
        F=F,
        g_point=g_point,
        phi_r_cm=phi_r,
        phi_an=phi,
        path=origin,
    )


def load_source_file(path: str | Path) -> SourceData:
    """Read and validate a user source file (TOML, layout in the module docstring)."""
    return parse_source(read_toml(path, SourceDataError), str(path))


def _packaged_dir():
    return resources.files("iortopt") / "data" / "sources"


def packaged_source_keys() -> list[str]:
    """Keys (``<name>_<dataset>``) of all packaged datasets, consensus (HEBD) first."""
    keys = [
        p.name.removesuffix(".toml") for p in _packaged_dir().iterdir() if p.name.endswith(".toml")
    ]
    return sorted(keys, key=lambda k: (not k.endswith("HEBD2012"), k.lower()))


def load_source(name: str) -> SourceData:
    """Load a packaged dataset by key (``mHDR-v2_HEBD2012``), by model name (the consensus dataset
    if one exists, else CLRP), or a user file if ``name`` is a path to a ``.toml`` file."""
    if name.endswith(".toml") or Path(name).is_file():
        return load_source_file(name)
    keys = packaged_source_keys()
    lower = {k.lower(): k for k in keys}
    for candidate in (name, f"{name}_HEBD2012", f"{name}_CLRP"):
        if candidate.lower() in lower:
            resource = _packaged_dir() / f"{lower[candidate.lower()]}.toml"
            with resource.open("rb") as fh:
                return parse_source(tomllib.load(fh), f"packaged:{resource.name}")
    raise SourceDataError(
        f"unknown source {name!r}: expected one of {', '.join(keys)} or a path to a .toml file"
    )
