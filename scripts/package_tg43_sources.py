"""Regenerate the packaged TG-43 source files from the reference tables in ``../shared/reference``.

Usage: ``python scripts/package_tg43_sources.py [REFERENCE_DIR]``.

Writes one TOML file per dataset to ``src/iortopt/data/sources/`` in the documented user format
(see ``iortopt.physics.sources``) and copies the HEBD 2012 along-away QA tables to
``src/iortopt/data/qa/``. Only numbers are carried over, each file with its citation.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "tg43"
OUT_SOURCES = ROOT / "src" / "iortopt" / "data" / "sources"
OUT_QA = ROOT / "src" / "iortopt" / "data" / "qa"

HEBD_SOURCES = ["mHDR-v2", "GammaMedPlus", "VS2000", "Flexisource", "M-19"]
CLRP_SOURCES = [
    "mHDR-v2",
    "mHDR-v1",
    "GammaMedPlus",
    "GammaMed12i",
    "VS2000",
    "VariSource-classic",
    "Flexisource",
    "BEBIG-GI192M11",
    "M-19",
]
HEBD_CITATION = (
    "Perez-Calatayud J, Ballester F, Das RK, et al. Dose calculation for photon-emitting "
    "brachytherapy sources with average energy higher than 50 keV: report of the AAPM and ESTRO. "
    "Med Phys 39(5):2904-2929 (2012). Consensus (HEBD) dataset."
)
CLRP_CITATION = (
    "CLRP TG-43 database (Carleton Laboratory for Radiotherapy Physics, EGSnrc); Taylor REP, "
    "Rogers DWO, Med Phys 35:4933 (2008). Tables as published before the 2023 CLRP update "
    "(Safigholi H et al., Med Phys 50:1928, 2023)."
)
# Ir-192 half-life used in the IORT primer; mirrors of the CDC brief give 73.827 d (PROVENANCE A6).
IR192_HALF_LIFE_DAYS = 73.83


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def fnum(text: str) -> float:
    return float(text) if text.strip() else math.nan


def toml_array(values: list[float]) -> str:
    return "[" + ", ".join("nan" if math.isnan(v) else repr(v) for v in values) + "]"


def f_table(rows: list[dict[str, str]]) -> tuple[list[float], list[float], list[list[float]]]:
    thetas = sorted({float(r["theta_deg"]) for r in rows})
    radii = sorted({float(r["r_cm"]) for r in rows})
    grid = [[math.nan] * len(radii) for _ in thetas]
    for r in rows:
        grid[thetas.index(float(r["theta_deg"]))][radii.index(float(r["r_cm"]))] = fnum(
            r["F_dimensionless"]
        )
    return thetas, radii, grid


def write_source(
    name: str, dataset: str, summary: dict[str, str], citation: str, ref: Path
) -> None:
    prefix = summary["csv_file_prefix"]
    lines = [
        f"# TG-43 source data: {name}, dataset {dataset}.",
        f"# Numbers copied from {ref.name}/{prefix}_*.csv; see PROVENANCE in the docs.",
        "",
        "[source]",
        f'name = "{name}"',
        f'dataset = "{dataset}"',
        'isotope = "Ir-192"',
        f"dose_rate_constant_cGy_h-1_U-1 = {float(summary['Lambda_cGy_h-1_U-1'])!r}",
        f"active_length_cm = {float(summary['active_length_L_cm'])!r}",
        f"half_life_days = {IR192_HALF_LIFE_DAYS!r}",
        f'citation = "{citation}"',
        "",
    ]
    if dataset.startswith("HEBD"):
        gl = read_csv(ref / f"{prefix}_gL.csv")
        lines += [
            "[radial_dose_function]",
            f"r_cm = {toml_array([float(r['r_cm']) for r in gl])}",
            f"g_line = {toml_array([fnum(r['gL_dimensionless']) for r in gl])}",
            "",
        ]
    else:
        gl = read_csv(ref / f"{prefix}_gL_gP.csv")
        phi = read_csv(ref / f"{prefix}_phi_an.csv")
        lines += [
            "[radial_dose_function]",
            f"r_cm = {toml_array([float(r['r_cm']) for r in gl])}",
            f"g_line = {toml_array([fnum(r['gL_dimensionless']) for r in gl])}",
            f"g_point = {toml_array([fnum(r['gP_dimensionless']) for r in gl])}",
            "",
        ]
        phi_an = [fnum(r["phi_an_dimensionless"]) for r in phi]
        if any(math.isnan(v) for v in phi_an):
            # e.g. VS2000: the transcribed phi_an row is incomplete, so no 1-D data is offered.
            lines += ["# phi_an omitted: the reference table is incomplete for this source.", ""]
        else:
            lines += [
                "[anisotropy_factor_1d]",
                f"r_cm = {toml_array([float(r['r_cm']) for r in phi])}",
                f"phi_an = {toml_array(phi_an)}",
                "",
            ]
    thetas, radii, grid = f_table(read_csv(ref / f"{prefix}_F.csv"))
    lines += [
        "[anisotropy_function]",
        "# F[i][j] at theta_deg[i], r_cm[j]; nan = no value published at that point.",
        f"theta_deg = {toml_array(thetas)}",
        f"r_cm = {toml_array(radii)}",
        "F = [",
        *[f"  {toml_array(row)}," for row in grid],
        "]",
        "",
    ]
    out = OUT_SOURCES / f"{name}_{dataset}.toml"
    out.write_text("\n".join(lines))
    print("wrote", out.relative_to(ROOT))


def write_qa(name: str, ref: Path) -> None:
    rows = read_csv(ref / f"tg43_{name}_HEBD2012_QA_along_away.csv")
    out = OUT_QA / f"{name}_HEBD2012_QA_along_away.csv"
    with out.open("w", newline="") as fh:
        fh.write(f"# {HEBD_CITATION} Along-away QA table, dose rate per unit S_K.\n")
        fh.write("# flags: 1 = interpolated/extrapolated or inside the source (consensus fonts).\n")
        writer = csv.writer(fh)
        writer.writerow(
            [
                "z_along_cm",
                "y_away_cm",
                "dose_rate_cGy_h-1_U-1",
                "flag_interp_or_extrap",
                "flag_inside_source",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r["z_along_cm"],
                    r["y_away_cm"],
                    r["dose_rate_per_SK_cGy_h-1_U-1"],
                    r["flag_interp_or_extrap"],
                    r["flag_inside_source"],
                ]
            )
    print("wrote", out.relative_to(ROOT))


def main(ref: Path) -> None:
    summary = {
        (r["source_model"], r["dataset"]): r for r in read_csv(ref / "tg43_source_summary.csv")
    }
    OUT_SOURCES.mkdir(parents=True, exist_ok=True)
    OUT_QA.mkdir(parents=True, exist_ok=True)
    for name in HEBD_SOURCES:
        write_source(name, "HEBD2012", summary[(name, "HEBD2012_consensus")], HEBD_CITATION, ref)
        write_qa(name, ref)
    for name in CLRP_SOURCES:
        write_source(name, "CLRP", summary[(name, "CLRP_database_EGSnrc")], CLRP_CITATION, ref)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REFERENCE)
