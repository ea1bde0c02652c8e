"""Source datasets: packaged numbers equal the published ones; malformed user files are rejected."""

from __future__ import annotations

import csv
import json
import math
import tomllib
from importlib import resources
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from iortopt.errors import SourceDataError
from iortopt.physics.sources import (
    load_source,
    load_source_file,
    packaged_source_keys,
    parse_source,
)
from iortopt.physics.tg43 import dose_rate_per_sk, make_kernel

# Lambda (cGy h^-1 U^-1) and active length L (cm), copied from the published datasets as listed in
# tg43_source_summary.csv (PROVENANCE A1: HEBD 2012 consensus spreadsheets; A2: CLRP database).
PUBLISHED_LAMBDA_L = {
    "mHDR-v2_HEBD2012": (1.10942, 0.35),
    "GammaMedPlus_HEBD2012": (1.1165, 0.35),
    "VS2000_HEBD2012": (1.1, 0.5),
    "Flexisource_HEBD2012": (1.1125, 0.35),
    "M-19_HEBD2012": (1.114, 0.35),
    "mHDR-v2_CLRP": (1.109, 0.36),
    "mHDR-v1_CLRP": (1.117, 0.35),
    "GammaMedPlus_CLRP": (1.115, 0.35),
    "GammaMed12i_CLRP": (1.117, 0.35),
    "VS2000_CLRP": (1.099, 0.5),
    "VariSource-classic_CLRP": (1.042, 1.0),
    "Flexisource_CLRP": (1.116, 0.35),
    "BEBIG-GI192M11_CLRP": (1.112, 0.35),
    "M-19_CLRP": (1.114, 0.35),
}
HEBD_KEYS = [k for k in PUBLISHED_LAMBDA_L if k.endswith("HEBD2012")]
IR192_HALF_LIFE_DAYS = 73.83  # PROVENANCE A6 (73.827 .. 73.83 d in the sources read)
# optional full-table cross-check against ../shared (beside the repository, as in CI)
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tg43"


# --------------------------------------------------------------------------- packaged data


def test_packaged_keys_are_the_published_datasets_consensus_first():
    keys = packaged_source_keys()
    assert sorted(keys) == sorted(PUBLISHED_LAMBDA_L)
    n_hebd = len(HEBD_KEYS)
    assert all(k.endswith("_HEBD2012") for k in keys[:n_hebd])


@pytest.mark.parametrize("key", list(PUBLISHED_LAMBDA_L))
def test_packaged_lambda_length_half_life_are_published_values(key):
    src = load_source(key)
    lam, length = PUBLISHED_LAMBDA_L[key]
    assert src.key == key
    assert src.dose_rate_constant == lam
    assert src.active_length_cm == length
    assert math.isclose(src.half_life_days, IR192_HALF_LIFE_DAYS, abs_tol=0.005)
    # TG-43 normalisation of the published tables: g(r0) = 1 and F(r0, 90 deg) = 1.
    assert np.interp(1.0, src.g_r_cm, src.g_line) == pytest.approx(1.0, abs=1e-12)
    row90 = int(np.flatnonzero(src.F_theta_deg == 90.0)[0])
    assert np.interp(1.0, src.F_r_cm, src.F[row90]) == pytest.approx(1.0, abs=1e-12)


def test_load_by_model_name_prefers_consensus_then_clrp():
    assert load_source("mHDR-v2").key == "mHDR-v2_HEBD2012"
    assert load_source("mhdr-v2_clrp").key == "mHDR-v2_CLRP"
    assert load_source("BEBIG-GI192M11").key == "BEBIG-GI192M11_CLRP"
    with pytest.raises(SourceDataError, match="unknown source"):
        load_source("NoSuchSource")


def test_packaged_tables_spot_values_from_published_tables():
    """A few numbers copied literally from the HEBD 2012 and CLRP mHDR-v2 tables."""
    hebd = load_source("mHDR-v2_HEBD2012")
    g = dict(zip(hebd.g_r_cm, hebd.g_line, strict=True))
    assert g[0.5] == 0.9967 and g[5.0] == 1.00261 and g[10.0] == 0.93894
    f = {
        (t, r): hebd.F[i, j]
        for i, t in enumerate(hebd.F_theta_deg)
        for j, r in enumerate(hebd.F_r_cm)
    }
    assert f[(0.0, 1.0)] == 0.61047
    assert f[(180.0, 10.0)] == 0.71776
    assert f[(60.0, 2.0)] == 0.98599
    clrp = load_source("mHDR-v2_CLRP")
    gp = dict(zip(clrp.g_r_cm, clrp.g_point, strict=True))
    assert gp[0.25] == 0.872 and gp[5.0] == 1.019 and gp[20.0] == 0.693
    phi = dict(zip(clrp.phi_r_cm, clrp.phi_an, strict=True))
    assert phi[0.25] == 1.16 and phi[1.0] == 0.971 and phi[10.0] == 0.97
    # CLRP has no F at (0 deg, 0.25 cm) ("-"): documented fill = nearest value at that angle.
    assert clrp.F_r_cm[0] == 0.25 and clrp.F[0, 0] == 0.667


def _read_reference_csv(name):
    with (REFERENCE_DIR / name).open() as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason="shared reference tables not available")
@pytest.mark.parametrize("key", list(PUBLISHED_LAMBDA_L))
def test_packaged_tables_equal_reference_csv(key):
    """Every published g and F value (and CLRP g_P, phi_an) is packaged unchanged."""
    src = load_source(key)
    name, dataset = key.rsplit("_", 1)
    prefix = f"tg43_{name}_{dataset}"
    if dataset == "HEBD2012":
        rows = _read_reference_csv(f"{prefix}_gL.csv")
        np.testing.assert_array_equal(src.g_r_cm, [float(r["r_cm"]) for r in rows])
        np.testing.assert_array_equal(src.g_line, [float(r["gL_dimensionless"]) for r in rows])
    else:
        rows = _read_reference_csv(f"{prefix}_gL_gP.csv")
        np.testing.assert_array_equal(src.g_r_cm, [float(r["r_cm"]) for r in rows])
        np.testing.assert_array_equal(src.g_line, [float(r["gL_dimensionless"]) for r in rows])
        np.testing.assert_array_equal(src.g_point, [float(r["gP_dimensionless"]) for r in rows])
        rows = _read_reference_csv(f"{prefix}_phi_an.csv")
        if all(r["phi_an_dimensionless"].strip() for r in rows):
            np.testing.assert_array_equal(src.phi_r_cm, [float(r["r_cm"]) for r in rows])
            phi = [float(r["phi_an_dimensionless"]) for r in rows]
            np.testing.assert_array_equal(src.phi_an, phi)
        else:  # incomplete published phi_an (VS2000): no 1-D data rather than a made-up table
            assert src.phi_an is None and not src.has_1d
    rows = _read_reference_csv(f"{prefix}_F.csv")
    row_of = {t: i for i, t in enumerate(src.F_theta_deg)}
    col_of = {r: j for j, r in enumerate(src.F_r_cm)}
    assert len(rows) == src.F.size
    for row in rows:
        if row["F_dimensionless"].strip():
            i, j = row_of[float(row["theta_deg"])], col_of[float(row["r_cm"])]
            assert src.F[i, j] == float(row["F_dimensionless"]), row


# --------------------------------------------------------------------------- user files


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value)} to TOML")


def write_toml(doc: dict, path: Path) -> Path:
    """Tiny TOML writer for the source layout: top-level tables of scalars and (nested) lists."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def packaged_doc(key: str = "mHDR-v2_HEBD2012") -> dict:
    resource = resources.files("iortopt") / "data" / "sources" / f"{key}.toml"
    with resource.open("rb") as fh:
        return tomllib.load(fh)


def test_toml_writer_round_trips_a_packaged_file(tmp_path):
    doc = packaged_doc()
    again = tomllib.loads(write_toml(doc, tmp_path / "copy.toml").read_text())
    assert json.dumps(again, sort_keys=True) == json.dumps(doc, sort_keys=True)


def _drop_section(doc):
    del doc["anisotropy_function"]


def _drop_lambda(doc):
    del doc["source"]["dose_rate_constant_cGy_h-1_U-1"]


def _negative_lambda(doc):
    doc["source"]["dose_rate_constant_cGy_h-1_U-1"] = -1.10942


def _text_lambda(doc):
    doc["source"]["dose_rate_constant_cGy_h-1_U-1"] = "1.10942"


def _non_increasing_r(doc):
    r = doc["radial_dose_function"]["r_cm"]
    r[4], r[5] = r[5], r[4]


def _non_increasing_f_r(doc):
    doc["anisotropy_function"]["r_cm"][7] = doc["anisotropy_function"]["r_cm"][6]


def _f_missing_row(doc):
    doc["anisotropy_function"]["F"].pop()


def _f_short_row(doc):
    doc["anisotropy_function"]["F"][3].pop()


def _f_row_all_nan(doc):
    f = doc["anisotropy_function"]["F"]
    f[5] = [math.nan] * len(f[5])


def _g_not_normalised(doc):
    rad = doc["radial_dose_function"]
    rad["g_line"] = [1.05 * g for g in rad["g_line"]]


def _g_text(doc):
    doc["radial_dose_function"]["g_line"][3] = "n/a"


def _f_text(doc):
    doc["anisotropy_function"]["F"][2][2] = "abc"


def _g_wrong_length(doc):
    doc["radial_dose_function"]["g_line"].pop()


def _no_90_deg(doc):
    ani = doc["anisotropy_function"]
    i = ani["theta_deg"].index(90.0)
    ani["theta_deg"][i] = 91.0


MALFORMED = {
    # case: (edit, field the message must name, words of the problem)
    "missing_section": (_drop_section, "[anisotropy_function]", "missing"),
    "missing_lambda": (_drop_lambda, "dose_rate_constant_cGy_h-1_U-1", "positive number"),
    "negative_lambda": (_negative_lambda, "dose_rate_constant_cGy_h-1_U-1", "positive number"),
    "text_lambda": (_text_lambda, "dose_rate_constant_cGy_h-1_U-1", "positive number"),
    "non_increasing_g_r": (_non_increasing_r, "[radial_dose_function] r_cm", "increasing"),
    "non_increasing_f_r": (_non_increasing_f_r, "[anisotropy_function] r_cm", "increasing"),
    "F_missing_row": (_f_missing_row, "[anisotropy_function] F", "shape"),
    "F_short_row": (_f_short_row, "[anisotropy_function] F", ""),
    "F_row_all_nan": (_f_row_all_nan, "[anisotropy_function] F", "theta = 10.0"),
    "g_not_normalised": (_g_not_normalised, "[radial_dose_function] g_line", "1.05"),
    "g_text": (_g_text, "[radial_dose_function] g_line", "number"),
    "F_text": (_f_text, "[anisotropy_function] F", "number"),
    "g_wrong_length": (_g_wrong_length, "[radial_dose_function] g_line", "values"),
    "no_90_deg": (_no_90_deg, "[anisotropy_function] theta_deg", "90"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_source_file_is_rejected_naming_file_and_field(case, tmp_path):
    edit, field, problem = MALFORMED[case]
    doc = packaged_doc()
    edit(doc)
    path = write_toml(doc, tmp_path / f"{case}.toml")
    for loader in (load_source_file, load_source):
        with pytest.raises(SourceDataError) as info:
            loader(str(path))
        message = str(info.value)
        assert str(path) in message
        assert field in message
        assert problem in message


def test_invalid_toml_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[source]\nname = "mHDR-v2\n[radial_dose_function\n')
    with pytest.raises(SourceDataError) as info:
        load_source(str(path))
    assert str(path) in str(info.value) and "TOML" in str(info.value)


def test_nonexistent_file_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "missing" / "source.toml"
    for loader in (load_source_file, load_source):
        with pytest.raises(SourceDataError) as info:
            loader(str(path))
        assert str(path) in str(info.value) and "not found" in str(info.value)


def test_parse_source_names_the_origin():
    doc = packaged_doc()
    del doc["radial_dose_function"]
    with pytest.raises(SourceDataError, match=r"^my-origin: \[radial_dose_function\]"):
        parse_source(doc, "my-origin")


def test_valid_user_file_gives_the_packaged_dose(tmp_path):
    path = write_toml(packaged_doc(), tmp_path / "commissioned.toml")
    user = load_source(str(path))
    packaged = load_source("mHDR-v2_HEBD2012")
    assert user.path == str(path)
    for name in ("name", "dataset", "dose_rate_constant", "active_length_cm", "half_life_days"):
        assert getattr(user, name) == getattr(packaged, name)
    for name in ("g_r_cm", "g_line", "F_theta_deg", "F_r_cm", "F"):
        np.testing.assert_array_equal(getattr(user, name), getattr(packaged, name))
    z = jnp.array([0.0, 0.3, -2.0, 4.5, 7.0, 0.0])
    y = jnp.array([1.0, 0.2, 1.5, 0.0, 6.0, 12.0])
    np.testing.assert_array_equal(
        np.asarray(dose_rate_per_sk(z, y, make_kernel(user, dtype=jnp.float64))),
        np.asarray(dose_rate_per_sk(z, y, make_kernel(packaged, dtype=jnp.float64))),
    )


def test_one_d_formalism_needs_one_d_data():
    with pytest.raises(ValueError, match="1-D"):
        make_kernel(load_source("mHDR-v2_HEBD2012"), formalism="1d")
    make_kernel(load_source("mHDR-v2_CLRP"), formalism="1d")  # CLRP carries g_P and phi_an
    with pytest.raises(ValueError, match="formalism"):
        make_kernel(load_source("mHDR-v2_CLRP"), formalism="3d")
