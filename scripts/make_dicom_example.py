"""Write example DICOM studies (CT series + RTSTRUCT) and plan configs that use them.

    python scripts/make_dicom_example.py [FOLDER]      # default ./dicom-example
    iortopt dicom inspect FOLDER/study
    iortopt run FOLDER/dicom_flap_example.toml --out FOLDER/out
    iortopt run FOLDER/flap/flap_from_dicom.toml --out FOLDER/flap/out
    iortopt run FOLDER/breast/breast_xray_from_dicom.toml --out FOLDER/breast/out
    iortopt run FOLDER/eliot/eliot_from_dicom.toml --out FOLDER/eliot/out

``FOLDER/study``: a synthetic study of analytic shapes (``iortopt.dicom.synthetic``), planned by
``FOLDER/dicom_flap_example.toml``. ``FOLDER/flap``, ``FOLDER/breast``, ``FOLDER/eliot``: the
built-in phantoms written as CT (the HU of their materials) + RTSTRUCT (their structures as
contours; ``iortopt.dicom.phantom_study``); ``flap/flap_from_dicom.toml`` is the built-in HDR
flap plan (configs/flap_default.toml) on that study, with the phantom's catheters. The breast
study also has the cavity (ROI ``cavity``, role cavity), and
``breast/breast_xray_from_dicom.toml`` is the 50 kV sphere plan of configs/breast_xray.toml on
it. The ELIOT study is written in the phantom's declared patient frame (supine, beam from
anterior); ``eliot/eliot_from_dicom.toml`` is the electron plan of configs/breast_electron.toml on
it, the cone where the phantom puts it (end and axis in patient LPS mm). None of this is patient
data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iortopt.cases.breast import BreastCaseParams, build_breast_case, cavity_occupancy
from iortopt.cases.eliot import EliotCaseParams, build_eliot_case
from iortopt.cases.flap import FlapCaseParams, build_flap_case
from iortopt.config import builtin_config_text, case_params, load_config
from iortopt.dicom.patient_frame import PatientFrame
from iortopt.dicom.phantom_study import Patient, PhantomStudy, write_phantom_study
from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study

README = """\
Example DICOM studies written by scripts/make_dicom_example.py (made up; no patient data).

study/, dicom_flap_example.toml   synthetic analytic study and an HDR flap plan on it
flap/, flap/flap_from_dicom.toml  the built-in flap phantom as CT + RTSTRUCT, and the built-in
                                  HDR flap plan on it (the phantom's catheters)
breast/, breast/breast_xray_from_dicom.toml
                                  the breast phantom (with its cavity ROI) as CT + RTSTRUCT and
                                  the 50 kV sphere plan of configs/breast_xray.toml on it
eliot/, eliot/eliot_from_dicom.toml  the ELIOT phantom as CT + RTSTRUCT in its patient frame
                                  (HFS, beam from anterior) and the electron plan on it
"""


def _structures(case):
    return [(s.name, s.role, s.occupancy) for s in case.structures]


def _float(v: float) -> str:
    return repr(float(v))


def _catheters_toml(catheters) -> str:
    rows = []
    for polyline in catheters:
        points = ", ".join(f"[{_float(x)}, {_float(y)}, {_float(z)}]" for x, y, z in polyline)
        rows.append(f"    [{points}],")
    return "catheters_mm = [               # the phantom's catheters, patient mm, tip first\n" + (
        "\n".join(rows) + "\n]\n"
    )


#: The phantom-study configs write DICOM too: RTDOSE (with the CT's UIDs and DVHs), and the
#: RTPLAN where the modality has one.
DICOM_OUTPUT = "dicom = true                   # also write dicom/RTDOSE.dcm (and RTPLAN.dcm)\n"


def dicom_case_toml(study: PhantomStudy, phantom: str, skip=()) -> str:
    """The ``[case]`` section of a config planning a written phantom study: the CT grid
    uncropped (the phantom's grid, so the plans compare voxel by voxel) and every ROI but
    ``skip`` mapped under its own name and role."""
    mapping = "\n".join(
        f'{name} = {{ roi = "{name}", role = "{role}" }}'
        for name, role in study.roles.items()
        if name not in skip
    )
    return f"""[case]
kind = "dicom"                 # the {phantom} phantom written by scripts/make_dicom_example.py
[case.dicom]
ct_folder = "{study.ct_folder.as_posix()}"
rtstruct = "{study.rtstruct.as_posix()}"
spacing_mm = "ct"              # the CT voxels = the phantom's grid
crop = false
[case.dicom.structures]        # planning name = {{ roi = RTSTRUCT ROI name, role }}
{mapping}

"""


def flap_config_toml(study: PhantomStudy, catheters, source_to_surface_mm: float) -> str:
    """The built-in flap plan (objectives, goals, prescription) on a written flap study.

    The dose grid is the CT grid uncropped (``spacing_mm = "ct"``, ``crop = false``), i.e. the
    phantom's grid, so that plans on the study and on the phantom compare voxel by voxel.
    """
    text = builtin_config_text()
    case_at, source_at = text.index("[case]\n"), text.index("[source]\n")
    case = dicom_case_toml(study, "flap")
    text = text[:case_at] + case + text[source_at:]
    applicator = (
        "[applicator]\n"
        f"source_to_surface_mm = {_float(source_to_surface_mm)}  # catheter to tissue\n"
        + _catheters_toml(catheters)
    )
    text = text.replace("[applicator]\n", applicator, 1)
    text = text.replace('name = "flap_default"', 'name = "flap_from_dicom"', 1)
    text = text.replace("[output]\n", "[output]\n" + DICOM_OUTPUT, 1)
    return "# The built-in flap plan on the flap phantom's DICOM study.\n" + text


def write_flap_study(folder: Path, params: FlapCaseParams | None = None) -> Path:
    """``folder``: the flap phantom's study and ``flap_from_dicom.toml``; returns the config.

    ``params``: the phantom (default: that of the built-in plan, its ``[case.flap]``).
    """
    if params is None:
        params = case_params(FlapCaseParams, load_config().case.flap, "flap")
    case, applicator = build_flap_case(params)
    patient = Patient("Phantom^Flap", "IORTOPT-PHANTOM-FLAP", "iortopt flap phantom")
    study = write_phantom_study(folder, case.grid, case.hu, _structures(case), patient=patient)
    config = folder / "flap_from_dicom.toml"
    config.write_text(flap_config_toml(study, applicator.catheters, params.source_to_surface_mm))
    return config


#: The built-in X-ray plan the breast study's config follows.
XRAY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "breast_xray.toml"


def xray_config_toml(study: PhantomStudy, params: BreastCaseParams) -> str:
    """configs/breast_xray.toml on a written breast study: every ROI but ``PTV_shell`` mapped
    (the target is rebuilt per applicator as the tissue shell, as on the phantom), the cavity
    from the ROI ``cavity``, the phantom's target thickness and fit tolerance; the CT grid
    uncropped, so that plans on the study and on the phantom compare voxel by voxel."""
    text = XRAY_CONFIG.read_text()
    case_at, xray_at = text.index("[case]\n"), text.index("[xray]\n")
    case = dicom_case_toml(study, "breast", skip=("PTV_shell",))
    xray = (
        "[xray]\n"
        "# centre_mm = [x, y, z]       # applicator centre, patient mm (default: cavity centroid)\n"
        f"target_thickness_mm = {_float(params.target_thickness_mm)}  # PTV_shell: tissue shell\n"
        f"fit_tolerance_mm = {_float(params.fit_tolerance_mm)}     # cavity wall to sphere\n"
    )
    text = text[:case_at] + case + xray + text[xray_at + len("[xray]\n") :]
    text = text.replace('name = "breast_xray"', 'name = "breast_xray_from_dicom"', 1)
    text = text.replace("[output]\n", "[output]\n" + DICOM_OUTPUT, 1)
    return "# The built-in X-ray plan on the breast phantom's DICOM study.\n" + text


def write_breast_study(
    folder: Path, params: BreastCaseParams | None = None
) -> tuple[PhantomStudy, Path]:
    """``folder``: the breast phantom's study (its structures and the ROI ``cavity``) and
    ``breast_xray_from_dicom.toml``; returns the study and the config.

    ``params``: the phantom (default: that of configs/breast_xray.toml, its ``[case.breast]``).
    """
    if params is None:
        params = case_params(BreastCaseParams, load_config(XRAY_CONFIG).case.breast, "breast")
    breast, _ = build_breast_case(params)
    structures = _structures(breast) + [("cavity", "cavity", cavity_occupancy(params, breast.grid))]
    study = write_phantom_study(
        folder,
        breast.grid,
        breast.hu,
        structures,
        patient=Patient("Phantom^Breast", "IORTOPT-PHANTOM-BREAST", "iortopt breast phantom"),
    )
    config = folder / "breast_xray_from_dicom.toml"
    config.write_text(xray_config_toml(study, params))
    return study, config


def _vector(v) -> str:
    return "[" + ", ".join(_float(round(float(x), 9) + 0.0) for x in v) + "]"


def eliot_config_toml(study: PhantomStudy, case, geometry) -> str:
    """The electron plan of configs/breast_electron.toml on a written ELIOT study: the flat
    cone's end on the gland surface at the bed axis, its axis the surface's inward normal, the
    toe direction of the built-in plan, all mapped to patient LPS mm (``case.info``'s frame).
    The dose grid is the CT grid uncropped (the phantom's grid, permuted to LPS)."""
    frame = PatientFrame.from_info(case.info)
    end = frame.points_to_patient(geometry.surface_point_mm)
    axis = frame.vectors_to_patient(-geometry.surface_normal)
    toe = frame.vectors_to_patient([0.0, -1.0, 0.0])
    case = dicom_case_toml(study, "ELIOT")
    return f"""# The ELIOT-type electron plan (configs/breast_electron.toml) on the ELIOT phantom's
# DICOM study (scripts/make_dicom_example.py). GENERIC, ILLUSTRATIVE beam data: NOT FOR
# CLINICAL USE.

[plan]
name = "eliot_from_dicom"
modality = "electron"
description = "ELIOT-type breast phantom from CT + RTSTRUCT"

{case}[electron]
beam = "generic_IOERT"
isodose_percent = 90.0
cone_end_mm = {_vector(end)}   # flat cone's end-face centre, patient LPS mm
cone_axis = {_vector(axis)}    # its beam direction into the patient (LPS): posterior
toe_direction = {_vector(toe)} # a bevel's toe (LPS): inferior
# disc: by default across the axis at the deepest PTV_gland boundary on it (the gland's bottom)
disc = "Al2_Pb4"
disc_radius_mm = 45.0
disc_margin_mm = 5.0
max_axis_tilt_deg = 30.0
optimise_pose = false          # DICOM cases: the catalogue at the given cone pose

[prescription]
dose_gy = 21.0
structure = "PTV_gland"
n_fractions = 1

[[goals]]
structure = "PTV_gland"
metric = "V100_percent"
op = ">="
value = 95.0

[[goals]]
structure = "chest_wall"
metric = "max_gy"
op = "<="
value = 2.0

[[goals]]
structure = "skin"
metric = "max_gy"
op = "<="
value = 5.0

[output]
isodose_percent = [10.0, 50.0, 100.0, 111.1]
dicom = true
"""


def write_eliot_study(folder: Path, params: EliotCaseParams | None = None) -> Path:
    """``folder``: the ELIOT phantom's study (in its patient frame) and
    ``eliot_from_dicom.toml``; returns the config. ``params``: the phantom (default: the
    built-in one, as configs/breast_electron.toml uses it)."""
    case, geometry = build_eliot_case(params or EliotCaseParams())
    study = write_phantom_study(
        folder,
        case.grid,
        case.hu,
        _structures(case),
        patient_frame=case.info["patient_frame"],
        patient=Patient("Phantom^Eliot", "IORTOPT-PHANTOM-ELIOT", "iortopt ELIOT phantom"),
    )
    config = folder / "eliot_from_dicom.toml"
    config.write_text(eliot_config_toml(study, case, geometry))
    return config


def main(folder: str = "dicom-example") -> None:
    root = Path(folder).resolve()
    study = write_synthetic_study(root / "study")
    config = root / "dicom_flap_example.toml"
    config.write_text(example_config_toml(study))
    print(f"wrote {study.ct_folder} ({len(list(study.ct_folder.iterdir()))} CT slices), ")
    print(f"      {study.rtstruct} and {config}")
    flap_config = write_flap_study(root / "flap")
    _, breast_config = write_breast_study(root / "breast")
    eliot_config = write_eliot_study(root / "eliot")
    (root / "README.txt").write_text(README)
    print(f"wrote {root / 'flap'} (flap phantom) and {flap_config}")
    print(f"wrote {root / 'breast'} (breast phantom) and {breast_config}")
    print(f"wrote {root / 'eliot'} (ELIOT phantom) and {eliot_config}")
    print(f"next: iortopt run {config} --out {root / 'out'}")
    print(f"      iortopt run {flap_config} --out {root / 'flap' / 'out'}")
    print(f"      iortopt run {breast_config} --out {root / 'breast' / 'out'}")
    print(f"      iortopt run {eliot_config} --out {root / 'eliot' / 'out'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
