"""Dose-volume histograms, Dx / Vx metrics and brachytherapy plan indices (numpy).

Every function takes a dose array (Gy) and a weight array of the same shape: the fractional
occupancy of one structure, in [0, 1] for a ``Structure``, though any non-negative weights work.
Voxels with weight 0 are ignored; a voxel contributes ``weight * voxel_volume_cm3`` of volume and
its whole volume is taken to receive the dose at its centre (voxel-centre DVH).

Conventions (IORT primer, section 5):

- Cumulative DVH: volume receiving at least dose D.
- ``Dx`` (``x`` a fraction of the structure volume, or ``x`` cm^3 for ``Dxcc``): the minimum dose
  received by the hottest ``x`` of the structure. Exactly, on weighted voxels: sort the voxels by
  dose, hottest first, and accumulate their weights; ``Dx`` is the dose of the first voxel at which
  the accumulated (hottest) volume reaches ``x``. No interpolation between voxels: with unit
  weights and N voxels, ``Dx`` is the dose of the ``ceil(x N)``-th hottest voxel.
- ``V(D)``: volume (fraction, cm^3 or %) with dose ``>= D``. V100/V150/V200 refer to 100/150/200 %
  of the prescription.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative slack on accumulated weights, so that round-off in the cumulative sum of fractional
# weights (float32 occupancies) does not push Dx one voxel colder than the exact convention.
_CUMULATIVE_RTOL = 1e-9

DEFAULT_N_BINS = 1000


@dataclass(frozen=True)
class DVH:
    """A cumulative DVH.

    Attributes:
        dose_gy: (n_bins,) bin doses in Gy, ascending from 0.
        volume_cm3: (n_bins,) volume receiving at least ``dose_gy[i]``, cm^3 (non-increasing).
        total_volume_cm3: the structure volume, cm^3.
    """

    dose_gy: np.ndarray
    volume_cm3: np.ndarray
    total_volume_cm3: float

    @property
    def volume_fraction(self) -> np.ndarray:
        """(n_bins,) ``volume_cm3 / total_volume_cm3``; nan for an empty structure."""
        if self.total_volume_cm3 <= 0:
            return np.full_like(self.volume_cm3, np.nan, dtype=float)
        return self.volume_cm3 / self.total_volume_cm3


def _weighted_voxels(dose_gy, weights) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 (dose, weight) of the voxels with weight > 0, after checking the inputs."""
    dose = np.asarray(dose_gy, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if dose.shape != w.shape:
        raise ValueError(f"dose shape {dose.shape} does not match weights shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    mask = w > 0
    d = dose[mask]
    if not np.all(np.isfinite(d)):
        raise ValueError("dose is not finite in some voxels of the structure")
    return d, w[mask]


@dataclass(frozen=True)
class _HottestFirst:
    """Voxels of one structure sorted hottest first (argsort once, query many times)."""

    dose_gy: np.ndarray  # (n,) descending
    cumulative_weight: np.ndarray  # (n,) ascending; [-1] = total weight

    @classmethod
    def of(cls, dose_gy, weights) -> _HottestFirst:
        d, w = _weighted_voxels(dose_gy, weights)
        order = np.argsort(-d, kind="stable")
        return cls(d[order], np.cumsum(w[order]))

    @property
    def total_weight(self) -> float:
        return float(self.cumulative_weight[-1]) if self.cumulative_weight.size else 0.0

    def dose_at_weight(self, weight) -> np.ndarray:
        """Dose of the first (hottest-first) voxel whose accumulated weight reaches ``weight``."""
        weight = np.asarray(weight, dtype=np.float64)
        total = self.total_weight
        if total <= 0:
            return np.full(weight.shape, np.nan)
        idx = np.searchsorted(self.cumulative_weight, weight - _CUMULATIVE_RTOL * total, "left")
        out = self.dose_gy[np.minimum(idx, self.dose_gy.size - 1)]
        return np.where(weight > total * (1 + _CUMULATIVE_RTOL), np.nan, out)


def _as_float_or_array(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def cumulative_dvh(
    dose_gy, weights, voxel_volume_cm3: float, bin_width_gy=None, max_dose_gy=None
) -> DVH:
    """Cumulative DVH of one structure.

    Args:
        dose_gy: dose, Gy, any shape (e.g. (nz, ny, nx)).
        weights: same shape, fractional occupancy of the structure.
        voxel_volume_cm3: volume of one full voxel, cm^3.
        bin_width_gy: bin spacing, Gy; default ``max_dose_gy / 1000``.
        max_dose_gy: highest bin reaches at least this dose; default the structure's max dose.

    Returns:
        DVH with bins ``0, w, 2w, ...`` up to (at least) ``max_dose_gy``. Negative doses (round-off)
        count as 0 Gy, so ``volume_cm3[0]`` is the whole structure volume.
    """
    d, w = _weighted_voxels(dose_gy, weights)
    total_cm3 = float(w.sum()) * voxel_volume_cm3
    if max_dose_gy is None:
        max_dose_gy = float(d.max()) if d.size else 0.0
    if bin_width_gy is None:
        bin_width_gy = max_dose_gy / DEFAULT_N_BINS if max_dose_gy > 0 else 1.0
    if not bin_width_gy > 0:
        raise ValueError(f"bin_width_gy must be positive, got {bin_width_gy}")
    n_bins = int(np.ceil(max_dose_gy / bin_width_gy - 1e-9)) + 1
    bins_gy = np.arange(n_bins) * float(bin_width_gy)
    # Bin i holds voxels with bins_gy[i] <= dose < bins_gy[i + 1]; the reversed cumulative sum is
    # then the volume with dose >= bins_gy[i], exactly (no floating histogram edges).
    idx = np.clip(np.searchsorted(bins_gy, d, side="right") - 1, 0, n_bins - 1)
    per_bin = np.bincount(idx, weights=w, minlength=n_bins)
    volume_cm3 = np.cumsum(per_bin[::-1])[::-1] * voxel_volume_cm3
    return DVH(dose_gy=bins_gy, volume_cm3=volume_cm3, total_volume_cm3=total_cm3)


def dose_at_volume_fraction(dose_gy, weights, fraction):
    """``Dx``: minimum dose (Gy) to the hottest ``fraction`` of the structure volume.

    Args:
        dose_gy: dose, Gy, any shape.
        weights: same shape, fractional occupancy.
        fraction: scalar or array in [0, 1] (0.9 for D90); 0 gives the max dose.

    Returns:
        float (or array shaped like ``fraction``); nan for an empty structure. Convention in the
        module docstring: the dose of the voxel at which the hottest accumulated volume first
        reaches ``fraction``.
    """
    fraction = np.asarray(fraction, dtype=np.float64)
    if np.any((fraction < 0) | (fraction > 1)) or not np.all(np.isfinite(fraction)):
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    hot = _HottestFirst.of(dose_gy, weights)
    return _as_float_or_array(hot.dose_at_weight(fraction * hot.total_weight))


def dose_at_volume_cm3(dose_gy, weights, voxel_volume_cm3: float, volume_cm3):
    """``Dxcc``: minimum dose (Gy) to the hottest ``volume_cm3`` cm^3 of the structure.

    Returns a float (or array shaped like ``volume_cm3``); nan where the structure is smaller
    than ``volume_cm3``.
    """
    volume_cm3 = np.asarray(volume_cm3, dtype=np.float64)
    if np.any(volume_cm3 < 0) or not np.all(np.isfinite(volume_cm3)):
        raise ValueError(f"volume_cm3 must be finite and non-negative, got {volume_cm3}")
    hot = _HottestFirst.of(dose_gy, weights)
    return _as_float_or_array(hot.dose_at_weight(volume_cm3 / voxel_volume_cm3))


def volume_at_dose(dose_gy, weights, threshold_gy) -> float:
    """Fraction (0..1) of the structure volume with dose ``>= threshold_gy``; nan if empty."""
    d, w = _weighted_voxels(dose_gy, weights)
    total = w.sum()
    if total <= 0:
        return float("nan")
    return float(w[d >= threshold_gy].sum() / total)


#: Keys of :func:`structure_metrics`, the metric names clinical goals may use.
METRIC_KEYS = (
    "volume_cm3",
    "mean_gy",
    "max_gy",
    "min_gy",
    "D98_gy",
    "D90_gy",
    "D50_gy",
    "D2_gy",
    "D2cc_gy",
    "D0.1cc_gy",
    "V100_percent",
    "V150_percent",
    "V200_percent",
    "HI_icru83",
)


def structure_metrics(dose_gy, weights, voxel_volume_cm3: float, prescription_gy: float) -> dict:
    """Standard metrics of one structure, as a JSON-serialisable dict of floats (nan if undefined).

    Keys: ``volume_cm3``, ``mean_gy``, ``max_gy``, ``min_gy`` (over voxels with weight > 0),
    ``D98_gy``, ``D90_gy``, ``D50_gy``, ``D2_gy``, ``D2cc_gy``, ``D0.1cc_gy``, ``V100_percent``,
    ``V150_percent``, ``V200_percent`` (of ``prescription_gy``), ``HI_icru83`` = (D2 - D98) / D50.
    """
    d, w = _weighted_voxels(dose_gy, weights)
    hot = _HottestFirst.of(d, w)
    total = hot.total_weight
    nan = float("nan")
    fractions = np.array([0.98, 0.90, 0.50, 0.02])
    d98, d90, d50, d2 = (float(v) for v in hot.dose_at_weight(fractions * total))
    d2cc, d01cc = (float(v) for v in hot.dose_at_weight(np.array([2.0, 0.1]) / voxel_volume_cm3))

    def v_percent(level: float) -> float:
        if total <= 0:
            return nan
        return float(100.0 * w[d >= level * prescription_gy].sum() / total)

    return {
        "volume_cm3": total * voxel_volume_cm3,
        "mean_gy": float(np.dot(d, w) / total) if total > 0 else nan,
        "max_gy": float(d.max()) if d.size else nan,
        "min_gy": float(d.min()) if d.size else nan,
        "D98_gy": d98,
        "D90_gy": d90,
        "D50_gy": d50,
        "D2_gy": d2,
        "D2cc_gy": d2cc,
        "D0.1cc_gy": d01cc,
        "V100_percent": v_percent(1.0),
        "V150_percent": v_percent(1.5),
        "V200_percent": v_percent(2.0),
        "HI_icru83": (d2 - d98) / d50 if d50 > 0 else nan,
    }


def _volume_at_or_above_cm3(dose_gy, weights, threshold_gy, voxel_volume_cm3) -> float:
    d, w = _weighted_voxels(dose_gy, weights)
    return float(w[d >= threshold_gy].sum()) * voxel_volume_cm3


def plan_indices(
    dose_gy,
    target_weights,
    oar_weights: dict[str, np.ndarray],
    prescription_gy: float,
    voxel_volume_cm3: float,
    oar_critical_dose_gy: dict[str, float] | None = None,
    body_weights=None,
) -> dict:
    """Brachytherapy plan indices DNR, DHI and COIN (Baltas et al. 1998).

    Args:
        dose_gy: (nz, ny, nx) dose, Gy.
        target_weights: same shape, target occupancy.
        oar_weights: name -> same-shape OAR occupancy.
        prescription_gy: reference (prescription) dose, Gy.
        voxel_volume_cm3: volume of one voxel, cm^3.
        oar_critical_dose_gy: name -> critical dose D_crit of that OAR; default the prescription.
        body_weights: region over which the reference isodose volume is counted (e.g. the body);
            default every voxel of the grid with weight 1.

    Returns:
        JSON-serialisable dict: ``DNR`` = V150/V100 and ``DHI`` = (V100 - V150)/V100 (target
        volumes), ``c1`` = target V100 / target volume, ``c2`` = target V100 / reference isodose
        volume (all tissue >= prescription), ``COIN`` = c1 * c2 * prod over OARs of
        ``1 - V_OAR(>= D_crit) / V_OAR``, ``oar_factors`` (name -> that factor; an OAR with no
        volume on the grid gives 1), and the volumes used (cm^3). Ratios with a zero denominator
        are nan.
    """
    rx = float(prescription_gy)
    if not rx > 0:
        raise ValueError(f"prescription_gy must be positive, got {prescription_gy}")
    dose = np.asarray(dose_gy, dtype=np.float64)
    if body_weights is None:
        body_weights = np.ones(dose.shape)
    critical = dict(oar_critical_dose_gy or {})
    unknown = set(critical) - set(oar_weights)
    if unknown:
        raise ValueError(f"oar_critical_dose_gy names unknown OARs: {sorted(unknown)}")

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("nan")

    target_cm3 = _volume_at_or_above_cm3(dose, target_weights, -np.inf, voxel_volume_cm3)
    v100 = _volume_at_or_above_cm3(dose, target_weights, rx, voxel_volume_cm3)
    v150 = _volume_at_or_above_cm3(dose, target_weights, 1.5 * rx, voxel_volume_cm3)
    reference_cm3 = _volume_at_or_above_cm3(dose, body_weights, rx, voxel_volume_cm3)

    oar_factors = {}
    for name, weights in oar_weights.items():
        oar_cm3 = _volume_at_or_above_cm3(dose, weights, -np.inf, voxel_volume_cm3)
        hot_cm3 = _volume_at_or_above_cm3(dose, weights, critical.get(name, rx), voxel_volume_cm3)
        oar_factors[name] = 1.0 - hot_cm3 / oar_cm3 if oar_cm3 > 0 else 1.0

    c1 = ratio(v100, target_cm3)
    c2 = ratio(v100, reference_cm3)
    return {
        "prescription_gy": rx,
        "target_volume_cm3": target_cm3,
        "target_V100_cm3": v100,
        "target_V150_cm3": v150,
        "reference_isodose_volume_cm3": reference_cm3,
        "DNR": ratio(v150, v100),
        "DHI": ratio(v100 - v150, v100),
        "c1": c1,
        "c2": c2,
        "COIN": c1 * c2 * float(np.prod(list(oar_factors.values()))),
        "oar_factors": oar_factors,
    }
