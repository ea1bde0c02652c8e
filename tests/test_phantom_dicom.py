"""The built-in phantoms written as CT + RTSTRUCT (iortopt.dicom.phantom_study) read back as the
same anatomy, and an HDR flap plan on the flap phantom's study matches the plan on the phantom."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from iortopt.cases.breast import build_breast_case
from iortopt.cases.eliot import build_eliot_case
from iortopt.cases.flap import FlapCaseParams, build_flap_case
from iortopt.config import case_params, load_config, parse_config
from iortopt.dicom.ct import read_ct_series
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.dicom.phantom_study import plane_contours, polygons_area_mm2, write_phantom_study
from iortopt.dicom.rtstruct import rasterise_roi, read_structure_set

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_dicom_example.py"
#: The flap phantom of the tests: the built-in plan's, on a 2 mm grid with 4 catheters.
FLAP_OVERRIDES = dict(spacing_mm=2.0, supersampling=2, n_catheters=4)
#: Re-imported volume tolerance (relative). Exceptions, measured: the breast phantom's skin is a
#: flat 2 mm layer on a 2 mm grid, so each slice holds it only partly in z over its whole area
#: and an axial contour cannot shrink to that share (it comes back about +90 %); the breast
#: around it comes back +2.1 %; the ELIOT skin (a thin, partly tilted layer) -2.8 %.
VOLUME_TOLERANCE = 0.02
VOLUME_EXCEPTIONS = {("breast", "skin"): None, ("breast", "breast"): 0.03, ("eliot", "skin"): 0.03}


def _script():
    spec = importlib.util.spec_from_file_location("make_dicom_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flap_params() -> FlapCaseParams:
    values = {**load_config().case.flap, **FLAP_OVERRIDES}
    return case_params(FlapCaseParams, values, "flap")


def _phantoms():
    flap, _ = build_flap_case(_flap_params())
    breast, _ = build_breast_case()
    eliot, _ = build_eliot_case()
    return {"flap": flap, "breast": breast, "eliot": eliot}


@pytest.fixture(scope="module")
def phantoms():
    return _phantoms()


@pytest.mark.parametrize("name", ["flap", "breast", "eliot"])
def test_phantom_study_reads_back_hu_and_volumes(phantoms, name, tmp_path):
    case = phantoms[name]
    structures = [(s.name, s.role, s.occupancy) for s in case.structures]
    frame_info = case.info.get("patient_frame")
    study = write_phantom_study(tmp_path, case.grid, case.hu, structures, patient_frame=frame_info)
    frame = PatientFrame.from_info(case.info) if frame_info else PatientFrame()
    hu_lps, grid_lps = frame.dose_to_patient(case.hu, case.grid)

    ct = read_ct_series(study.ct_folder)
    assert ct.grid == grid_lps == study.ct_grid
    assert ct.study.patient_position == "HFS"
    np.testing.assert_array_less(np.abs(ct.hu - hu_lps), 0.5 + 1e-4)

    rs = read_structure_set(study.rtstruct)
    assert [r.name for r in rs.rois] == [s.name for s in case.structures]
    for s in case.structures:
        occupancy = rasterise_roi(rs.roi(s.name).contours, ct.grid, ct.slice_spacing_mm, 4)
        back_cm3 = float(occupancy.sum(dtype=np.float64)) * ct.grid.voxel_volume_cm3
        tolerance = VOLUME_EXCEPTIONS.get((name, s.name), VOLUME_TOLERANCE)
        assert back_cm3 > 0, s.name
        if tolerance is not None:
            assert back_cm3 == pytest.approx(s.volume_cm3(case.grid), rel=tolerance), s.name


def test_eliot_study_is_in_the_patient_frame(phantoms, tmp_path):
    """The ELIOT beam comes from the phantom's +z: anterior, so the lung lies posterior (+y LPS)
    of the target in the written study, and the phantom's y (superior) is LPS z."""
    case = phantoms["eliot"]
    structures = [(s.name, s.role, s.occupancy) for s in case.structures]
    study = write_phantom_study(
        tmp_path, case.grid, case.hu, structures, patient_frame=case.info["patient_frame"]
    )
    ct = read_ct_series(study.ct_folder)
    rs = read_structure_set(study.rtstruct)

    def centroid_mm(roi_name):
        occupancy = rasterise_roi(rs.roi(roi_name).contours, ct.grid, ct.slice_spacing_mm, 2)
        return (ct.grid.points_mm() * occupancy.reshape(-1, 1)).sum(0) / occupancy.sum()

    assert centroid_mm("lung")[1] > centroid_mm("PTV_gland")[1] + 10.0
    nx, ny, nz = case.grid.shape_zyx[::-1]
    assert ct.grid.shape_zyx == (ny, nz, nx)


def test_isoline_level_keeps_a_thin_layer_area():
    """A strip 0.3 voxels wide has no 0.5-isoline; the area-matched level keeps its area."""
    x = y = np.arange(10.0) * 2.0
    plane = np.zeros((10, 10))
    plane[2:8, 5] = 0.3
    polygons = plane_contours(plane, x, y, 0.0)
    assert polygons
    assert polygons_area_mm2(polygons) == pytest.approx(plane.sum() * 4.0, rel=0.02)


def test_flap_plan_from_its_dicom_study_matches_the_phantom_plan(tmp_path):
    """Same objectives, same active dwells, same grid: D90 / D2cc within 2 %, V100 within 2 %
    of volume. Measured: CTV D90 -0.5 %, V100 -0.3 % of volume; sacrum D2cc -0.6 %, bowel
    D2cc +1.2 %."""
    import jax.numpy as jnp

    from iortopt.modalities.hdr_flap.pipeline import optimise_and_write
    from iortopt.pipeline import prepare_modality

    config_path = _script().write_flap_study(tmp_path / "flap", _flap_params())
    phantom_doc = load_config().model_dump(mode="python")
    phantom_doc["case"]["flap"].update(FLAP_OVERRIDES)
    phantom_doc["optimizer"]["max_iterations"] = 20
    phantom = prepare_modality(parse_config(phantom_doc), jnp.float32)
    dicom_doc = load_config(config_path).model_dump(mode="python")
    assert dicom_doc["case"]["kind"] == "dicom"
    dicom_doc["optimizer"]["max_iterations"] = 20
    dicom_doc["applicator"]["active"] = [
        [int(c), int(i)] for c, i in zip(phantom.dwells.catheter, phantom.dwells.index, strict=True)
    ]
    dicom = prepare_modality(parse_config(dicom_doc), jnp.float32)
    assert dicom.case.grid == phantom.case.grid
    np.testing.assert_allclose(dicom.dwells.positions_mm, phantom.dwells.positions_mm, atol=1e-9)
    np.testing.assert_allclose(dicom.case.hu, phantom.case.hu, atol=0.5 + 1e-4)

    a = optimise_and_write(phantom, tmp_path / "phantom").summary["metrics"]
    b = optimise_and_write(dicom, tmp_path / "dicom").summary["metrics"]
    assert b["CTV"]["D90_gy"] == pytest.approx(a["CTV"]["D90_gy"], rel=0.02)
    assert abs(b["CTV"]["V100_percent"] - a["CTV"]["V100_percent"]) <= 2.0
    for oar in ("sacrum", "bowel"):
        assert b[oar]["D2cc_gy"] == pytest.approx(a[oar]["D2cc_gy"], rel=0.02), oar


def test_script_writes_every_phantom_study(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "build_flap_case", lambda params: build_flap_case(_flap_params()))
    script.main(str(tmp_path))
    assert (tmp_path / "dicom_flap_example.toml").is_file()  # the synthetic example, as before
    assert (tmp_path / "study" / "RS.dcm").is_file()
    for name in ("flap", "breast", "eliot"):
        assert (tmp_path / name / "RS.dcm").is_file()
        assert len(read_ct_series(tmp_path / name / "CT").files) > 2
    cfg = load_config(tmp_path / "flap" / "flap_from_dicom.toml")
    assert cfg.case.kind == "dicom"
    assert set(cfg.case.dicom.structures) == {"CTV", "sacrum", "ureter", "bowel", "flap"}
    assert len(cfg.applicator.catheters_mm) == FLAP_OVERRIDES["n_catheters"]
    assert [o.type for o in cfg.objectives] == [o.type for o in load_config().objectives]
    assert cfg.prescription == load_config().prescription
    xray = load_config(tmp_path / "breast" / "breast_xray_from_dicom.toml")
    assert xray.plan.modality == "xray_sphere" and xray.case.kind == "dicom"
    assert xray.case.dicom.structures["cavity"].role == "cavity"
    electron = load_config(tmp_path / "eliot" / "eliot_from_dicom.toml")
    assert electron.plan.modality == "electron" and electron.case.kind == "dicom"
    assert cfg.output.dicom and xray.output.dicom and electron.output.dicom  # RTDOSE out
    readme = (tmp_path / "README.txt").read_text()
    assert all(f"{name}/" in readme for name in ("study", "flap", "breast", "eliot"))
