"""Biologically effective dose (BED) and EQD2 in the linear-quadratic (LQ) model.

For ``n`` equal fractions of ``d`` Gy (total dose ``D = n d``):

    BED  = n d (1 + d / (alpha/beta))
    EQD2 = BED / (1 + 2 / (alpha/beta))

(no repopulation, no incomplete repair between fractions). Sources: the ``BED_formula`` and
``EQD2_formula`` rows of ``shared/reference/iort/radiobiology_published_values.csv`` (Hall &
Giaccia 2012; Jones et al., Clin Oncol 13:71, 2001; Joiner & van der Kogel 2009).

Caution: the LQ model is disputed for single doses above about 10 Gy, which is the IORT regime
(e.g. 21 Gy in one fraction). Values from this module are model estimates and should be reported
as such, with the model named (``MODEL_NAME``) and the alpha/beta used.
"""

from __future__ import annotations

import numpy as np

MODEL_NAME = "linear-quadratic (LQ), no repopulation, complete repair between fractions"

# Typical alpha/beta values, Gy (radiobiology_published_values.csv). They are generic textbook
# values, not patient- or tissue-specific measurements: always let the user choose.
ALPHA_BETA_TYPICAL_GY: dict[str, float] = {
    # "alpha_beta_tumour_typical": BED calculator pages (calculatorlib.com, readycalculator.com);
    # generic textbook value, not a primary source.
    "tumour": 10.0,
    # "alpha_beta_late_normal_tissue_typical": 3 (range 2-3), same calculator pages; not primary.
    "late_normal_tissue": 3.0,
    # "alpha_beta_breast_cancer": In Vivo (2021) PMC8408691, introduction ("for breast cancer cells
    # it is estimated to be 4"); secondary statement, START-trial primary estimates not read.
    "breast_cancer": 4.0,
}


def _checked(total_dose_gy, n_fractions, alpha_beta_gy):
    dose = np.asarray(total_dose_gy, dtype=np.float64)
    n = np.asarray(n_fractions, dtype=np.float64)
    ab = np.asarray(alpha_beta_gy, dtype=np.float64)
    if not np.all(np.isfinite(dose)) or np.any(dose < 0):
        raise ValueError(f"total_dose_gy must be finite and non-negative, got {total_dose_gy}")
    if not np.all(np.isfinite(n)) or np.any(n < 1) or np.any(n != np.round(n)):
        raise ValueError(f"n_fractions must be integers >= 1, got {n_fractions}")
    if not np.all(np.isfinite(ab)) or np.any(ab <= 0):
        raise ValueError(f"alpha_beta_gy must be finite and positive, got {alpha_beta_gy}")
    return dose, n, ab


def _as_float_or_array(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def bed_gy(total_dose_gy, n_fractions, alpha_beta_gy):
    """Biologically effective dose, Gy (LQ model).

    Args:
        total_dose_gy: total physical dose D = n d, Gy (scalar or array).
        n_fractions: number of equal fractions n >= 1 (integer-valued, broadcastable).
        alpha_beta_gy: alpha/beta ratio, Gy, > 0 (broadcastable).

    Returns:
        ``D (1 + (D / n) / (alpha/beta))``: a float for scalar inputs, else the broadcast array.

    Raises:
        ValueError: negative or non-finite dose, n < 1 or non-integer, alpha/beta <= 0.
    """
    dose, n, ab = _checked(total_dose_gy, n_fractions, alpha_beta_gy)
    return _as_float_or_array(dose * (1.0 + dose / n / ab))


def eqd2_gy(total_dose_gy, n_fractions, alpha_beta_gy):
    """Equivalent dose in 2 Gy fractions, Gy (LQ model): ``BED / (1 + 2 / (alpha/beta))``.

    Arguments, shapes and errors as :func:`bed_gy`.
    """
    _, _, ab = _checked(total_dose_gy, n_fractions, alpha_beta_gy)
    bed = np.asarray(bed_gy(total_dose_gy, n_fractions, alpha_beta_gy))
    return _as_float_or_array(bed / (1.0 + 2.0 / ab))
