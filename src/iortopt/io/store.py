"""zarr v3 stores: dose grids with their grid metadata, and whole plans, as OME-Zarr.

Layout of a plan store (``plan.zarr``)::

    /                   attrs: iortopt (version, kind), config, provenance, metrics, summary,
                        ome (OME-NGFF 0.5 image "dose": dataset dose_gy)
    dose_gy             (nz, ny, nx) float32 Gy; attrs: grid (shape_zyx, spacing_xyz_mm,
                        origin_xyz_mm), unit
    labels/             attrs: ome.labels = ["structures"]
    labels/structures/  OME-NGFF 0.5 label image of the dose image: dataset "0"
    labels/structures/0 (nz, ny, nx) uint8 (uint16 past 255 structures): 0 = none, k = the
                        structure whose ``label-value`` is k in ``ome.image-label.properties``
                        (name, role); colours as in the figures (``ome.image-label.colors``)
    ct/                 OME-NGFF 0.5 image "ct" (cases with HU: DICOM cases and the phantoms)
    ct/hu               (nz, ny, nx) float32 Hounsfield units of the case; attrs: grid, unit
    structures/<name>   (nz, ny, nx) float32 fractional occupancy, attrs: role
    dwells/positions_mm (N, 3), dwells/axes (N, 3), dwells/times_s (N,),     (HDR plans)
    dwells/catheter (N,), dwells/index (N,)
    applicator/centre_mm (3,), radius_mm, time_min, ...                       (X-ray plans)
    dvh/<name>          (2, bins): row 0 dose_gy, row 1 volume_cm3 (cumulative)
    pareto/             (HDR plans with [pareto]) times_s (K, N), weights (K, G), group_values
                        (K, G), objective (K,), non_dominated (K,), metrics (K, M); attrs:
                        groups, metric_columns (``structure.metric`` of each column)

A dose store (``iortopt dose``) holds the root attributes and ``dose_gy`` only, also as an
OME-NGFF image.

OME-NGFF images (:func:`ome_image_attrs`) have axes z, y, x of type space in millimetre, one
resolution level, and the coordinate transformations scale = the voxel spacing (z, y, x) mm and
translation = the grid origin (z, y, x) mm, the centre of voxel (0, 0, 0) in the case's frame, so
OME-Zarr readers (ngff-zarr, ome-zarr, napari-ome-zarr, 3D Slicer) show them at their physical
size and place. The label image holds, per voxel, the structure whose fractional occupancy there
is > 0.5; where several are, the smallest structure (fewest such voxels) wins, so an organ inside
the body outline stays visible. The exact occupancies are in ``structures/``.

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
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    attrs: dict | None = None,
    dimension_names: tuple[str, ...] | None = None,
) -> zarr.Array:
    """Create array ``name`` in ``group`` holding ``data`` (chunked for dose-like 3-D arrays)."""
    data = np.asarray(data)
    arr = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=_chunks(data.shape),
        dimension_names=dimension_names,
    )
    arr[...] = data
    if attrs:
        arr.attrs.update(_to_jsonable(attrs))
    return arr


#: NGFF version of the OME metadata written (the version that goes with zarr v3).
NGFF_VERSION = "0.5"
_AXES_ZYX = ("z", "y", "x")


def ome_image_attrs(name: str, grid: Grid, dataset_path: str) -> dict:
    """OME-NGFF 0.5 ``ome`` attributes of a one-level image group whose array ``dataset_path``
    (relative to the group) holds a (nz, ny, nx) array on ``grid``: axes z, y, x in millimetre,
    scale = spacing (z, y, x) mm, translation = origin (z, y, x) mm (centre of voxel 0)."""
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                # type and metadata describe the downscaling: none here, one resolution level
                "type": "none",
                "metadata": {"description": "one resolution level, no downscaling"},
                "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in _AXES_ZYX],
                "datasets": [
                    {
                        "path": dataset_path,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": list(grid.spacing_xyz_mm[::-1])},
                            {"type": "translation", "translation": list(grid.origin_xyz_mm[::-1])},
                        ],
                    }
                ],
            }
        ],
    }


def structure_label_volume(
    occupancies: list[np.ndarray], shape_zyx: tuple[int, int, int]
) -> np.ndarray:
    """One integer label per voxel from fractional occupancies (each ``shape_zyx``).

    Label k (1-based) marks voxels where structure k - 1 has occupancy > 0.5; where several do,
    the structure with the fewest such voxels wins (ties: the later one). 0 = no structure.
    uint8, or uint16 past 255 structures.
    """
    dtype = np.uint8 if len(occupancies) < 256 else np.uint16
    inside = [np.asarray(o) > 0.5 for o in occupancies]
    labels = np.zeros(shape_zyx, dtype)
    # largest first, so smaller structures are painted over the larger ones around them
    order = sorted(range(len(inside)), key=lambda k: (-int(inside[k].sum()), k))
    for k in order:
        labels[inside[k]] = k + 1
    return labels


def _rgba(colour: str) -> list[int]:
    """``"#rrggbb"`` to [r, g, b, 255]."""
    text = colour.lstrip("#")
    return [int(text[i : i + 2], 16) for i in (0, 2, 4)] + [255]


def _write_structure_labels(
    root: zarr.Group,
    grid: Grid,
    structures: list[tuple[str, str, np.ndarray]],
    colours: dict[str, str] | None,
) -> None:
    """``labels/structures``: the OME-NGFF label image of the root (dose) image."""
    labels_group = root.create_group("labels")
    labels_group.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["structures"]}
    image = labels_group.create_group("structures")
    labels = structure_label_volume([occ for _, _, occ in structures], grid.shape_zyx)
    write_array(image, "0", labels, dimension_names=_AXES_ZYX)
    properties = [
        {"label-value": k + 1, "name": name, "role": role}
        for k, (name, role, _) in enumerate(structures)
    ]
    image_label: dict = {"source": {"image": "../../"}}
    if properties:
        image_label["properties"] = properties
    colors = [
        {"label-value": k + 1, "rgba": _rgba(colours[name])}
        for k, (name, _, _) in enumerate(structures)
        if name in (colours or {})
    ]
    if colors:
        image_label["colors"] = colors
    ome = ome_image_attrs("structures", grid, "0")
    ome["image-label"] = image_label
    image.attrs["ome"] = ome


def write_dose_store(
    path: str | Path, dose_gy: np.ndarray, grid: Grid, attrs: dict | None = None
) -> Path:
    """Write a dose grid (nz, ny, nx) in Gy with its grid metadata to a new zarr v3 store."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(
            _to_jsonable({"iortopt": {"version": __version__, "kind": "dose"}, **(attrs or {})})
        )
        root.attrs["ome"] = ome_image_attrs("dose", grid, "dose_gy")
        write_array(
            root,
            "dose_gy",
            np.asarray(dose_gy, np.float32),
            {"grid": grid.to_attrs(), "unit": "Gy"},
            dimension_names=_AXES_ZYX,
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
    on the grid, written as the image ``ct`` when not None) and ``structure_colours`` (name ->
    ``"#rrggbb"``, the label image's colours), and ``attrs`` (config, provenance, metrics,
    summary)."""
    grid: Grid = plan["grid"]
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update(
            _to_jsonable({"iortopt": {"version": __version__, "kind": "plan"}, **plan["attrs"]})
        )
        root.attrs["ome"] = ome_image_attrs("dose", grid, "dose_gy")
        write_array(
            root,
            "dose_gy",
            np.asarray(plan["dose_gy"], np.float32),
            {"grid": grid.to_attrs(), "unit": "Gy"},
            dimension_names=_AXES_ZYX,
        )
        _write_structure_labels(root, grid, list(plan["structures"]), plan.get("structure_colours"))
        if plan.get("hu") is not None:
            ct = root.create_group("ct")
            ct.attrs["ome"] = ome_image_attrs("ct", grid, "hu")
            write_array(
                ct,
                "hu",
                np.asarray(plan["hu"], np.float32),
                {"grid": grid.to_attrs(), "unit": "HU"},
                dimension_names=_AXES_ZYX,
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


def add_group(store_path: str | Path, name: str, arrays: dict, attrs: dict | None = None) -> None:
    """Add group ``name`` with ``arrays`` and ``attrs`` to an existing store (e.g. ``pareto``
    into a plan store still under its temporary name, before it is published)."""
    root = zarr.open_group(str(store_path), mode="r+")
    group = root.create_group(name)
    for key, values in arrays.items():
        write_array(group, key, np.asarray(values))
    if attrs:
        group.attrs.update(_to_jsonable(attrs))


def read_group(store_path: str | Path, name: str) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and attributes of group ``name`` of a store written by iortopt.

    Raises:
        KeyError: the store has no such group.
    """
    root = zarr.open_group(str(store_path), mode="r")
    if name not in root:
        raise KeyError(name)
    group = root[name]
    return {key: np.asarray(arr[...]) for key, arr in group.arrays()}, dict(group.attrs)


def read_attrs(store_path: str | Path) -> dict:
    """The root attributes of a store written by iortopt (config, provenance, summary...)."""
    return dict(zarr.open_group(str(store_path), mode="r").attrs)
