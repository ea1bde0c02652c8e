"""``applicator.from_rtplan``: a DICOM case takes its catheters and dwells from a clinical RTPLAN,
re-optimises the dwell times and reports both plans; the clinical dose is checked against the
independent TG-43 of tests/brachy_plans.py."""

from __future__ import annotations

import json
import tomllib

import jax.numpy as jnp
import numpy as np
import pytest

from brachy_plans import build_plan, channel_spec, tg43_dose_gy
from iortopt.config import parse_config
from iortopt.dicom.synthetic import example_config_toml, write_synthetic_study
from iortopt.errors import ConfigError
from iortopt.pipeline import execute, prepare


def _config(study, rtplan, **source):
    doc = tomllib.loads(example_config_toml(study, "replan"))
    del doc["applicator"]["catheters_mm"]
    doc["applicator"]["from_rtplan"] = str(rtplan)
    doc["case"]["dicom"]["spacing_mm"] = 4.0
    doc["optimizer"]["max_iterations"] = 15
    doc["output"]["dicom"] = False
    doc["source"] |= source
    return parse_config(doc)


@pytest.fixture(scope="module")
def replanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("replan")
    study = write_synthetic_study(
        root / "study", n_pixels=40, pixel_mm=2.5, n_slices=20, slice_mm=4.0
    )
    channels = []
    for catheter in study.catheters_mm[1:4]:
        (x0, y, z), _ = catheter
        positions = [[x, y, z] for x in (-10.0, -5.0, 0.0, 5.0, 10.0)]
        channels.append(channel_spec(positions, [4.0, 6.0, 8.0, 6.0, 4.0]))
    rtplan = root / "RP.dcm"
    build_plan(
        channels,
        manufacturer="Nucletron",
        model="mHDR-v2r",
        sk_U=40700.0,
        study_uid=study.study_uid,
        frame_uid=study.frame_of_reference_uid,
    ).save_as(rtplan, enforce_file_format=True)
    prepared = prepare(_config(study, rtplan), jnp.float32)
    result = execute(prepared, root / "out")
    summary = json.loads((root / "out" / "summary.json").read_text())
    return study, rtplan, channels, prepared, result, summary


def test_dwells_come_from_the_rtplan(replanned):
    _, _, channels, prepared, _, summary = replanned
    expected = np.concatenate([c["positions"] for c in channels])
    np.testing.assert_allclose(prepared.all_dwells.positions_mm, expected)
    np.testing.assert_allclose(prepared.all_dwells.axes, np.tile([-1.0, 0, 0], (15, 1)), atol=1e-12)
    assert len(prepared.dwells) == 15 and summary["n_dwells_total"] == 15


def test_both_plans_side_by_side_and_clinical_dose_independent(replanned):
    _, rtplan, channels, prepared, _, summary = replanned
    both = summary["from_rtplan"]
    assert both["rtplan"] == str(rtplan)
    assert both["clinical"]["total_treatment_time_s"] == pytest.approx(3 * 28.0)
    assert both["clinical"]["air_kerma_strength_U"] == 40700.0
    assert both["reoptimised"]["metrics"] == summary["metrics"]
    # the clinical plan's CTV mean dose from the independent TG-43 on the CTV voxels
    case = prepared.case
    ctv = case.structure("CTV").occupancy
    inside = np.argwhere(ctv > 0)
    points = case.grid.index_to_mm(inside)
    positions = np.concatenate([c["positions"] for c in channels])
    times = np.concatenate([c["times"] for c in channels])
    axes = np.tile([-1.0, 0.0, 0.0], (len(times), 1))
    dose = tg43_dose_gy(points, positions, axes, times, 40700.0, "mHDR-v2_HEBD2012")
    weights = ctv[tuple(inside.T)]
    expected = float(np.dot(dose, weights) / weights.sum())
    assert both["clinical"]["metrics"]["CTV"]["mean_gy"] == pytest.approx(expected, rel=5e-3)


def test_source_model_mismatch_and_builtin_case_refused(replanned):
    study, rtplan, _, _, _, _ = replanned
    with pytest.raises(ConfigError, match="source.model.*mHDR-v2r"):
        prepare(_config(study, rtplan, model="GammaMedPlus"), jnp.float32)
    with pytest.raises(ConfigError, match="catheters_mm or from_rtplan"):
        parse_config(
            {"applicator": {"from_rtplan": "RP.dcm", "catheters_mm": [[[0, 0, 0], [1, 0, 0]]]}}
        )
