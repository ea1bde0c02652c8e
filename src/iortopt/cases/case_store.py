"""A planning case (grid, structures, HU) as a zarr v3 store, written by ``iortopt dicom import``.

Layout::

    /                   attrs: iortopt (version, kind "case"), case (name, info without arrays)
    hu                  (nz, ny, nx) float32 Hounsfield units on the grid (cases with HU)
    structures/<name>   (nz, ny, nx) float32 fractional occupancy; attrs: role, grid
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from iortopt import __version__
from iortopt.cases.case import Case
from iortopt.io.store import _to_jsonable, atomic_path, write_array


def write_case_store(path: str | Path, case: Case) -> Path:
    """Write ``case`` to a new zarr v3 store under a temporary name, then rename it."""
    info = {k: v for k, v in case.info.items() if not isinstance(v, np.ndarray)}
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(
            _to_jsonable(
                {
                    "iortopt": {"version": __version__, "kind": "case"},
                    "case": {"name": case.name, "grid": case.grid.to_attrs(), "info": info},
                }
            )
        )
        if case.hu is not None:
            write_array(root, "hu", case.hu, {"grid": case.grid.to_attrs(), "unit": "HU"})
        group = root.create_group("structures")
        for s in case.structures:
            write_array(group, s.name, s.occupancy, {"role": s.role, "grid": case.grid.to_attrs()})
    return Path(path)
