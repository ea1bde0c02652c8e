"""DICOM conformance of the files iortopt writes, checked with ``dciodvfy`` (dicom3tools).

Every RTPLAN (brachy on a built-in phantom and on an imported study, electron), RTSTRUCT
(synthetic study and phantom study) and CT slice must pass with no error; the only warnings
allowed are the documented ones below. RTDOSE is left to the pydicom attribute-list tests
(tests/test_dicom_export.py): dciodvfy aborts on any 32-bit RTDOSE. Skipped only when
``dciodvfy`` is not on PATH (``.ci/run`` installs it).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from iortopt.cases.case import Case, Structure
from iortopt.cases.flap import build_flap_case
from iortopt.config import parse_config
from iortopt.dicom.files import save_atomic
from iortopt.dicom.phantom_study import write_phantom_study
from iortopt.dicom.rtplan import BrachyDwells, BrachySource, build_brachy_plan
from iortopt.dicom.study import StudyRef
from iortopt.dicom.synthetic import write_synthetic_study
from iortopt.grid import Grid
from iortopt.modalities.stage_settings import dicom_plan_info
from iortopt.outputs.dicom_export import electron_writer, hdr_writer
from iortopt.physics.sources import load_source

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not on PATH")

#: Warnings that dciodvfy (dicom3tools 2022) gives and that are documented, by file kind.
ALLOWED_WARNINGS = {
    # HAM_FLAB is the standard's Application Setup Type for flap applicators; dciodvfy's list
    # of defined terms lacks it.
    "brachy": ("Unrecognized defined term <HAM_FLAB>",),
    # Laterality (type 2C) is empty: a phantom has no paired body part.
    "ct": ("attribute <Laterality>",),
}


def _dciodvfy(path) -> tuple[list[str], list[str]]:
    run = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    assert not any("Assertion" in line for line in lines), lines  # dciodvfy itself failed
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One file of every kind iortopt writes (small grids)."""
    root = tmp_path_factory.mktemp("conformance")
    files = {}
    study = write_synthetic_study(
        root / "synth", pixel_mm=5.0, n_pixels=16, slice_mm=5.0, n_slices=6
    )
    files["rtstruct_synthetic"] = (study.rtstruct, "rtstruct")
    files["ct_synthetic"] = (sorted(study.ct_folder.iterdir())[0], "ct")

    grid = Grid((3, 4, 5), (3.0, 3.0, 3.0), (-6.0, -4.5, -3.0))
    box = np.zeros(grid.shape_zyx, np.float32)
    box[:, 1:3, 1:4] = 1.0
    phantom = write_phantom_study(
        root / "phantom", grid, np.zeros(grid.shape_zyx), [("PTV", "target", box)]
    )
    files["rtstruct_phantom"] = (phantom.rtstruct, "rtstruct")

    case, applicator = build_flap_case()
    dwells = applicator.dwells(5.0)
    times = np.linspace(0.0, 9.87654321, len(dwells))
    dose = np.zeros(case.grid.shape_zyx, np.float32)
    cfg = parse_config({"output": {"dicom": True}})
    source = load_source(cfg.source.model)
    hdr_writer(dicom_plan_info(cfg), case, dose, {}, dwells, times, source, 40700.0, step_mm=5.0)(
        root / "hdr"
    )
    files["rtplan_brachy_phantom"] = (root / "hdr" / "dicom" / "RTPLAN.dcm", "brachy")

    # a brachy plan on the imported study: geometry PATIENT, referencing its RTSTRUCT
    rs = pydicom.dcmread(study.rtstruct)
    ref = StudyRef.from_dataset(rs, rtstruct_uid=str(rs.SOPInstanceUID))
    positions = np.array([[0.0, -30.0, z] for z in (-5.0, 0.0, 5.0)])
    plan_dwells = BrachyDwells(
        positions, np.tile([0.0, 0.0, 1.0], (3, 1)), np.array([2.0, 0.0, 3.5]),
        np.array([0, 0, 1]), np.array([0, 1, 0]),
    )  # fmt: skip
    brachy_source = BrachySource(
        "GammaMedPlus", "TG-43 data", "Ir-192", 73.83, 3.5, 40700.0,
        dt.datetime(2026, 1, 2, 3, 4, 5),
    )  # fmt: skip
    plan = build_brachy_plan(
        ref, "1.2.826.0.1.3680043.8.498.1", plan_dwells, brachy_source,
        air_kerma_strength_U=40700.0, step_mm=5.0, label="conformance", prescription_gy=10.0,
        prescription_structure="GTV",
    )  # fmt: skip
    files["rtplan_brachy_study"] = (save_atomic(plan, root / "RP_study.dcm"), "brachy")

    egrid = Grid((3, 4, 5), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ecase = Case(
        "eliot_like",
        egrid,
        (Structure("PTV_gland", "target", np.ones(egrid.shape_zyx, np.float32)),),
    )
    chosen = {
        "energy_MeV": 9.0, "diameter_cm": 6.0, "bevel_deg": 15.0, "mu": 2345.6,
        "cone_end_mm": [1.0, -20.0, 3.0], "cone_axis": [0.0, 1.0, 0.0],
    }  # fmt: skip
    ecfg = parse_config(
        {"plan": {"modality": "electron", "name": "ioert"}, "case": {"kind": "builtin_eliot"}}
    )
    edose = np.full(egrid.shape_zyx, 21.0, np.float32)
    electron_writer(dicom_plan_info(ecfg), ecase, edose, {}, chosen, "generic linac")(
        root / "electron"
    )
    files["rtplan_electron"] = (root / "electron" / "dicom" / "RTPLAN.dcm", "electron")
    return files


KINDS = [
    "rtplan_brachy_phantom",
    "rtplan_brachy_study",
    "rtplan_electron",
    "rtstruct_synthetic",
    "rtstruct_phantom",
    "ct_synthetic",
]


@pytest.mark.parametrize("kind", KINDS)
def test_written_file_passes_dciodvfy(written, kind):
    path, family = written[kind]
    errors, warnings = _dciodvfy(path)
    assert errors == [], errors
    allowed = ALLOWED_WARNINGS.get(family, ())
    unexpected = [w for w in warnings if not any(a in w for a in allowed)]
    assert unexpected == [], unexpected


def test_brachy_channels_name_their_applicator(written):
    plan = pydicom.dcmread(written["rtplan_brachy_study"][0])
    assert plan.RTPlanGeometry == "PATIENT"
    channels = plan.ApplicationSetupSequence[0].ChannelSequence
    assert [c.SourceApplicatorID for c in channels] == ["catheter 1", "catheter 2"]
    assert all(c.SourceApplicatorType == "FLEXIBLE" for c in channels)
    # dwell span from the tip: (last index + 1) x step
    assert [float(c.SourceApplicatorLength) for c in channels] == [10.0, 5.0]
    assert all("ReferencedROINumber" in c and c.ReferencedROINumber in (None, "") for c in channels)
    rs = pydicom.dcmread(written["rtstruct_synthetic"][0])
    assert rs.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
