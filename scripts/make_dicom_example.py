"""Write a synthetic DICOM study (CT series + RTSTRUCT) and a plan config that uses it.

    python scripts/make_dicom_example.py [FOLDER]      # default ./dicom-example
    iortopt dicom inspect FOLDER/study
    iortopt run FOLDER/dicom_flap_example.toml --out FOLDER/out

The study is made up (analytic shapes, no patient data); see ``iortopt.dicom.synthetic``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study


def main(folder: str = "dicom-example") -> None:
    root = Path(folder).resolve()
    study = write_synthetic_study(root / "study")
    config = root / "dicom_flap_example.toml"
    config.write_text(example_config_toml(study))
    print(f"wrote {study.ct_folder} ({len(list(study.ct_folder.iterdir()))} CT slices), ")
    print(f"      {study.rtstruct} and {config}")
    print(f"next: iortopt run {config} --out {root / 'out'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
