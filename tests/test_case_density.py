"""A generic Case: HU, the HU calibration (densities), the body mask, the cavity and body roles."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from iortopt.cases.breast import build_breast_case
from iortopt.cases.case import BODY_THRESHOLD_HU, Case, Structure
from iortopt.cases.case_store import write_case_store
from iortopt.cases.dicom_case import import_case
from iortopt.cases.eliot import build_eliot_case
from iortopt.cases.flap import build_flap_case
from iortopt.cases.hu_calibration import (
    COVERED_HU,
    MATERIAL_HU,
    default_calibration,
    load_calibration,
)
from iortopt.config import DicomCaseSection, parse_config
from iortopt.dicom.synthetic import write_synthetic_study
from iortopt.errors import ConfigError, SourceDataError
from iortopt.grid import Grid
from iortopt.io.store import write_plan_store

GOOD = """
[calibration]
source = "test table"
hu = [-1000.0, 0.0, 1000.0]
relative_electron_density = [0.0, 1.0, 1.5]
mass_density_g_cm3 = [0.0, 1.0, 1.6]
"""


def _small_grid() -> Grid:
    return Grid((3, 4, 5), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def test_default_calibration_exact_at_knots_linear_between_clamped_beyond():
    cal = default_calibration()
    np.testing.assert_allclose(
        cal.relative_electron_density_of(cal.hu), cal.relative_electron_density, rtol=1e-6
    )
    np.testing.assert_allclose(cal.mass_density_g_cm3_of(cal.hu), cal.mass_density_g_cm3, rtol=1e-6)
    for t in (0.25, 0.5, 0.9):
        between = cal.hu[:-1] + t * np.diff(cal.hu)
        expected = cal.mass_density_g_cm3[:-1] + t * np.diff(cal.mass_density_g_cm3)
        np.testing.assert_allclose(cal.mass_density_g_cm3_of(between), expected, rtol=1e-5)
    low, high = cal.relative_electron_density_of(np.array([-3000.0, 1e5]))
    assert low == pytest.approx(cal.relative_electron_density[0])
    assert high == pytest.approx(cal.relative_electron_density[-1])


def test_default_calibration_is_monotone_covering_and_labelled_illustrative():
    cal = default_calibration()
    assert np.all(np.diff(cal.hu) > 0)
    assert np.all(np.diff(cal.relative_electron_density) >= 0)
    assert np.all(np.diff(cal.mass_density_g_cm3) >= 0)
    assert cal.hu[0] <= COVERED_HU[0] and cal.hu[-1] >= COVERED_HU[1]
    assert cal.illustrative and "not a commissioned calibration" in cal.source
    assert cal.relative_electron_density_of(0.0) == pytest.approx(1.0)
    assert cal.mass_density_g_cm3_of(0.0) == pytest.approx(1.0)


def test_user_file_is_accepted(tmp_path):
    path = tmp_path / "cal.toml"
    path.write_text(GOOD)
    cal = load_calibration(str(path))
    assert cal.origin == str(path) and not cal.illustrative
    assert cal.relative_electron_density_of(500.0) == pytest.approx(1.25)


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("[0.0, 1.0, 1.5]", "[0.0, nan, 1.5]", "relative_electron_density"),
        ("[-1000.0, 0.0, 1000.0]", "[-1000.0, 1000.0, 1000.0]", "hu"),
        ("[-1000.0, 0.0, 1000.0]", "[-1000.0, 1000.0, 0.0]", "hu"),
        ("[-1000.0, 0.0, 1000.0]", "[-900.0, 0.0, 1000.0]", "hu"),
        ("[-1000.0, 0.0, 1000.0]", "[-1000.0]", "hu"),
        ("[0.0, 1.0, 1.6]", "[0.0, 1.7, 1.6]", "mass_density_g_cm3"),
        ("[0.0, 1.0, 1.6]", "[-0.1, 1.0, 1.6]", "mass_density_g_cm3"),
        ("[0.0, 1.0, 1.6]", "[0.0, 1.0]", "mass_density_g_cm3"),
        ('source = "test table"', "", "source"),
        ("mass_density_g_cm3 = [0.0, 1.0, 1.6]", "", "mass_density_g_cm3"),
        ('source = "test table"', 'source = "t"\nunits = 3', "units"),
        ("[calibration]\n", "calibration = 3\n[other]\n", "calibration"),
    ],
)
def test_user_file_errors_name_file_and_field(tmp_path, old, new, field):
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(SourceDataError) as err:
        load_calibration(str(path))
    message = str(err.value)
    assert str(path) in message and field in message, message


def test_unknown_packaged_calibration_lists_the_packaged_ones():
    with pytest.raises(SourceDataError, match="generic_ct_calibration"):
        load_calibration("no_such_table")


# --------------------------------------------------------------------------------------------
# Case: HU, densities, body mask, roles
# --------------------------------------------------------------------------------------------


def test_density_maps_of_a_water_phantom_are_one():
    grid = _small_grid()
    for hu in (np.zeros(grid.shape_zyx, np.float32), None):
        case = Case("water", grid, (), hu=hu)
        for density in (case.relative_electron_density(), case.mass_density_g_cm3()):
            assert density.shape == grid.shape_zyx and density.dtype == np.float32
            np.testing.assert_array_equal(density, 1.0)
        np.testing.assert_array_equal(case.body_mask(), 1.0)


def test_case_uses_its_own_calibration_and_checks_hu(tmp_path):
    path = tmp_path / "cal.toml"
    path.write_text(GOOD)
    grid = _small_grid()
    hu = np.full(grid.shape_zyx, 500.0, np.float32)
    case = Case("c", grid, (), hu=hu, hu_calibration=load_calibration(str(path)))
    np.testing.assert_allclose(case.relative_electron_density(), 1.25)
    with pytest.raises(ValueError, match="hu shape"):
        Case("c", grid, (), hu=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="nan or inf"):
        Case("c", grid, (), hu=np.full(grid.shape_zyx, np.nan, np.float32))


def test_cavity_and_body_roles_are_reported_but_not_oars():
    grid = _small_grid()
    ones = np.ones(grid.shape_zyx, np.float32)
    half = np.full(grid.shape_zyx, 0.5, np.float32)
    case = Case(
        "c",
        grid,
        (
            Structure("CTV", "target", ones),
            Structure("bowel", "oar", ones),
            Structure("cavity", "cavity", ones),
            Structure("BODY", "body", half),
        ),
        hu=np.full(grid.shape_zyx, -1000.0, np.float32),
    )
    assert [s.name for s in case.oars] == ["bowel"]
    assert [s.name for s in case.cavities] == ["cavity"]
    np.testing.assert_array_equal(case.body_mask(), 0.5)  # the body ROI wins over the HU
    cfg = {
        "structures": {"B": {"roi": "BODY", "role": "body"}, "C": {"roi": "X", "role": "cavity"}}
    }
    section = DicomCaseSection(ct_folder="ct", **cfg)
    assert [m.role for m in section.structures.values()] == ["body", "cavity"]


def test_body_mask_from_hu_keeps_lung_and_enclosed_gas_and_drops_outside_air():
    grid = Grid((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape_zyx, MATERIAL_HU["air"], np.float32)
    hu[:, :, 3:] = MATERIAL_HU["soft_tissue"]
    hu[:, :, 8:] = MATERIAL_HU["lung"]  # lung cut by the grid edge
    hu[4:6, 4:6, 5] = MATERIAL_HU["air"]  # gas inside the body
    hu[:, :, 3] = -500.0  # half air, half water: the rim
    body = Case("c", grid, (), hu=hu).body_mask()
    np.testing.assert_array_equal(body[:, :, :3], 0.0)
    assert body[0, 0, 3] == pytest.approx(0.5)
    np.testing.assert_array_equal(body[:, :, 4:], 1.0)
    assert BODY_THRESHOLD_HU == -500.0


# --------------------------------------------------------------------------------------------
# Phantoms
# --------------------------------------------------------------------------------------------

PHANTOM_MATERIALS = {
    "flap": (
        build_flap_case,
        {
            "CTV": "soft_tissue",
            "sacrum": "bone",
            "ureter": "soft_tissue",
            "bowel": "soft_tissue",
            "flap": "water",
        },
    ),
    "breast": (
        build_breast_case,
        {
            "PTV_shell": "breast_tissue",
            "chest_wall": "muscle",
            "rib": "bone",
            "lung": "lung",
            "breast": "breast_tissue",
        },
    ),
    "eliot": (
        build_eliot_case,
        {
            "PTV_gland": "breast_tissue",
            "skin": "soft_tissue",
            "chest_wall": "muscle",
            "rib": "bone",
            "lung": "lung",
            "gland": "breast_tissue",
        },
    ),
}


@pytest.mark.parametrize("phantom", sorted(PHANTOM_MATERIALS))
def test_phantom_hu_per_structure_is_its_material(phantom):
    build, materials = PHANTOM_MATERIALS[phantom]
    case, _ = build()
    assert case.hu is not None and case.hu.shape == case.grid.shape_zyx
    for name, material in materials.items():
        full = case.structure(name).occupancy == 1.0
        assert full.sum() > 10, name
        np.testing.assert_allclose(case.hu[full], MATERIAL_HU[material], atol=1e-3, err_msg=name)


def test_breast_phantom_air_beyond_skin_fluid_in_cavity_and_body_mask():
    case, geometry = build_breast_case()
    z = case.grid.axis_mm("z")
    beyond = z > geometry.skin_surface_z_mm + case.grid.spacing_xyz_mm[2]
    np.testing.assert_array_equal(case.hu[beyond], MATERIAL_HU["air"])
    centre = tuple(np.rint(case.grid.mm_to_index(geometry.applicator_centre_mm)).astype(int))
    assert case.hu[centre] == MATERIAL_HU["water"]
    body = case.body_mask()
    np.testing.assert_array_equal(body[beyond], 0.0)
    lung = case.structure("lung").occupancy
    assert float((body * lung).sum()) == pytest.approx(float(lung.sum()))
    flap, _ = build_flap_case()
    np.testing.assert_array_equal(flap.body_mask(), 1.0)


# --------------------------------------------------------------------------------------------
# DICOM cases and stores
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_synthetic_study(tmp_path_factory.mktemp("density"))


def _section(study, structures, **kw) -> DicomCaseSection:
    values = {"ct_folder": str(study.ct_folder), "rtstruct": str(study.rtstruct)}
    return DicomCaseSection(**values, structures=structures, **kw)


@pytest.mark.parametrize("spacing", ["ct", 2.0])
def test_dicom_body_mask_from_body_roi_and_from_hu(study, spacing):
    exact = study.exact_volumes_cm3["BODY"]
    with_roi = {"CTV": {"roi": "GTV", "role": "target"}, "body": {"roi": "BODY", "role": "body"}}
    case = import_case(_section(study, with_roi, spacing_mm=spacing, crop=False))
    volume = float(case.body_mask().sum()) * case.grid.voxel_volume_cm3
    assert volume == pytest.approx(case.structure("body").volume_cm3(case.grid))
    assert volume == pytest.approx(exact, rel=0.01)
    no_roi = {"CTV": {"roi": "GTV", "role": "target"}}
    case = import_case(_section(study, no_roi, spacing_mm=spacing, crop=False))
    assert case.hu is not None and case.hu_calibration.illustrative
    volume = float(case.body_mask().sum()) * case.grid.voxel_volume_cm3
    assert volume == pytest.approx(exact, rel=0.01)


def test_dicom_case_takes_the_configured_calibration(study, tmp_path):
    path = tmp_path / "cal.toml"
    path.write_text(GOOD)
    structures = {"CTV": {"roi": "GTV", "role": "target"}}
    case = import_case(_section(study, structures, spacing_mm=4.0, hu_calibration=str(path)))
    assert case.hu_calibration.origin == str(path)
    assert case.info["hu_calibration"] == str(path)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[0.0, 1.0, 1.5]", "[0.0, 1.0]"))
    with pytest.raises(SourceDataError, match=r"bad\.toml.*relative_electron_density"):
        import_case(_section(study, structures, hu_calibration=str(bad)))
    with pytest.raises(ConfigError, match="case.dicom.structures.A.role"):
        doc = {"plan": {"name": "p"}, "case": {"kind": "builtin_flap"}}
        doc["case"]["dicom"] = {"ct_folder": "x", "structures": {"A": {"roi": "A", "role": "x"}}}
        parse_config(doc)


def test_stores_hold_the_hu(tmp_path):
    case, _ = build_flap_case()
    write_case_store(tmp_path / "case.zarr", case)
    root = zarr.open_group(str(tmp_path / "case.zarr"), mode="r")
    np.testing.assert_array_equal(root["hu"][...], case.hu)
    plan = {
        "grid": case.grid,
        "dose_gy": np.zeros(case.grid.shape_zyx, np.float32),
        "structures": [(s.name, s.role, s.occupancy) for s in case.structures],
        "dvhs": {},
        "attrs": {},
        "hu": case.hu,
    }
    write_plan_store(tmp_path / "plan.zarr", plan)
    root = zarr.open_group(str(tmp_path / "plan.zarr"), mode="r")
    np.testing.assert_array_equal(root["ct/hu"][...], case.hu)  # the OME-NGFF image "ct"
    assert root["ct/hu"].attrs["unit"] == "HU"
