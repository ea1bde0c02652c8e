"""DICOM import: CT series + RTSTRUCT -> Case (volumes, holes, orientations, errors) and reading
pydicom's bundled RT files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from iortopt.cases.dicom_case import import_case
from iortopt.config import DicomCaseSection, parse_config
from iortopt.dicom.ct import read_ct_series
from iortopt.dicom.rtdose import read_rtdose
from iortopt.dicom.rtstruct import rasterise_roi, read_structure_set
from iortopt.dicom.synthetic import SPHERE_RADIUS_MM, write_synthetic_study
from iortopt.errors import ConfigError, InputFileError
from iortopt.grid import Grid
from iortopt.pipeline import check_config

ALL_ROIS = {
    "CTV": {"roi": "GTV", "role": "target"},
    "ureter": {"roi": "Ureter"},
    "sacrum": {"roi": "Sacrum"},
    "ring": {"roi": "Ring", "role": "other"},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_synthetic_study(tmp_path_factory.mktemp("hfs"))


@pytest.fixture(scope="module")
def study_ffs(tmp_path_factory):
    return write_synthetic_study(tmp_path_factory.mktemp("ffs"), feet_first=True)


def _section(study, **kw) -> DicomCaseSection:
    values = {
        "ct_folder": str(study.ct_folder),
        "rtstruct": str(study.rtstruct),
        "structures": ALL_ROIS,
    }
    return DicomCaseSection(**(values | kw))


@pytest.mark.parametrize(
    "spacing, crop",
    [("ct", False), ("ct", True), (2.0, True), (2.5, True), ((1.5, 2.0, 3.0), True)],
)
def test_volumes_within_2_percent_of_exact(study, spacing, crop):
    case = import_case(_section(study, spacing_mm=spacing, crop=crop, margin_mm=5.0))
    exact = study.exact_volumes_cm3
    for name, roi in (("CTV", "GTV"), ("ureter", "Ureter"), ("sacrum", "Sacrum"), ("ring", "Ring")):
        volume = case.structure(name).volume_cm3(case.grid)
        assert volume == pytest.approx(exact[roi], rel=0.02), (name, spacing, volume, exact[roi])
    assert [s.role for s in case.structures] == ["target", "oar", "oar", "other"]
    for s in case.structures:
        assert s.occupancy.dtype == np.float32
        assert s.occupancy.min() >= 0 and s.occupancy.max() <= 1


def test_hole_is_empty_and_ring_is_full(study):
    case = import_case(_section(study))
    ring = case.structure("ring").occupancy
    grid = case.grid
    centre = np.rint(grid.mm_to_index([-28.0, 0.0, 0.0])).astype(int)
    in_wall = np.rint(grid.mm_to_index([-28.0 + 7.5, 0.0, 0.0])).astype(int)
    assert ring[tuple(centre)] == 0.0
    assert ring[tuple(in_wall)] == 1.0
    # without the hole the volume would be 4/3 of the annulus'
    filled = np.pi * 10.0**2 * 20.0 * 1e-3
    assert case.structure("ring").volume_cm3(grid) < 0.8 * filled


def test_hu_and_study_reference(study):
    case = import_case(_section(study, spacing_mm=2.0))
    hu = case.hu
    assert hu.shape == case.grid.shape_zyx and hu.dtype == np.float32
    at = np.rint(case.grid.mm_to_index([0.0, 0.0, 1.0])).astype(int)
    assert hu[tuple(at)] == pytest.approx(40.0)
    ref = case.info["dicom"]
    assert ref["study_uid"] == study.study_uid
    assert ref["frame_of_reference_uid"] == study.frame_of_reference_uid
    assert ref["roi_numbers"] == {"CTV": 1, "ureter": 2, "sacrum": 3, "ring": 4}
    assert ref["patient"]["PatientID"] == "IORTOPT-SYNTH-001"


def test_feet_first_gives_the_same_case(study, study_ffs):
    hfs = read_ct_series(study.ct_folder)
    ffs = read_ct_series(study_ffs.ct_folder)
    assert ffs.flipped_xy == (True, False) and hfs.flipped_xy == (False, False)
    assert ffs.grid == hfs.grid
    np.testing.assert_array_equal(ffs.hu, hfs.hu)
    a = import_case(_section(study, spacing_mm=2.0))
    b = import_case(_section(study_ffs, spacing_mm=2.0))
    assert a.grid == b.grid
    for sa, sb in zip(a.structures, b.structures, strict=True):
        np.testing.assert_allclose(sa.occupancy, sb.occupancy, atol=1e-6)
    np.testing.assert_allclose(a.hu, b.hu)


def test_rtstruct_found_in_folder(tmp_path):
    s = write_synthetic_study(tmp_path)
    s.rtstruct.rename(s.ct_folder / "RS.dcm")
    case = import_case(_section(s, rtstruct=None))
    assert case.info["rtstruct"].endswith("RS.dcm")


def test_roi_names_match_case_insensitively(study):
    structures = {"CTV": {"roi": "gtv", "role": "target"}}
    case = import_case(_section(study, structures=structures))
    assert case.info["rois"] == {"CTV": "GTV"}


# --- errors -------------------------------------------------------------------------------------


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_error_missing_folder_and_no_series(tmp_path, study):
    with pytest.raises(InputFileError, match="not found"):
        import_case(_section(study, ct_folder=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    with pytest.raises(InputFileError, match="no CT image series"):
        import_case(_section(study, ct_folder=str(tmp_path / "empty")))


def test_error_two_series_then_choose_one(tmp_path):
    s = write_synthetic_study(tmp_path)
    files = sorted(s.ct_folder.iterdir())
    for path in files[:5]:
        _edit(path, lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.3.4"))
    with pytest.raises(InputFileError, match="2 CT series found; choose one"):
        import_case(_section(s))
    rest = read_ct_series(s.ct_folder, str(pydicom.dcmread(files[-1]).SeriesInstanceUID))
    assert rest.grid.shape_zyx[0] == 35 and rest.grid.origin_xyz_mm[2] == -29.0
    with pytest.raises(InputFileError, match="no CT series with Series Instance UID 9.9"):
        read_ct_series(s.ct_folder, "9.9")


def test_error_mixed_frames_of_reference(tmp_path):
    s = write_synthetic_study(tmp_path)
    _edit(sorted(s.ct_folder.iterdir())[3], lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3"))
    with pytest.raises(InputFileError, match="mixed frames of reference"):
        import_case(_section(s))


def test_error_rtstruct_in_another_frame(tmp_path):
    s = write_synthetic_study(tmp_path)

    def change(ds):
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = "1.2.3.999"

    _edit(s.rtstruct, change)
    with pytest.raises(InputFileError, match="mixed frames of reference"):
        import_case(_section(s))


def test_error_roi_without_contours(tmp_path):
    s = write_synthetic_study(tmp_path)

    def change(ds):
        roi = Dataset()
        roi.ROINumber = 9
        roi.ROIName = "Empty"
        roi.ReferencedFrameOfReferenceUID = s.frame_of_reference_uid
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = 9
        item.ContourSequence = Sequence()
        ds.ROIContourSequence.append(item)

    _edit(s.rtstruct, change)
    structures = {"CTV": {"roi": "GTV", "role": "target"}, "empty": {"roi": "Empty"}}
    with pytest.raises(InputFileError, match="'Empty'.*has no closed planar contours"):
        import_case(_section(s, structures=structures))


def test_error_roi_name_not_found(study):
    structures = {"CTV": {"roi": "Tumour", "role": "target"}}
    with pytest.raises(InputFileError, match=r"case.dicom.structures.CTV.roi: no ROI named"):
        import_case(_section(study, structures=structures))


def test_error_non_axial(tmp_path):
    s = write_synthetic_study(tmp_path)
    for path in s.ct_folder.iterdir():
        _edit(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.8, -0.6]))
    with pytest.raises(InputFileError, match="not axial.*supported"):
        import_case(_section(s))


def test_error_inconsistent_slice_spacing(tmp_path):
    s = write_synthetic_study(tmp_path)
    sorted(s.ct_folder.iterdir())[17].unlink()
    with pytest.raises(InputFileError, match="inconsistent slice spacing: 4.000 mm"):
        import_case(_section(s))


def test_error_duplicate_slice(tmp_path):
    s = write_synthetic_study(tmp_path)
    files = sorted(s.ct_folder.iterdir())
    (s.ct_folder / "copy.dcm").write_bytes(files[5].read_bytes())
    with pytest.raises(InputFileError, match="same position"):
        import_case(_section(s))


def test_config_errors():
    base = {
        "case": {
            "kind": "dicom",
            "dicom": {"ct_folder": "ct", "structures": {"CTV": {"roi": "GTV", "role": "target"}}},
        }
    }
    with pytest.raises(ConfigError, match="needs catheters.*give applicator.catheters_mm"):
        check_config(parse_config(base))
    with pytest.raises(ConfigError, match="needs a \\[case.dicom\\] section"):
        parse_config({"case": {"kind": "dicom"}})
    with pytest.raises(ConfigError, match='plan.modality "electron" needs a cone pose'):
        check_config(parse_config(base | {"plan": {"modality": "electron"}}))
    bad_role = {
        "case": {
            "kind": "dicom",
            "dicom": {"ct_folder": "c", "structures": {"A": {"roi": "A", "role": "organ"}}},
        }
    }  # noqa: E501
    with pytest.raises(ConfigError, match="case.dicom.structures.A.role"):
        parse_config(bad_role)


# --- pydicom's bundled RT files -----------------------------------------------------------------


def test_pydicom_rtstruct_without_file_meta():
    path = get_testdata_file("rtstruct.dcm")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)  # no preamble: our reader must fall back to force=True
    structure_set = read_structure_set(path)
    names = [r.name for r in structure_set.rois]
    assert names == ["patient", "Isocenter 1", "Isocenter 2"]
    patient = structure_set.roi("patient")
    assert len(patient.contours) == 3 and patient.n_ignored_contours == 0
    assert not structure_set.roi("Isocenter 1").contours  # POINT contours only
    # rasterised area per plane equals the polygons' shoelace area
    thickness = 5.0
    lo = np.min([c.min(axis=0) for c in patient.contours], axis=0) - 5
    hi = np.max([c.max(axis=0) for c in patient.contours], axis=0) + 5
    grid = Grid.from_bounds(lo, hi, (1.0, 1.0, thickness))
    occupancy = rasterise_roi(patient.contours, grid, thickness, supersample=8)
    x, y = (np.concatenate([c[:, k] for c in patient.contours]) for k in (0, 1))
    shoelace = sum(
        0.5 * abs(np.dot(c[:, 0], np.roll(c[:, 1], -1)) - np.dot(c[:, 1], np.roll(c[:, 0], -1)))
        for c in patient.contours
    )
    assert occupancy.sum() * 1.0 * 1.0 == pytest.approx(shoelace, rel=0.02)
    assert x.size and y.size


@pytest.mark.parametrize(
    "name",
    [
        "rtdose.dcm",
        "rtdose_rle.dcm",
        "rtdose_expb.dcm",
        "rtdose_1frame.dcm",
        "rtdose_rle_1frame.dcm",
        "rtdose_expb_1frame.dcm",
    ],
)
def test_pydicom_rtdose_variants(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not bundled with this pydicom")
    dose = read_rtdose(path)
    reference = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    expected = reference.pixel_array.astype(np.float64) * float(reference.DoseGridScaling)
    n_frames = 1 if "1frame" in name else 15
    assert dose.dose_gy.shape == (n_frames, 10, 10)
    np.testing.assert_array_equal(dose.dose_gy, expected[:n_frames])
    assert dose.grid.spacing_xyz_mm[:2] == (10.0, 10.0)
    assert dose.grid.origin_xyz_mm == pytest.approx((189.43125, 199.43125, -761.87))
    if n_frames > 1:
        assert dose.grid.spacing_xyz_mm[2] == 5.0


def test_sphere_volume_on_coarse_offset_grid(study):
    """A dose grid not aligned with the CT: the sphere stays within 2 %."""
    rois = read_structure_set(study.rtstruct)
    grid = Grid.from_bounds((-20.3, -19.1, -17.7), (20, 20, 20), (2.7, 2.3, 3.1))
    occupancy = rasterise_roi(rois.roi("GTV").contours, grid, 2.0, supersample=8)
    exact = 4 / 3 * np.pi * SPHERE_RADIUS_MM**3 * 1e-3
    assert occupancy.sum() * grid.voxel_volume_cm3 == pytest.approx(exact, rel=0.02)
