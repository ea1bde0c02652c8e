"""Inputs that are finite and make a plan: non-finite numbers, empty or objective-less configs,
implausible decay, malformed data files, non-finite results and config errors naming their file."""

import numpy as np
import pytest
from typer.testing import CliRunner

from iortopt.cli import app
from iortopt.config import builtin_config_text, load_config, parse_config
from iortopt.errors import ConfigError, SourceDataError

runner = CliRunner()

SHIELD = '[[shields]]\nname = "s"\nsurface = "behind_flap"\nsizes_mm = [[40.0, 30.0]]\n'
DICOM = (
    '[case]\nkind = "dicom"\n[case.dicom]\nct_folder = "ct"\nstructures = {{CTV = {{roi = "C"}}}}\n'
)
XRAY = '[plan]\nmodality = "xray_sphere"\n[case]\nkind = "builtin_breast"\n'
ELECTRON = '[plan]\nmodality = "electron"\n[case]\nkind = "builtin_eliot"\n'

# (config text with {v} where the number goes, the dotted field the error must name)
FLOAT_FIELDS = [
    ("[source]\nair_kerma_strength_U = {v}\n", "source.air_kerma_strength_U"),
    ("[applicator]\nstep_mm = {v}\n", "applicator.step_mm"),
    ("[applicator]\nactive_margin_mm = {v}\n", "applicator.active_margin_mm"),
    ("[applicator]\nmax_dwell_time_s = {v}\n", "applicator.max_dwell_time_s"),
    ("[applicator]\nsource_to_surface_mm = {v}\n", "applicator.source_to_surface_mm"),
    (
        "[applicator]\ncatheters_mm = [[[0.0, 0.0, {v}], [0.0, 0.0, 10.0]]]\n",
        "applicator.catheters_mm",
    ),
    ("[prescription]\ndose_gy = {v}\n", "prescription.dose_gy"),
    (
        '[[objectives]]\ntype = "underdose"\nstructure = "CTV"\ndose_gy = {v}\n',
        "objectives.0.dose_gy",
    ),
    (
        '[[objectives]]\ntype = "underdose"\nstructure = "CTV"\ndose_gy = 1\nweight = {v}\n',
        "objectives.0.weight",
    ),
    (
        '[[objectives]]\ntype = "dvh_min"\nstructure = "CTV"\ndose_gy = 1\nvolume_cc = {v}\n',
        "objectives.0.volume_cc",
    ),
    (
        '[[objectives]]\ntype = "dvh_min"\nstructure = "CTV"\ndose_gy = 1\nvolume_percent = {v}\n',
        "objectives.0.volume_percent",
    ),
    (
        '[[goals]]\nstructure = "CTV"\nmetric = "D90_gy"\nop = ">="\nvalue = {v}\n',
        "goals.0.value",
    ),
    ("[optimizer]\ntolerance = {v}\n", "optimizer.tolerance"),
    ("[optimizer]\nlearning_rate = {v}\n", "optimizer.learning_rate"),
    ("[optimizer]\nvoxel_margin_mm = {v}\n", "optimizer.voxel_margin_mm"),
    ("[optimizer]\ninfluence_memory_mb = {v}\n", "optimizer.influence_memory_mb"),
    (XRAY + "[xray]\nprescription_depth_mm = {v}\n", "xray.prescription_depth_mm"),
    (XRAY + "[xray]\ncatalogue_diameters_cm = [3.0, {v}]\n", "xray.catalogue_diameters_cm"),
    (XRAY + "[xray]\nmin_skin_distance_mm = {v}\n", "xray.min_skin_distance_mm"),
    (XRAY + "[xray]\nanisotropy = {v}\n", "xray.anisotropy"),
    (XRAY + "[xray]\ncentre_mm = [0.0, {v}, 0.0]\n", "xray.centre_mm"),
    (XRAY + "[xray]\ncavity_radius_mm = {v}\n", "xray.cavity_radius_mm"),
    (XRAY + "[xray]\ntarget_thickness_mm = {v}\n", "xray.target_thickness_mm"),
    (XRAY + "[xray]\nfit_tolerance_mm = {v}\n", "xray.fit_tolerance_mm"),
    (ELECTRON + "[electron]\nisodose_percent = {v}\n", "electron.isodose_percent"),
    (ELECTRON + "[electron]\nenergies_mev = [{v}]\n", "electron.energies_mev"),
    (ELECTRON + "[electron]\ncone_diameters_cm = [{v}]\n", "electron.cone_diameters_cm"),
    (ELECTRON + "[electron]\nbevels_deg = [{v}]\n", "electron.bevels_deg"),
    (ELECTRON + "[electron]\ntoe_direction = [0.0, {v}, 0.0]\n", "electron.toe_direction"),
    (ELECTRON + "[electron]\nmax_axis_tilt_deg = {v}\n", "electron.max_axis_tilt_deg"),
    (ELECTRON + "[electron]\ndisc_radius_mm = {v}\n", "electron.disc_radius_mm"),
    (ELECTRON + "[electron]\ndisc_margin_mm = {v}\n", "electron.disc_margin_mm"),
    (ELECTRON + "[electron]\ndisc_edge_mm = {v}\n", "electron.disc_edge_mm"),
    (ELECTRON + "[electron]\noar_weight = {v}\n", "electron.oar_weight"),
    (ELECTRON + "[electron]\nmax_shift_mm = {v}\n", "electron.max_shift_mm"),
    (ELECTRON + "[electron]\nmax_air_gap_mm = {v}\n", "electron.max_air_gap_mm"),
    (ELECTRON + "[electron]\nmax_tilt_deg = {v}\n", "electron.max_tilt_deg"),
    (ELECTRON + "[electron]\nmax_disc_shift_mm = {v}\n", "electron.max_disc_shift_mm"),
    (ELECTRON + "[electron]\nmax_disc_tilt_deg = {v}\n", "electron.max_disc_tilt_deg"),
    (ELECTRON + "[electron]\ncone_end_mm = [0.0, {v}, 0.0]\n", "electron.cone_end_mm"),
    (ELECTRON + "[electron]\ncone_axis = [0.0, {v}, 1.0]\n", "electron.cone_axis"),
    (ELECTRON + "[electron]\ndisc_centre_mm = [{v}, 0.0, 0.0]\n", "electron.disc_centre_mm"),
    (ELECTRON + "[electron]\ndisc_normal = [0.0, 0.0, {v}]\n", "electron.disc_normal"),
    (SHIELD + "thickness_mm = {v}\n", "shields.0.thickness_mm"),
    (SHIELD.replace("40.0", "{v}"), "shields.0.sizes_mm"),
    (SHIELD + "range_u_mm = [0.0, {v}]\n", "shields.0.range_u_mm"),
    (SHIELD + "range_v_mm = [{v}, 0.0]\n", "shields.0.range_v_mm"),
    (SHIELD + "rotation_deg = {v}\n", "shields.0.rotation_deg"),
    (SHIELD + "rotation_range_deg = [0.0, {v}]\n", "shields.0.rotation_range_deg"),
    (SHIELD + "min_target_distance_mm = {v}\n", "shields.0.min_target_distance_mm"),
    (SHIELD + "edge_mm = {v}\n", "shields.0.edge_mm"),
    ('[pareto]\nobjectives = ["CTV", "bowel"]\nlearning_rate = {v}\n', "pareto.learning_rate"),
    ("[robust]\ntemperature = {v}\n", "robust.temperature"),
    ("[robust]\ncvar_alpha = {v}\n", "robust.cvar_alpha"),
    ("[robust]\nband_percent = [10.0, {v}]\n", "robust.band_percent"),
    ("[robust]\nmagnitudes = {{CTV = {v}}}\n", "robust.magnitudes.CTV"),
    (
        '[[shields]]\nname = "p"\nsurface = "plane"\nsizes_mm = [[40.0, 30.0]]\n'
        "origin_mm = [0.0, {v}, 0.0]\nnormal = [0.0, 1.0, 0.0]\naxis_u = [1.0, 0.0, 0.0]\n",
        "shields.0.origin_mm",
    ),
    (
        '[[shields]]\nname = "p"\nsurface = "plane"\nsizes_mm = [[40.0, 30.0]]\n'
        "origin_mm = [0.0, 0.0, 0.0]\nnormal = [{v}, 1.0, 0.0]\naxis_u = [1.0, 0.0, 0.0]\n",
        "shields.0.normal",
    ),
    (
        '[[shields]]\nname = "p"\nsurface = "plane"\nsizes_mm = [[40.0, 30.0]]\n'
        "origin_mm = [0.0, 0.0, 0.0]\nnormal = [0.0, 1.0, 0.0]\naxis_u = [1.0, 0.0, {v}]\n",
        "shields.0.axis_u",
    ),
    (
        '[[shields]]\nname = "c"\nsurface = "cylinder"\nsizes_mm = [[40.0, 30.0]]\n'
        "origin_mm = [0.0, 0.0, 0.0]\nnormal = [0.0, 1.0, 0.0]\naxis_u = [1.0, 0.0, 0.0]\n"
        "radius_mm = {v}\n",
        "shields.0.radius_mm",
    ),
    (
        '[[shields]]\nname = "r"\nsurface = "roi"\nroi = "bowel"\nsizes_mm = [[40.0, 30.0]]\n'
        "fit_radius_mm = {v}\n",
        "shields.0.fit_radius_mm",
    ),
    ("[radiobiology]\nalpha_beta_gy = {{CTV = {v}}}\n", "radiobiology.alpha_beta_gy.CTV"),
    ("[output]\nisodose_percent = [50.0, {v}]\n", "output.isodose_percent"),
    ("[compute]\nmemory_limit_mb = {v}\n", "compute.memory_limit_mb"),
    ("[compute]\nsafety_fraction = {v}\n", "compute.safety_fraction"),
    (DICOM + "margin_mm = {v}\n", "case.dicom.margin_mm"),
    (DICOM + "spacing_mm = {v}\n", "case.dicom.spacing_mm"),
    (DICOM + "spacing_mm = [2.0, 2.0, {v}]\n", "case.dicom.spacing_mm"),
]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("text, field", FLOAT_FIELDS, ids=[f for _, f in FLOAT_FIELDS])
def test_non_finite_float_refused_naming_the_field(tmp_path, text, field, value):
    path = tmp_path / "plan.toml"
    path.write_text(text.format(v=value))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and field in message, message


def test_every_float_field_of_the_config_is_covered():
    """Every float leaf of PlanConfig appears in FLOAT_FIELDS (new fields get tested too)."""
    import typing

    from pydantic import BaseModel

    from iortopt.config import PlanConfig

    def float_leaves(model, prefix):
        for name, info in model.model_fields.items():
            yield from walk(info.annotation, f"{prefix}{name}")

    def walk(tp, where):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            yield from float_leaves(tp, f"{where}.")
        elif tp is float:
            yield where
        else:
            for arg in typing.get_args(tp):
                yield from walk(arg, where)

    covered = {f.replace(".0.", ".").removesuffix(".CTV") for _, f in FLOAT_FIELDS}
    leaves = set(float_leaves(PlanConfig, ""))
    assert len(leaves) > 40
    assert leaves - covered == set()


def test_mixed_utc_offset_dates_refused():
    doc = {"source": {"calibration": "x", "treatment": "y"}}
    import datetime as dt

    doc["source"]["calibration"] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    doc["source"]["treatment"] = dt.datetime(2026, 1, 5)
    with pytest.raises(ConfigError, match="UTC offset"):
        parse_config(doc)


def test_empty_active_list_refused():
    with pytest.raises(ConfigError, match="applicator.active"):
        parse_config({"applicator": {"active": []}})


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_config_file_exits_2_saying_what_is_needed(tmp_path, text):
    cfg = tmp_path / "empty.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "defines no plan" in res.output
    assert not out.exists()
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}: ")
    assert "[plan]" in str(err.value) and "[[objectives]]" in str(err.value)


def small_flap_text(extra_top: str = "", extra: str = "") -> str:
    text = builtin_config_text()
    text = text.replace("spacing_mm = 2.0 ", "spacing_mm = 4.0 ", 1)
    text = text.replace("n_catheters = 8 ", "n_catheters = 4 ", 1)
    text = text.replace("[case.flap]", "[case.flap]\nsupersampling = 2", 1)
    text = text.replace("max_iterations = 300", "max_iterations = 3")
    return extra_top + text + extra


def small_flap_doc(**sections) -> dict:
    import tomllib

    doc = tomllib.loads(small_flap_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            doc.setdefault(key, {}).update(value)
        else:
            doc[key] = value
    return doc


def test_hdr_plan_without_objectives_exits_2(tmp_path):
    text = small_flap_text().split("# Objective terms")[0]
    cfg = tmp_path / "plan.toml"
    cfg.write_text("objectives = []\n" + text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "objectives" in res.output and "weight > 0" in res.output
    assert not out.exists()


def test_hdr_plan_with_only_zero_weights_refused():
    import jax.numpy as jnp

    from iortopt.pipeline import prepare_modality

    doc = small_flap_doc()
    doc["objectives"] = [dict(o, weight=0.0) for o in doc["objectives"]]
    with pytest.raises(ConfigError, match="every weight is 0"):
        prepare_modality(parse_config(doc), jnp.float32)


def test_centuries_old_calibration_refused_with_both_dates():
    import jax.numpy as jnp

    from iortopt.pipeline import prepare_modality

    doc = small_flap_doc(source={"calibration": "x", "treatment": "y"})
    import datetime as dt

    doc["source"]["calibration"] = dt.datetime(1826, 11, 1, 8, 0)
    doc["source"]["treatment"] = dt.datetime(2026, 11, 23, 10, 0)
    with pytest.raises(ConfigError) as err:
        prepare_modality(parse_config(doc), jnp.float32)
    message = str(err.value)
    assert "source.calibration" in message
    assert "1826-11-01T08:00:00" in message and "2026-11-23T10:00:00" in message


def test_usual_decay_still_accepted():
    import datetime as dt

    import jax.numpy as jnp

    from iortopt.pipeline import prepare_modality

    doc = small_flap_doc()
    doc["source"]["calibration"] = dt.datetime(2026, 9, 1)
    doc["source"]["treatment"] = dt.datetime(2026, 11, 23)  # 83 days, about 46 %
    prepared = prepare_modality(parse_config(doc), jnp.float32)
    assert 0.4 < prepared.sk_U / 40700.0 < 0.5


def test_prepare_error_names_the_config_file(tmp_path):
    import jax.numpy as jnp

    from iortopt.pipeline import prepare

    cfg = tmp_path / "plan.toml"
    cfg.write_text(
        small_flap_text(
            extra='[[goals]]\nstructure = "liver"\nmetric = "D90_gy"\nop = ">="\nvalue = 1\n'
        )
    )
    with pytest.raises(ConfigError) as err:
        prepare(load_config(cfg), jnp.float32)
    message = str(err.value)
    assert message.startswith(f"{cfg}: ") and "goals[" in message and "liver" in message


def _dwells_csv(tmp_path):
    path = tmp_path / "dwells.csv"
    path.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s\n0,0,0,0,0,1,10\n")
    return path


@pytest.mark.parametrize(
    "option, value",
    [("--sk", "nan"), ("--sk", "inf"), ("--spacing-mm", "inf"), ("--margin-mm", "nan")],
)
def test_dose_refuses_non_finite_options(tmp_path, option, value):
    out = tmp_path / "dose.zarr"
    res = runner.invoke(app, ["dose", str(_dwells_csv(tmp_path)), "--out", str(out), option, value])
    assert res.exit_code == 2, res.output
    assert option in res.output and "finite" in res.output
    assert not out.exists()


def _source_doc():
    import tomllib
    from importlib import resources

    path = resources.files("iortopt") / "data" / "sources" / "Flexisource_CLRP.toml"
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("value", [1, True, "table", [1.0, 2.0]])
@pytest.mark.parametrize(
    "section", ["source", "radial_dose_function", "anisotropy_function", "anisotropy_factor_1d"]
)
def test_source_section_that_is_not_a_table(section, value):
    from iortopt.physics.sources import parse_source

    doc = _source_doc()
    doc[section] = value
    with pytest.raises(SourceDataError) as err:
        parse_source(doc, "my_source.toml")
    message = str(err.value)
    assert message.startswith("my_source.toml: ") and f"[{section}]" in message
    assert "expected a table" in message


@pytest.mark.parametrize("key", ["isotope", "citation"])
def test_source_text_field_must_be_a_string(key):
    from iortopt.physics.sources import parse_source

    doc = _source_doc()
    doc["source"][key] = float("inf")
    with pytest.raises(SourceDataError, match=f"source\\] {key}"):
        parse_source(doc, "my_source.toml")


@pytest.mark.parametrize("density", [float("inf"), float("nan"), "heavy", -1.0])
def test_shield_material_density_must_be_a_finite_positive_number(density):
    import tomllib
    from importlib import resources

    from iortopt.physics.shield_materials import parse_shield_materials

    path = resources.files("iortopt") / "data" / "shields" / "generic_shield_materials.toml"
    doc = tomllib.loads(path.read_text())
    doc["material"][0]["density_g_cm3"] = density
    with pytest.raises(SourceDataError, match="density_g_cm3"):
        parse_shield_materials(doc, "materials.toml")


def test_non_finite_optimised_result_exits_1_writing_nothing(tmp_path, monkeypatch):
    import iortopt.optimisation.optax_loop as optimize

    real = optimize.minimise

    def nan_minimise(*args, **kwargs):
        result = real(*args, **kwargs)
        result.times_s = np.full_like(np.asarray(result.times_s), np.nan)
        return result

    monkeypatch.setattr(optimize, "minimise", nan_minimise)
    cfg = tmp_path / "plan.toml"
    cfg.write_text(small_flap_text())
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "plan failed" in res.output and "not finite" in res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.toml"]


def test_result_check_names_the_non_finite_quantity():
    from iortopt.errors import IortoptError, PlanFailedError
    from iortopt.outputs.result_checks import check_result_finite

    dose = np.ones((2, 2, 2), np.float32)
    times = np.array([1.0, np.inf, 2.0])
    with pytest.raises(PlanFailedError, match=r"dwells/times_s \(1 of 3 values\)") as err:
        check_result_finite(dose, {"dwells": {"times_s": times}}, {})
    assert not isinstance(err.value, IortoptError)  # the CLI exits 1, not 2
    with pytest.raises(PlanFailedError, match="objective"):
        check_result_finite(dose, {}, {"objective": float("nan")})
    check_result_finite(dose, {"dwells": {"times_s": times[[0, 2]], "catheter": [1, 2]}}, {})
