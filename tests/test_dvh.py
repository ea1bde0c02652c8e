"""DVH metrics on analytic cases; every expected value is computed by hand or in closed form."""

import json
import math

import numpy as np
import pytest

from iortopt.evaluation import dvh

METRIC_KEYS = {
    "volume_cm3", "mean_gy", "max_gy", "min_gy", "D98_gy", "D90_gy", "D50_gy", "D2_gy",
    "D2cc_gy", "D0.1cc_gy", "V100_percent", "V150_percent", "V200_percent", "HI_icru83",
}  # fmt: skip


def test_uniform_dose_every_dx_equal_and_v100_all_or_nothing():
    dose = np.full((10, 10, 10), 12.0)
    weights = np.ones_like(dose, dtype=np.float32)
    m = dvh.structure_metrics(dose, weights, 0.001, prescription_gy=12.0)
    for key in ("mean_gy", "max_gy", "min_gy", "D98_gy", "D90_gy", "D50_gy", "D2_gy",
                "D0.1cc_gy"):  # fmt: skip
        assert m[key] == pytest.approx(12.0)
    assert m["volume_cm3"] == pytest.approx(1.0)
    assert math.isnan(m["D2cc_gy"])  # 1 cm^3 structure has no hottest 2 cm^3
    assert m["V100_percent"] == pytest.approx(100.0)
    assert m["V150_percent"] == 0.0
    assert m["HI_icru83"] == 0.0
    assert dvh.structure_metrics(dose, weights, 0.001, 12.5)["V100_percent"] == 0.0


def test_linear_dose_dx_is_the_exact_quantile():
    n = 1000
    dose = 0.01 * np.arange(n, dtype=float).reshape(10, 10, 10)  # 0.00 .. 9.99 Gy
    weights = np.ones_like(dose)
    for x in (0.0, 0.02, 0.1234, 1 / 3, 0.5, 0.9, 0.98, 1.0):
        # ceil(x n)-th hottest voxel (1-based), i.e. dose index n - ceil(x n); D0 = max.
        rank = max(math.ceil(round(x * n, 9)), 1)
        expected = 0.01 * (n - rank)
        assert dvh.dose_at_volume_fraction(dose, weights, x) == pytest.approx(expected), x
    fractions = np.array([0.5, 0.9])
    assert np.allclose(dvh.dose_at_volume_fraction(dose, weights, fractions), [5.0, 1.0])
    # V(>= D) = (number of doses 0.01 k >= D) / n = (n - ceil(D / 0.01)) / n.
    for d in (0.0, 2.5, 5.005, 9.99, 10.0):
        expected = (n - math.ceil(round(d / 0.01, 9))) / n
        assert dvh.volume_at_dose(dose, weights, d) == pytest.approx(expected), d


def test_fractional_weights():
    dose = np.array([4.0, 3.0, 2.0, 1.0])
    weights = np.array([1.0, 0.5, 0.5, 1.0], dtype=np.float32)  # total 3 voxel volumes
    # Hottest first, cumulative weights 1, 1.5, 2, 3.
    assert dvh.dose_at_volume_fraction(dose, weights, 1 / 3) == 4.0
    assert dvh.dose_at_volume_fraction(dose, weights, 0.5) == 3.0
    assert dvh.dose_at_volume_fraction(dose, weights, 0.6) == 2.0
    assert dvh.dose_at_volume_fraction(dose, weights, 1.0) == 1.0
    assert dvh.volume_at_dose(dose, weights, 3.0) == pytest.approx(0.5)
    m = dvh.structure_metrics(dose, weights, 0.2, prescription_gy=2.0)
    assert m["volume_cm3"] == pytest.approx(0.6)
    assert m["mean_gy"] == pytest.approx((4 + 1.5 + 1 + 1) / 3)
    assert m["V100_percent"] == pytest.approx(100 * 2 / 3)
    # Half occupancy everywhere halves the volume and leaves the doses unchanged.
    half = dvh.structure_metrics(dose, 0.5 * weights, 0.2, prescription_gy=2.0)
    assert half["volume_cm3"] == pytest.approx(0.3)
    assert half["D50_gy"] == m["D50_gy"] == 3.0


def test_zero_weight_voxels_are_ignored():
    dose = np.array([100.0, 5.0, 3.0])
    weights = np.array([0.0, 1.0, 1.0])
    m = dvh.structure_metrics(dose, weights, 1.0, prescription_gy=4.0)
    assert m["max_gy"] == 5.0 and m["min_gy"] == 3.0 and m["volume_cm3"] == 2.0
    assert dvh.cumulative_dvh(dose, weights, 1.0).dose_gy[-1] == pytest.approx(5.0)


def test_dose_at_volume_cm3():
    dose = np.arange(10.0, 0.0, -1.0)  # 10, 9, ..., 1 Gy
    weights = np.ones(10)
    vv = 0.1  # structure is 1 cm^3
    assert dvh.dose_at_volume_cm3(dose, weights, vv, 0.1) == 10.0
    assert dvh.dose_at_volume_cm3(dose, weights, vv, 0.25) == 8.0  # 2.5 voxels -> 3rd hottest
    assert dvh.dose_at_volume_cm3(dose, weights, vv, 1.0) == 1.0
    assert math.isnan(dvh.dose_at_volume_cm3(dose, weights, vv, 2.0))
    assert np.allclose(dvh.dose_at_volume_cm3(dose, weights, vv, [0.1, 0.5]), [10.0, 6.0])


def test_cumulative_dvh_of_linear_dose():
    n = 1000
    dose = 0.01 * np.arange(n, dtype=float)
    weights = np.ones(n)
    h = dvh.cumulative_dvh(dose, weights, 0.5, bin_width_gy=0.25)
    assert h.dose_gy[0] == 0.0 and h.dose_gy[-1] >= 9.99
    assert np.allclose(np.diff(h.dose_gy), 0.25)
    # Voxels with 0.01 k >= D: n - ceil(D / 0.01) of them.
    expected = (n - np.ceil(np.round(h.dose_gy / 0.01, 9))).clip(0) * 0.5
    assert np.allclose(h.volume_cm3, expected)
    assert h.total_volume_cm3 == pytest.approx(500.0)
    assert h.volume_fraction[0] == pytest.approx(1.0)
    default = dvh.cumulative_dvh(dose, weights, 0.5)
    assert default.dose_gy.size == dvh.DEFAULT_N_BINS + 1
    assert default.dose_gy[-1] == pytest.approx(9.99)


@pytest.fixture(scope="module")
def point_source_in_sphere():
    """Dose k / r^2 around a point at a voxel corner, inside a sphere of radius R = 20 mm."""
    spacing_mm, radius_mm, k = 0.5, 20.0, 400.0
    c = (np.arange(84) - 41.5) * spacing_mm  # voxel centres; the source sits between voxels
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    r2 = x**2 + y**2 + z**2
    weights = (r2 <= radius_mm**2).astype(np.float32)
    return k / r2, weights, radius_mm, k


@pytest.mark.parametrize("x", [0.02, 0.1, 0.5, 0.9, 0.98])
def test_point_source_in_sphere_dx(point_source_in_sphere, x):
    dose, weights, radius_mm, k = point_source_in_sphere
    # The hottest fraction x is the inner sphere of radius R x^(1/3).
    expected = k / (radius_mm * x ** (1 / 3)) ** 2
    assert dvh.dose_at_volume_fraction(dose, weights, x) == pytest.approx(expected, rel=0.02)


def test_point_source_in_sphere_vd_and_dvh(point_source_in_sphere):
    dose, weights, radius_mm, k = point_source_in_sphere
    for d in (2.0, 4.0, 10.0, 40.0):
        # Dose >= d inside r_d = sqrt(k / d): fraction (r_d / R)^3.
        expected = (math.sqrt(k / d) / radius_mm) ** 3
        assert dvh.volume_at_dose(dose, weights, d) == pytest.approx(expected, rel=0.03), d
    h = dvh.cumulative_dvh(dose, weights, 0.125e-3, max_dose_gy=50.0)
    # Above ~10 Gy (r < 6 mm, 12 voxels) the voxel staircase of the few hottest voxels dominates.
    sel = (h.dose_gy >= 1.0) & (h.dose_gy <= 10.0)
    expected = (np.sqrt(k / h.dose_gy[sel]) / radius_mm) ** 3
    assert np.allclose(h.volume_fraction[sel], expected, rtol=0.025)
    sphere_cm3 = 4 / 3 * math.pi * (radius_mm / 10) ** 3
    assert h.total_volume_cm3 == pytest.approx(sphere_cm3, rel=0.01)


def test_structure_metrics_keys_and_json():
    dose = np.linspace(5.0, 25.0, 27).reshape(3, 3, 3)
    m = dvh.structure_metrics(dose, np.ones_like(dose), 0.1, prescription_gy=10.0)
    assert set(m) == METRIC_KEYS
    assert all(type(v) is float for v in m.values())
    json.dumps(m)
    empty = dvh.structure_metrics(dose, np.zeros_like(dose), 0.1, prescription_gy=10.0)
    assert empty["volume_cm3"] == 0.0
    assert all(math.isnan(v) for key, v in empty.items() if key != "volume_cm3")


def test_hi_icru83():
    # 100 voxels at 1..100 Gy: D2 = 2nd hottest = 99, D98 = 98th hottest = 3, D50 = 51.
    dose = np.arange(1.0, 101.0)
    m = dvh.structure_metrics(dose, np.ones(100), 1.0, prescription_gy=50.0)
    assert (m["D2_gy"], m["D98_gy"], m["D50_gy"]) == (99.0, 3.0, 51.0)
    assert m["HI_icru83"] == pytest.approx((99 - 3) / 51)
    assert m["V100_percent"] == 51.0 and m["V150_percent"] == 26.0 and m["V200_percent"] == 1.0


def test_plan_indices_hand_built_case():
    rx = 10.0
    dose = np.array([20, 16, 14, 12, 10, 8, 6, 12, 3, 1], dtype=float).reshape(1, 1, 10)
    target = np.zeros_like(dose)
    target[..., :6] = 1.0  # doses 20 16 14 12 10 8: V100 = 5, V150 = 2, volume 6
    oar = np.zeros_like(dose)
    oar[..., 6:9] = 1.0  # doses 6 12 3: one of three voxels >= 10 Gy, two >= 5 Gy
    got = dvh.plan_indices(dose, target, {"bowel": oar}, rx, voxel_volume_cm3=1.0)
    assert got["DNR"] == pytest.approx(2 / 5)
    assert got["DHI"] == pytest.approx(3 / 5)
    # Whole grid >= 10 Gy: voxels 0-4 and 7 -> 6 cm^3.
    assert got["reference_isodose_volume_cm3"] == 6.0
    assert got["c1"] == pytest.approx(5 / 6) and got["c2"] == pytest.approx(5 / 6)
    assert got["oar_factors"] == {"bowel": pytest.approx(2 / 3)}
    assert got["COIN"] == pytest.approx(5 / 6 * 5 / 6 * 2 / 3)
    json.dumps(got)

    crit = dvh.plan_indices(dose, target, {"bowel": oar}, rx, 1.0, {"bowel": 5.0})
    assert crit["COIN"] == pytest.approx(5 / 6 * 5 / 6 * 1 / 3)

    body = np.ones_like(dose)
    body[..., 7] = 0.0  # the hot OAR voxel is outside the body region: c2 = 5/5
    inside = dvh.plan_indices(dose, target, {}, rx, 1.0, body_weights=body)
    assert inside["c2"] == pytest.approx(1.0) and inside["COIN"] == pytest.approx(5 / 6)

    cold = dvh.plan_indices(np.zeros_like(dose), target, {}, rx, 1.0)
    assert math.isnan(cold["DNR"]) and cold["c1"] == 0.0 and math.isnan(cold["c2"])


def test_input_validation():
    dose = np.ones((2, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        dvh.volume_at_dose(dose, np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        dvh.volume_at_dose(dose, -np.ones_like(dose), 1.0)
    with pytest.raises(ValueError, match="fraction"):
        dvh.dose_at_volume_fraction(dose, np.ones_like(dose), 1.5)
    with pytest.raises(ValueError, match="unknown OARs"):
        dvh.plan_indices(dose, np.ones_like(dose), {}, 1.0, 1.0, {"rectum": 5.0})


def test_metric_keys_match_structure_metrics():
    m = dvh.structure_metrics(np.ones(10), np.ones(10), 0.1, 1.0)
    assert tuple(m) == dvh.METRIC_KEYS
