"""The settings a modality hands to the later stages (iortopt.modalities.stage_settings): taken
from the config field by field, so that evaluation, outputs and DICOM export never see it."""

from __future__ import annotations

import numpy as np
import pytest

from iortopt.cases.case import Case, Structure
from iortopt.config import parse_config
from iortopt.errors import ConfigError
from iortopt.grid import Grid
from iortopt.modalities import stage_settings
from iortopt.outputs.plan_files import GoalSpec, check_structure_names, evaluate_plan

DOC = {
    "prescription": {"structure": "CTV", "dose_gy": 12.0, "n_fractions": 2},
    "objectives": [
        {"type": "underdose", "structure": "CTV", "dose_gy": 12.0, "weight": 1.0},
        {"type": "max_dose", "structure": "bowel", "dose_gy": 12.0, "weight": 1.0},
    ],
    "goals": [
        {"structure": "CTV", "metric": "D90_gy", "op": ">=", "value": 10.0},
        {"structure": "bowel", "metric": "max_gy", "op": "<=", "value": 12.0},
    ],
    "radiobiology": {"alpha_beta_gy": {"CTV": 10.0, "bowel": 3.0}},
    "output": {"isodose_percent": [50.0, 100.0]},
}


def small_case() -> Case:
    grid = Grid((2, 3, 4), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    ctv = np.zeros(grid.shape_zyx, np.float32)
    ctv[0] = 1.0
    bowel = np.zeros(grid.shape_zyx, np.float32)
    bowel[1] = 1.0
    return Case("small", grid, (Structure("CTV", "target", ctv), Structure("bowel", "oar", bowel)))


def test_settings_are_the_config_fields():
    cfg = parse_config(DOC)
    ev = stage_settings.evaluation_settings(cfg)
    assert (ev.prescription_gy, ev.prescription_structure, ev.n_fractions) == (12.0, "CTV", 2)
    assert ev.goals == (
        GoalSpec("CTV", "D90_gy", ">=", 10.0),
        GoalSpec("bowel", "max_gy", "<=", 12.0),
    )
    assert ev.alpha_beta_gy == {"CTV": 10.0, "bowel": 3.0}
    out = stage_settings.output_settings(cfg)
    assert (out.plan_name, out.modality, out.isodose_percent) == ("plan", "hdr_flap", (50.0, 100.0))
    assert out.config_json == cfg.model_dump(mode="json")
    info = stage_settings.dicom_plan_info(cfg)
    assert (info.prescription_gy, info.prescription_structure, info.n_fractions) == (12.0, "CTV", 2)


def test_structure_references_name_every_field_in_order():
    cfg = parse_config(DOC)
    assert stage_settings.structure_references(cfg) == [
        ("prescription.structure", "CTV"),
        ("objectives[0].structure", "CTV"),
        ("objectives[1].structure", "bowel"),
        ("goals[0].structure", "CTV"),
        ("goals[1].structure", "bowel"),
        ("radiobiology.alpha_beta_gy.CTV", "CTV"),
        ("radiobiology.alpha_beta_gy.bowel", "bowel"),
    ]
    assert stage_settings.goal_metrics(cfg) == [
        ("goals[0].metric", "D90_gy"),
        ("goals[1].metric", "max_gy"),
    ]
    stage_settings.check_config_names(cfg, small_case())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["objectives"][1].update(structure="liver"), "objectives[1].structure"),
        (lambda d: d["goals"][1].update(metric="D5_gy"), "goals[1].metric"),
        (lambda d: d["radiobiology"].update(alpha_beta_gy={"rectum": 3.0}), "alpha_beta_gy"),
    ],
)
def test_unknown_names_are_refused_naming_the_field(change, field):
    import copy

    doc = copy.deepcopy(DOC)
    change(doc)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        stage_settings.check_config_names(parse_config(doc), small_case())


def test_check_structure_names_without_a_config():
    with pytest.raises(ConfigError, match=r"^where\.it\.is: unknown structure 'lung'"):
        check_structure_names(small_case(), [("where.it.is", "lung")], [])


def test_evaluate_plan_from_settings():
    cfg = parse_config(DOC)
    case = small_case()
    dose = np.where(case.structure("CTV").occupancy > 0, 13.0, 4.0).astype(np.float32)
    ev = evaluate_plan(stage_settings.evaluation_settings(cfg), case, dose)
    assert [g["met"] for g in ev["goals"]] == [True, True]
    assert ev["goals"][0] | {"value": None} == {
        "structure": "CTV", "metric": "D90_gy", "op": ">=", "limit": 10.0, "value": None,
        "met": True,
    }  # fmt: skip
    assert set(ev["radiobiology"]) == {"CTV", "bowel"}
    assert ev["radiobiology"]["bowel"]["n_fractions"] == 2
