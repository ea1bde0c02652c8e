"""Shield material data: broad-beam transmission per material and photon spectrum (TOML).

File format (the packaged ``generic_shield_materials`` is an example, ILLUSTRATIVE)::

    [materials]
    name = "generic_shield_materials"
    illustrative = true                 # required: true for made-up / teaching data
    citation = "..."                    # optional
    notes = "..."                       # optional

    [[material]]
    name = "lead"
    density_g_cm3 = 11.35               # optional, recorded only

    [[material.transmission]]
    spectrum = "Ir-192"                 # "Ir-192" (HDR sources) or "50kV" (X-ray spheres)
    thickness_mm = [0, 1, 2, 5, ...]    # starts at 0, strictly increasing, at least 2 entries
    transmission = [1, 0.87, ...]       # T(0) = 1, positive, non-increasing

Every failure names the file, the material and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from iortopt.errors import SourceDataError
from iortopt.io.data_checks import fail as _fail
from iortopt.io.data_checks import number, number_list, string
from iortopt.io.toml_file import packaged_names, read_packaged_or_file
from iortopt.physics.shield import TransmissionTable

DEFAULT_MATERIALS = "generic_shield_materials"
#: Photon spectrum of each modality's source, the key into the transmission tables.
SPECTRUM_OF_MODALITY = {"hdr_flap": "Ir-192", "xray_sphere": "50kV"}


@dataclass(frozen=True)
class ShieldMaterials:
    name: str
    illustrative: bool
    citation: str
    origin: str
    tables: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def materials(self) -> list[str]:
        return sorted({m for m, _ in self.tables})

    def table(self, material: str, spectrum: str, dtype=jnp.float32) -> TransmissionTable:
        """The transmission table of ``material`` for ``spectrum`` (device arrays).

        Raises:
            KeyError: with the materials and spectra available.
        """
        key = (material, spectrum)
        if key not in self.tables:
            have = ", ".join(f"{m} ({s})" for m, s in sorted(self.tables))
            raise KeyError(
                f"no transmission data for material {material!r} and spectrum {spectrum!r} in "
                f"{self.origin}; available: {have}"
            )
        x, t = self.tables[key]
        return TransmissionTable(jnp.asarray(x, dtype), jnp.asarray(np.log(t), dtype))


def _parse_transmission(origin: str, entry, where: str) -> tuple[str, np.ndarray, np.ndarray]:
    if not isinstance(entry, dict):
        raise _fail(origin, where, "expected a table")
    spectrum = entry.get("spectrum")
    if not isinstance(spectrum, str) or not spectrum.strip():
        raise _fail(origin, f"{where} spectrum", f"expected a non-empty string, got {spectrum!r}")
    x = number_list(origin, entry, where, "thickness_mm", min_len=2)
    t = number_list(origin, entry, where, "transmission", min_len=2)
    if x.shape != t.shape:
        raise _fail(
            origin, where, f"thickness_mm has {x.size} entries but transmission has {t.size}"
        )
    if x[0] != 0.0 or np.any(np.diff(x) <= 0):
        raise _fail(origin, f"{where} thickness_mm", "must start at 0 and strictly increase")
    if t[0] != 1.0:
        raise _fail(origin, f"{where} transmission", f"must be 1 at thickness 0, got {t[0]!r}")
    if np.any(t <= 0) or np.any(np.diff(t) > 0):
        raise _fail(origin, f"{where} transmission", "must be positive and non-increasing")
    return spectrum.strip(), x, t


def parse_shield_materials(doc: dict, origin: str = "<shield materials>") -> ShieldMaterials:
    """Validate a parsed materials document (module docstring for the format)."""
    head = doc.get("materials")
    if not isinstance(head, dict):
        raise _fail(origin, "[materials]", "missing table")
    name = head.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(origin, "[materials] name", "expected a non-empty string")
    illustrative = head.get("illustrative")
    if not isinstance(illustrative, bool):
        raise _fail(origin, "[materials] illustrative", "expected true or false")
    entries = doc.get("material")
    if not isinstance(entries, list) or not entries:
        raise _fail(origin, "[[material]]", "expected at least one material")
    tables = {}
    for i, entry in enumerate(entries):
        mat = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(mat, str) or not mat.strip():
            raise _fail(origin, f"[[material]] #{i + 1} name", "expected a non-empty string")
        if "density_g_cm3" in entry:
            number(origin, entry, f"[[material]] {mat!r}", "density_g_cm3")
        rows = entry.get("transmission")
        if not isinstance(rows, list) or not rows:
            raise _fail(origin, f"material {mat!r} transmission", "expected at least one table")
        for j, row in enumerate(rows):
            where = f"material {mat!r} transmission #{j + 1}"
            spectrum, x, t = _parse_transmission(origin, row, where)
            if (mat, spectrum) in tables:
                raise _fail(origin, where, f"spectrum {spectrum!r} given twice")
            tables[(mat.strip(), spectrum)] = (x, t)
    citation = string(origin, head, "[materials]", "citation", required=False)
    string(origin, head, "[materials]", "notes", required=False)
    return ShieldMaterials(name.strip(), illustrative, citation, origin, tables)


def packaged_shield_materials() -> list[str]:
    return packaged_names("shields")


def load_shield_materials(path_or_name: str | Path = DEFAULT_MATERIALS) -> ShieldMaterials:
    """A packaged materials file by name or a TOML file by path.

    Raises:
        SourceDataError: unknown name, unreadable file or invalid content (file and field named).
    """
    doc, origin = read_packaged_or_file(
        path_or_name, "shields", SourceDataError, "shield materials"
    )
    return parse_shield_materials(doc, origin)
