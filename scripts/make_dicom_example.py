"""Write example DICOM studies (CT series + RTSTRUCT) and plan configs that use them.

    python scripts/make_dicom_example.py [FOLDER]      # default ./dicom-example
    iortopt dicom inspect FOLDER/study
    iortopt run FOLDER/dicom_flap_example.toml --out FOLDER/out
    iortopt run FOLDER/flap/flap_from_dicom.toml --out FOLDER/flap/out
    iortopt run FOLDER/breast/breast_xray_from_dicom.toml --out FOLDER/breast/out

``FOLDER/study``: a synthetic study of analytic shapes (``iortopt.dicom.synthetic``), planned by
``FOLDER/dicom_flap_example.toml``. ``FOLDER/flap``, ``FOLDER/breast``, ``FOLDER/eliot``: the
built-in phantoms written as CT (the HU of their materials) + RTSTRUCT (their structures as
contours; ``iortopt.dicom.phantom_study``); ``flap/flap_from_dicom.toml`` is the built-in HDR
flap plan (configs/flap_default.toml) on that study, with the phantom's catheters. The breast
study also has the cavity (ROI ``cavity``, role cavity), and
``breast/breast_xray_from_dicom.toml`` is the 50 kV sphere plan of configs/breast_xray.toml on
it. The ELIOT study is for import only until electron plans can run on DICOM cases; it is
written in the phantom's declared patient frame (supine, beam from anterior).
None of this is patient data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iortopt.cases.breast import BreastCaseParams, build_breast_case, cavity_occupancy
from iortopt.cases.eliot import build_eliot_case
from iortopt.cases.flap import FlapCaseParams, build_flap_case
from iortopt.config import builtin_config_text, case_params, load_config
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
eliot/                            the ELIOT phantom as CT + RTSTRUCT: for import (iortopt dicom
                                  inspect / import) until electron plans from DICOM exist; it
                                  is in the phantom's patient frame (HFS, beam from anterior)
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


def flap_config_toml(study: PhantomStudy, catheters, source_to_surface_mm: float) -> str:
    """The built-in flap plan (objectives, goals, prescription) on a written flap study.

    The dose grid is the CT grid uncropped (``spacing_mm = "ct"``, ``crop = false``), i.e. the
    phantom's grid, so that plans on the study and on the phantom compare voxel by voxel.
    """
    text = builtin_config_text()
    case_at, source_at = text.index("[case]\n"), text.index("[source]\n")
    mapping = "\n".join(
        f'{name} = {{ roi = "{name}", role = "{role}" }}' for name, role in study.roles.items()
    )
    case = f"""[case]
kind = "dicom"                 # the flap phantom written by scripts/make_dicom_example.py
[case.dicom]
ct_folder = "{study.ct_folder.as_posix()}"
rtstruct = "{study.rtstruct.as_posix()}"
spacing_mm = "ct"              # the CT voxels = the phantom's grid
crop = false
[case.dicom.structures]        # planning name = {{ roi = RTSTRUCT ROI name, role }}
{mapping}

"""
    text = text[:case_at] + case + text[source_at:]
    applicator = (
        "[applicator]\n"
        f"source_to_surface_mm = {_float(source_to_surface_mm)}  # catheter to tissue\n"
        + _catheters_toml(catheters)
    )
    text = text.replace("[applicator]\n", applicator, 1)
    text = text.replace('name = "flap_default"', 'name = "flap_from_dicom"', 1)
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
    mapping = "\n".join(
        f'{name} = {{ roi = "{name}", role = "{role}" }}'
        for name, role in study.roles.items()
        if name != "PTV_shell"
    )
    case = f"""[case]
kind = "dicom"                 # the breast phantom written by scripts/make_dicom_example.py
[case.dicom]
ct_folder = "{study.ct_folder.as_posix()}"
rtstruct = "{study.rtstruct.as_posix()}"
spacing_mm = "ct"              # the CT voxels = the phantom's grid
crop = false
[case.dicom.structures]        # planning name = {{ roi = RTSTRUCT ROI name, role }}
{mapping}

"""
    xray = (
        "[xray]\n"
        "# centre_mm = [x, y, z]       # applicator centre, patient mm (default: cavity centroid)\n"
        f"target_thickness_mm = {_float(params.target_thickness_mm)}  # PTV_shell: tissue shell\n"
        f"fit_tolerance_mm = {_float(params.fit_tolerance_mm)}     # cavity wall to sphere\n"
    )
    text = text[:case_at] + case + xray + text[xray_at + len("[xray]\n") :]
    text = text.replace('name = "breast_xray"', 'name = "breast_xray_from_dicom"', 1)
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


def write_import_studies(root: Path) -> list[PhantomStudy]:
    """``root/breast`` (with its X-ray config, :func:`write_breast_study`) and ``root/eliot``:
    the breast and ELIOT phantoms as CT + RTSTRUCT."""
    breast_study, _ = write_breast_study(root / "breast")
    eliot, _ = build_eliot_case()
    return [
        breast_study,
        write_phantom_study(
            root / "eliot",
            eliot.grid,
            eliot.hu,
            _structures(eliot),
            patient_frame=eliot.info["patient_frame"],
            patient=Patient("Phantom^Eliot", "IORTOPT-PHANTOM-ELIOT", "iortopt ELIOT phantom"),
        ),
    ]


def main(folder: str = "dicom-example") -> None:
    root = Path(folder).resolve()
    study = write_synthetic_study(root / "study")
    config = root / "dicom_flap_example.toml"
    config.write_text(example_config_toml(study))
    print(f"wrote {study.ct_folder} ({len(list(study.ct_folder.iterdir()))} CT slices), ")
    print(f"      {study.rtstruct} and {config}")
    flap_config = write_flap_study(root / "flap")
    studies = write_import_studies(root)
    (root / "README.txt").write_text(README)
    print(f"wrote {root / 'flap'} (flap phantom) and {flap_config}")
    print(f"wrote {', '.join(str(s.folder) for s in studies)}")
    print(f"next: iortopt run {config} --out {root / 'out'}")
    print(f"      iortopt run {flap_config} --out {root / 'flap' / 'out'}")
    print(f"      iortopt run {root / 'breast' / 'breast_xray_from_dicom.toml'} "
          f"--out {root / 'breast' / 'out'}")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:2])
