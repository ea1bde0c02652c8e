"""plan.zarr as OME-Zarr (NGFF 0.5): an OME-Zarr library (ngff-zarr) reads the dose, the CT and
the structure labels at their physical scale and place, and the metadata pass the NGFF schemas."""

import json

import numpy as np
import pytest
import zarr

from iortopt.cases.case import Case, Structure
from iortopt.grid import Grid
from iortopt.io.store import (
    read_dose_store,
    structure_label_volume,
    write_dose_store,
    write_plan_store,
)
from iortopt.outputs import figures
from iortopt.outputs.plan_files import (
    EvaluationSettings,
    GoalSpec,
    OutputSettings,
    evaluate_plan,
    write_plan_outputs,
)

ngff_zarr = pytest.importorskip("ngff_zarr")
pytest.importorskip("jsonschema")  # ngff-zarr[validate]: schema checks
from ngff_zarr.validate import validate  # noqa: E402

# anisotropic spacing and an off-centre origin, so axis order mistakes show
GRID = Grid((6, 8, 10), (2.0, 2.5, 3.0), (-12.0, 20.0, 105.5))


def _case() -> Case:
    z, y, x = np.meshgrid(GRID.axis_mm("z"), GRID.axis_mm("y"), GRID.axis_mm("x"), indexing="ij")
    centre = np.array([-12.0 + 4.5 * 2.0, 20.0 + 3.5 * 2.5, 105.5 + 2.5 * 3.0])  # (x, y, z)
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    body = np.ones(GRID.shape_zyx, np.float32)
    ctv = (r <= 4.0).astype(np.float32)
    oar = np.where(x > centre[0] + 6.0, 0.7, 0.2).astype(np.float32)  # fractional, > 0.5 half
    structures = (
        Structure("body", "body", body),
        Structure("CTV", "target", ctv),
        Structure("rectum", "oar", oar),
    )
    hu = (10.0 * np.arange(GRID.n_voxels, dtype=np.float32)).reshape(GRID.shape_zyx) - 1000.0
    return Case("tiny", GRID, structures, hu=hu)


def _dose() -> np.ndarray:
    return np.arange(GRID.n_voxels, dtype=np.float32).reshape(GRID.shape_zyx) / 100.0


def _check_image(path, data, name):
    """ngff-zarr reads ``path`` as one image of ``data`` at GRID's scale and place (z, y, x)."""
    multiscales = ngff_zarr.from_ome_zarr(str(path), validate=True)
    assert len(multiscales.images) == 1
    image = multiscales.images[0]
    assert image.name == name
    assert image.dims == ("z", "y", "x")
    assert image.data.shape == GRID.shape_zyx
    spacing_x, spacing_y, spacing_z = GRID.spacing_xyz_mm
    origin_x, origin_y, origin_z = GRID.origin_xyz_mm
    assert image.scale == {"z": spacing_z, "y": spacing_y, "x": spacing_x}
    assert image.translation == {"z": origin_z, "y": origin_y, "x": origin_x}
    assert image.axes_units == dict.fromkeys("zyx", "millimeter")
    np.testing.assert_array_equal(np.asarray(image.data), data)
    return image


def test_plan_store_is_ome_zarr(tmp_path):
    case = _case()
    colours = figures.structure_colours([s.name for s in case.structures])
    plan = {
        "grid": GRID,
        "dose_gy": _dose(),
        "structures": [(s.name, s.role, s.occupancy) for s in case.structures],
        "hu": case.hu,
        "structure_colours": colours,
        "dvhs": {},
        "attrs": {},
    }
    path = write_plan_store(tmp_path / "plan.zarr", plan)
    _check_image(path, _dose(), "dose")
    _check_image(path / "ct", case.hu, "ct")
    labels = _check_image(path / "labels" / "structures", _expected_labels(case), "structures")
    assert labels.data.dtype == np.uint8

    root = zarr.open_group(str(path), mode="r")
    for sub, model in (("", "image"), ("ct", "image"), ("labels/structures", "label")):
        attrs = dict((root[sub] if sub else root).attrs)
        assert attrs["ome"]["version"] == "0.5"
        validate(attrs, version="0.5", model=model, strict=True)
    assert root["labels"].attrs["ome"]["labels"] == ["structures"]
    image_label = root["labels/structures"].attrs["ome"]["image-label"]
    names = {p["label-value"]: p["name"] for p in image_label["properties"]}
    assert names == {1: "body", 2: "CTV", 3: "rectum"}
    rgba = {c["label-value"]: c["rgba"] for c in image_label["colors"]}
    for value, name in names.items():
        assert "#{:02x}{:02x}{:02x}".format(*rgba[value][:3]) == colours[name]
    # the arrays earlier readers use are where they were
    assert root["dose_gy"].attrs["grid"] == GRID.to_attrs()
    assert set(root["structures"].keys()) == {"body", "CTV", "rectum"}
    assert json.loads(json.dumps(dict(root.attrs)))["iortopt"]["kind"] == "plan"


def _expected_labels(case: Case) -> np.ndarray:
    """Body everywhere, the rectum where its occupancy is 0.7, the CTV (smallest) on top."""
    body, ctv, rectum = (s.occupancy for s in case.structures)
    expected = np.where(body > 0.5, 1, 0)
    expected = np.where(rectum > 0.5, 3, expected)
    return np.where(ctv > 0.5, 2, expected).astype(np.uint8)


def test_label_volume_smallest_structure_wins():
    big = np.ones((1, 2, 3), np.float32)
    small = np.zeros((1, 2, 3), np.float32)
    small[0, 0, 0] = 0.51
    edge = np.full((1, 2, 3), 0.5, np.float32)  # exactly 0.5 is outside
    labels = structure_label_volume([small, big, edge], (1, 2, 3))
    np.testing.assert_array_equal(labels, [[[1, 2, 2], [2, 2, 2]]])
    assert structure_label_volume([], (1, 2, 3)).sum() == 0


def test_dose_store_is_ome_zarr(tmp_path):
    path = write_dose_store(tmp_path / "dose.zarr", _dose(), GRID)
    _check_image(path, _dose(), "dose")
    dose, grid, _ = read_dose_store(path)
    assert grid == GRID and dose.shape == GRID.shape_zyx


def test_plan_outputs_share_structure_colours(tmp_path):
    """write_plan_outputs: plan.zarr opens as OME-Zarr with its labels, and the label colours
    are the figures' colours (one map per plan)."""
    case = _case()
    evaluation = evaluate_plan(
        EvaluationSettings(5.0, "CTV", 1, (GoalSpec("CTV", "D90_gy", ">=", 5.0),)), case, _dose()
    )
    settings = OutputSettings("tiny", "hdr", 5.0, "CTV", (50.0, 100.0), {"plan": {"name": "t"}})
    out = tmp_path / "out"
    summary = {"plan": "tiny", "metrics": evaluation["metrics"], "notes": []}
    write_plan_outputs(settings, case, _dose(), evaluation, summary, out, {}, {})
    _check_image(out / "plan.zarr", _dose(), "dose")
    _check_image(out / "plan.zarr" / "ct", case.hu, "ct")
    root = zarr.open_group(str(out / "plan.zarr"), mode="r")
    colours = figures.structure_colours([s.name for s in case.structures])
    for c, p in zip(
        root["labels/structures"].attrs["ome"]["image-label"]["colors"],
        root["labels/structures"].attrs["ome"]["image-label"]["properties"],
        strict=True,
    ):
        assert "#{:02x}{:02x}{:02x}".format(*c["rgba"][:3]) == colours[p["name"]]
    assert (out / "dvh.png").stat().st_size > 10_000
    assert (out / "dose_slices.png").stat().st_size > 10_000
