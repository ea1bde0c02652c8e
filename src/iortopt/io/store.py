"""zarr v3 stores: dose grids with their grid metadata, and whole plans.

Layout of a plan store (``plan.zarr``)::

    /                   attrs: iortopt (version, kind), config, provenance, metrics, summary
    dose_gy             (nz, ny, nx) float32; attrs: grid (shape_zyx, spacing_xyz_mm,
                        origin_xyz_mm), unit
    hu                  (nz, ny, nx) float32 Hounsfield units of the case, attrs: grid, unit
    structures/<name>   (nz, ny, nx) float32 fractional occupancy, attrs: role
    dwells/positions_mm (N, 3), dwells/axes (N, 3), dwells/times_s (N,),     (HDR plans)
    dwells/catheter (N,), dwells/index (N,)
    applicator/centre_mm (3,), radius_mm, time_min, ...                       (X-ray plans)
    dvh/<name>          (2, bins): row 0 dose_gy, row 1 volume_cm3 (cumulative)

Writers build the store under a temporary name beside the target and rename it into place, so a
store that exists is complete. Readers need only ``zarr`` (or any zarr v3 reader).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr

from iortopt import __version__
from iortopt.errors import ConfigError
from iortopt.grid import Grid


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 1-4 MB chunks for dose-like arrays: whole (y, x) planes, a few z planes each."""
    if len(shape) != 3:
        return shape
    nz, ny, nx = shape
    planes = max(1, min(nz, (1 << 20) // max(ny * nx, 1)))
    return (planes, ny, nx)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it to ``final`` (replacing it), else
    delete it.

    Raises:
        ConfigError: ``final`` is a folder and the result a file, or the other way round (a
            folder is never replaced by a file, nor a file by a folder); nothing is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.exists() and final.is_dir() != tmp.is_dir():
            kind = ("folder", "file") if final.is_dir() else ("file", "folder")
            raise ConfigError(f"{final}: is a {kind[0]}; iortopt never replaces it by a {kind[1]}")
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _to_jsonable(value):
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, attrs: dict | None = None
) -> zarr.Array:
    """Create array ``name`` in ``group`` holding ``data`` (chunked for dose-like 3-D arrays)."""
    data = np.asarray(data)
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=_chunks(data.shape))
    arr[...] = data
    if attrs:
        arr.attrs.update(_to_jsonable(attrs))
    return arr


def write_dose_store(
    path: str | Path, dose_gy: np.ndarray, grid: Grid, attrs: dict | None = None
) -> Path:
    """Write a dose grid (nz, ny, nx) in Gy with its grid metadata to a new zarr v3 store."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(
            _to_jsonable({"iortopt": {"version": __version__, "kind": "dose"}, **(attrs or {})})
        )
        write_array(
            root,
            "dose_gy",
            np.asarray(dose_gy, np.float32),
            {"grid": grid.to_attrs(), "unit": "Gy"},
        )
    return Path(path)


def read_dose_store(path: str | Path) -> tuple[np.ndarray, Grid, dict]:
    """Dose (Gy), grid and root attributes of a store written by iortopt."""
    root = zarr.open_group(str(path), mode="r")
    arr = root["dose_gy"]
    return np.asarray(arr[...]), Grid.from_attrs(arr.attrs["grid"]), dict(root.attrs)


def write_plan_store(path: str | Path, plan: dict) -> Path:
    """Write a plan store (layout in the module docstring) from a dict with keys ``grid``,
    ``dose_gy``, ``structures`` (list of (name, role, occupancy)), ``groups`` (group name ->
    dict of arrays, e.g. the dwells), ``dvhs`` (name -> DVH), optionally ``hu`` (the case's HU
    on the grid, written when not None), and ``attrs`` (config, provenance, metrics, summary)."""
    grid: Grid = plan["grid"]
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(
            _to_jsonable({"iortopt": {"version": __version__, "kind": "plan"}, **plan["attrs"]})
        )
        write_array(
            root,
            "dose_gy",
            np.asarray(plan["dose_gy"], np.float32),
            {"grid": grid.to_attrs(), "unit": "Gy"},
        )
        if plan.get("hu") is not None:
            write_array(
                root,
                "hu",
                np.asarray(plan["hu"], np.float32),
                {"grid": grid.to_attrs(), "unit": "HU"},
            )
        structures = root.create_group("structures")
        for name, role, occupancy in plan["structures"]:
            write_array(
                structures,
                name,
                np.asarray(occupancy, np.float32),
                {"role": role, "grid": grid.to_attrs()},
            )
        for group_name, arrays in plan.get("groups", {}).items():
            group = root.create_group(group_name)
            for key, values in arrays.items():
                write_array(group, key, np.asarray(values))
        dvh_group = root.create_group("dvh")
        for name, dvh in plan["dvhs"].items():
            write_array(
                dvh_group,
                name,
                np.stack([dvh.dose_gy, dvh.volume_cm3]).astype(np.float64),
                {
                    "rows": ["dose_gy", "volume_cm3 (cumulative)"],
                    "total_volume_cm3": dvh.total_volume_cm3,
                },
            )
    return Path(path)
