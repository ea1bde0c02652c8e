"""BED / EQD2 against hand-computed LQ numbers."""

import numpy as np
import pytest

from iortopt.evaluation import radiobiology as rb


def test_single_21_gy_fraction_alpha_beta_10():
    # BED = 21 (1 + 21/10) = 65.1; EQD2 = 65.1 / 1.2 = 54.25.
    assert rb.bed_gy(21.0, 1, 10.0) == pytest.approx(65.1)
    assert rb.eqd2_gy(21.0, 1, 10.0) == pytest.approx(54.25)


def test_2_gy_fractions_are_their_own_eqd2():
    # 25 x 2 Gy, alpha/beta 3: BED = 50 (1 + 2/3) = 83.33..., EQD2 = 50 exactly.
    assert rb.bed_gy(50.0, 25, 3.0) == pytest.approx(250 / 3)
    assert rb.eqd2_gy(50.0, 25, 3.0) == pytest.approx(50.0, rel=1e-12)
    assert isinstance(rb.eqd2_gy(50.0, 25, 3.0), float)


def test_vectorised_and_broadcast():
    dose = np.array([[10.0], [20.0]])  # (2, 1)
    ab = np.array([3.0, 10.0])  # (2,)
    got = rb.bed_gy(dose, 1, ab)
    expected = np.array([[10 * (1 + 10 / 3), 10 * 2.0], [20 * (1 + 20 / 3), 20 * 3.0]])
    assert got.shape == (2, 2)
    assert np.allclose(got, expected)
    assert np.allclose(rb.eqd2_gy(dose, 1, ab), expected / (1 + 2 / ab))


@pytest.mark.parametrize(
    ("dose", "n", "ab"),
    [(10.0, 0, 3.0), (10.0, 2.5, 3.0), (10.0, 1, 0.0), (10.0, 1, -3.0), (-1.0, 1, 3.0),
     (np.nan, 1, 3.0)],
)  # fmt: skip
def test_invalid_inputs_raise(dose, n, ab):
    with pytest.raises(ValueError):
        rb.bed_gy(dose, n, ab)
    with pytest.raises(ValueError):
        rb.eqd2_gy(dose, n, ab)


def test_typical_alpha_beta_values_and_model_caveat():
    assert rb.ALPHA_BETA_TYPICAL_GY == {
        "tumour": 10.0, "late_normal_tissue": 3.0, "breast_cancer": 4.0,
    }  # fmt: skip
    assert "linear-quadratic" in rb.MODEL_NAME
    assert "10 Gy" in rb.__doc__ and "disputed" in rb.__doc__
