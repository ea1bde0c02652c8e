"""Reading clinical-style brachy RTPLANs (iortopt.dicom.rtplan_reader): vendor conventions,
dwell times, source axes, PDR, dates, source mapping and every refusal."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from brachy_plans import (
    FRAME_UID as FRAME,
)
from brachy_plans import (
    STUDY_UID as STUDY,
)
from brachy_plans import (
    build_plan,
    channel_spec,
    write_rtstruct,
)
from iortopt.dicom.rtplan_reader import (
    model_of,
    normalise_isotope,
    read_brachy_plan,
    resolve_source,
    tps_point_dose_gy,
)
from iortopt.errors import ConfigError, InputFileError, SourceDataError

#: A bent applicator path (tip first): two segments.
BENT = np.array([[10.0, -5.0, 20.0], [10.0, 5.0, 0.0], [10.0, 5.0, -30.0]])
STRAIGHT = np.array([[-10.0, 0.0, 20.0], [-10.0, 0.0, -30.0]])


def _save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtplan_reader")
    rs = root / "RS.dcm"
    write_rtstruct(
        rs,
        [(10, "app A", "path", BENT), (11, "app B", "path", STRAIGHT)],
        study_uid=STUDY,
        frame_uid=FRAME,
    )
    on_bent = np.array([[10.0, -3.0, 16.0], [10.0, 1.0, 8.0], [10.0, 5.0, -5.0]])
    on_straight = np.array([[-10.0, 0.0, 10.0], [-10.0, 0.0, 5.0]])
    oncentra = build_plan(
        [
            channel_spec(on_bent, [3.0, 4.0, 5.0], afterloader_id="7"),
            channel_spec(on_straight, [6.0, 0.0], roi_number=11, applicator_id="needle 2"),
        ],
        embedded_paths={3: BENT},
        manufacturer="Nucletron B.V.",
        model="mHDR-v2r",
        points=[("A", (0.0, 0.0, 5.0))],
        point_doses=[[1.0], [2.0]],
        fractions=2,
        setup_dose_gy=7.0,
    )
    orient = np.tile([0.0, 0.6, 0.8], (2, 1))
    varian = build_plan(
        [
            channel_spec(
                [[0, 0, 0], [0, 3, 4]], [2.0, 3.0], orientation=orient, weights_scale=0.01
            ),
            channel_spec([[20, 0, 0]], [4.0], orientation=[[1.0, 0.0, 0.0]]),
        ],
        manufacturer="Varian Medical Systems",
        model="GammaMed Plus",
        points=[("P1", (5.0, 5.0, 5.0))],
        point_doses=[[1.5], [0.5]],
        encoding="target",
    )
    pdr = build_plan(
        [
            channel_spec(
                [[0, 0, 0], [0, 0, -5], [0, 0, -10]], [1.0, 2.0, 1.0], pulses=5, interval_s=3600.0
            ),
            channel_spec([[15, 0, 0]], [2.0], pulses=5, interval_s=3600.0),
        ],
        manufacturer="Eckert & Ziegler BEBIG",
        model="Ir2.A85-2",
        treatment_type="PDR",
        sk_U=4000.0,
        points=[("R", (10.0, 0.0, -5.0))],
        point_doses=[[0.2], [0.1]],
        setup_dose_gy=0.5,
    )
    relative = build_plan(
        [channel_spec(STRAIGHT[:1], [5.0], relative_mm=[12.5], no_3d=True, roi_number=11)],
        manufacturer="Nucletron",
        model="mHDR-v2",
    )
    out = {"rs": rs}
    for name, ds in (("oncentra", oncentra), ("varian", varian), ("pdr", pdr), ("rel", relative)):
        out[name] = _save(ds, root / f"{name}.dcm")
    return out


def test_oncentra_embedded_applicators_and_roi_give_the_axes(files):
    plan = read_brachy_plan(files["oncentra"], files["rs"])
    assert plan.vendor == "oncentra" and plan.treatment_type == "HDR"
    a, b = plan.channels
    assert a.axis_rules == ("applicator",) * 3 and b.axis_rules == ("applicator",)  # 0 s dropped
    seg1 = (BENT[0] - BENT[1]) / np.linalg.norm(BENT[0] - BENT[1])
    seg2 = (BENT[1] - BENT[2]) / np.linalg.norm(BENT[1] - BENT[2])
    np.testing.assert_allclose(a.axes, [seg1, seg1, seg2], atol=1e-12)
    np.testing.assert_allclose(b.axes, [[0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(a.times_s, [3, 4, 5])
    assert a.afterloader_channel_id == "7" and b.source_applicator_id == "needle 2"
    assert plan.source.sk_U == 40000.0 and plan.sk_tps_U == 40000.0
    assert plan.source.reference_datetime == dt.datetime(2026, 3, 1, 8)
    assert plan.plan_datetime == dt.datetime(2026, 3, 5, 9, 30)
    assert plan.warnings == ()
    dose, how = tps_point_dose_gy(plan, plan.dose_references[0])
    assert how == "coefficient" and dose == pytest.approx((1.0 + 2.0) * 2)


def test_without_the_rtstruct_the_neighbouring_dwells_give_the_axes(files):
    plan = read_brachy_plan(files["oncentra"])
    a, b = plan.channels
    assert a.axis_rules == ("applicator",) * 3  # the embedded path still holds channel 1
    assert b.axis_rules == ("neighbours",)
    np.testing.assert_allclose(b.axes, [[0, 0, 1]], atol=1e-12)


def test_neighbouring_dwells_give_the_axes(tmp_path):
    p = np.array([[10.0, -3.0, 16.0], [10.0, 1.0, 8.0], [10.0, 5.0, -5.0]])
    ds = build_plan([channel_spec(p, [1.0, 1.0, 1.0])], manufacturer="x", model="mHDR-v2")
    a = read_brachy_plan(_save(ds, tmp_path / "RP.dcm")).channels[0]
    assert a.axis_rules == ("neighbours",) * 3
    expected = [p[0] - p[1], p[0] - p[2], p[1] - p[2]]
    expected = [v / np.linalg.norm(v) for v in expected]
    np.testing.assert_allclose(a.axes, expected, atol=1e-12)


def test_control_point_orientation_wins_and_final_weight_normalises(files):
    plan = read_brachy_plan(files["varian"], files["rs"])
    assert plan.vendor == "brachyvision"
    a, b = plan.channels
    assert a.axis_rules == ("orientation", "orientation") and b.axis_rules == ("orientation",)
    np.testing.assert_allclose(a.axes, [[0, 0.6, 0.8]] * 2)
    np.testing.assert_allclose(a.times_s, [2.0, 3.0])  # weights were 0.01 x seconds
    dose, how = tps_point_dose_gy(plan, plan.dose_references[0])
    assert how == "target_prescription_dose" and dose == pytest.approx(2.0)


def test_pdr_pulses_and_single_dwell_fallback(files):
    plan = read_brachy_plan(files["pdr"])
    assert plan.vendor == "sagiplan" and plan.treatment_type == "PDR"
    a, b = plan.channels
    assert a.n_pulses == 5 and a.pulse_interval_s == 3600.0
    np.testing.assert_allclose(a.axes, [[0, 0, 1]] * 3)  # towards the first dwell
    assert b.axis_rules == ("fallback",)
    assert any("channel 2" in w and "single dwell" in w for w in plan.warnings)
    dose, _ = tps_point_dose_gy(plan, plan.dose_references[0])
    assert dose == pytest.approx((0.2 + 0.1) * 5)


def test_relative_positions_are_placed_on_the_applicator(files):
    plan = read_brachy_plan(files["rel"], files["rs"])
    np.testing.assert_allclose(plan.positions_mm, [[-10.0, 0.0, 7.5]], atol=1e-9)


def test_relative_positions_without_geometry_are_refused(files):
    with pytest.raises(InputFileError, match=r"ControlPoint3DPosition \(300A,02D4\).*--rtstruct"):
        read_brachy_plan(files["rel"])


def test_dates_warnings(tmp_path):
    chan = [channel_spec([[0, 0, 0], [0, 0, 5]], [1.0, 1.0])]
    early = build_plan(
        chan,
        manufacturer="x",
        model="mHDR-v2",
        plan_time=dt.datetime(2026, 2, 1),
        reference=dt.datetime(2026, 3, 1),
    )
    plan = read_brachy_plan(_save(early, tmp_path / "early.dcm"))
    assert any("dated before the source strength reference date" in w for w in plan.warnings)
    anon = build_plan(chan, manufacturer="x", model="mHDR-v2", plan_time=dt.datetime(1900, 1, 1))
    plan = read_brachy_plan(_save(anon, tmp_path / "anon.dcm"))
    assert any("placeholder" in w and "RTPlanDate" in w for w in plan.warnings)


def test_source_mapping_and_mismatch():
    from iortopt.dicom.rtplan_reader import PlanSource

    def src(model, isotope="Ir-192"):
        return PlanSource(1, model, "", isotope, 73.83, 3.5, 40000.0, None)

    assert model_of(src("microSelectron-HDR V2")) == "mHDR-v2"
    assert model_of(src("GammaMed HDR Plus")) == "GammaMedPlus"
    assert model_of(src("unknown-seed")) is None
    assert normalise_isotope("IRIDIUM-192") == normalise_isotope("192Ir") == "ir192"
    data, warnings = resolve_source(src("mHDR-v2r"), None)
    assert data.key == "mHDR-v2_HEBD2012" and warnings == []
    with pytest.raises(ConfigError, match="--source mHDR-v1"):
        resolve_source(src("mHDR-v2r"), "mHDR-v1")
    with pytest.raises(ConfigError, match="--source: the plan's Source Model ID 'X7'"):
        resolve_source(src("X7"), None)
    data, warnings = resolve_source(src("X7"), "VS2000")
    assert data.name == "VS2000" and "unverified" in warnings[0]
    with pytest.raises(ConfigError, match="Co-60"):
        resolve_source(src("mHDR-v2", "Co-60"), None)
    no_half_life = PlanSource(1, "mHDR-v2", "", "Ir-192", None, 3.5, 40000.0, None)
    assert "no SourceIsotopeHalfLife" in resolve_source(no_half_life, None)[1][0]
    with pytest.raises(SourceDataError, match="unknown source"):
        resolve_source(src("X7"), "nonesuch")


def _modified(tmp_path, name, change, **plan_kw):
    ds = build_plan(
        [channel_spec([[0, 0, 0], [0, 0, 5]], [1.0, 1.0], **plan_kw.pop("chan", {}))],
        manufacturer="x",
        model="mHDR-v2",
        **plan_kw,
    )
    change(ds)
    return _save(ds, tmp_path / f"{name}.dcm")


@pytest.mark.parametrize(
    "name, change, plan_kw, message",
    [
        (
            "no_sk",
            lambda ds: delattr(ds.SourceSequence[0], "ReferenceAirKermaRate"),
            {},
            r"ReferenceAirKermaRate \(300A,022A\)",
        ),
        (
            "ldr",
            lambda ds: setattr(ds, "BrachyTreatmentType", "LDR"),
            {},
            r"BrachyTreatmentType \(300A,0202\)",
        ),
        ("pdr_no_pulses", lambda ds: None, {"treatment_type": "PDR"}, r"NumberOfPulses"),
        (
            "moving",
            lambda ds: setattr(
                ds.ApplicationSetupSequence[0].ChannelSequence[0].BrachyControlPointSequence[1],
                "ControlPoint3DPosition",
                [0, 0, 2],
            ),
            {},
            "moving source",
        ),
        (
            "no_total",
            lambda ds: delattr(
                ds.ApplicationSetupSequence[0].ChannelSequence[0], "ChannelTotalTime"
            ),
            {},
            r"ChannelTotalTime \(300A,0286\)",
        ),
    ],
)
def test_refusals_name_the_field(tmp_path, name, change, plan_kw, message):
    path = _modified(tmp_path, name, change, **plan_kw)
    with pytest.raises(InputFileError, match=message):
        read_brachy_plan(path)


def test_pydicom_external_beam_plan_is_refused():
    with pytest.raises(InputFileError, match=r"not a brachytherapy RTPLAN.*external-beam"):
        read_brachy_plan(get_testdata_file("rtplan.dcm"))
    with pytest.raises(InputFileError):
        read_brachy_plan(get_testdata_file("rtplan_truncated.dcm"))
