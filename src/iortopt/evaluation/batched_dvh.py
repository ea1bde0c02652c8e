"""DVH metrics of many plans at once: (K, voxels) doses of one structure -> (K,) metrics (numpy).

The conventions are those of :mod:`iortopt.evaluation.dvh` (voxel-centre DVH, ``Dx`` the dose of
the first hottest-first voxel at which the accumulated weight reaches ``x``), applied row by row
with one sort per structure; :func:`structure_metrics_batched` returns the same numbers as
:func:`iortopt.evaluation.dvh.structure_metrics` for each row (tests compare them).
"""

from __future__ import annotations

import numpy as np

from iortopt.evaluation.dvh import _CUMULATIVE_RTOL, METRIC_KEYS

#: Metrics of :func:`structure_metrics_batched` (a subset of ``dvh.METRIC_KEYS``).
BATCHED_METRIC_KEYS = tuple(k for k in METRIC_KEYS if k not in ("volume_cm3", "HI_icru83"))


def dose_at_weights_batched(dose_gy: np.ndarray, weights: np.ndarray, targets) -> np.ndarray:
    """(K, M) ``Dx`` of each row of ``dose_gy`` (K, n) for the accumulated weights ``targets``
    (M,) (in weight units: fraction x total, or cm3 / voxel volume); nan where a target exceeds
    the total weight. ``weights`` (n,) > 0."""
    dose = np.asarray(dose_gy)
    w = np.asarray(weights, np.float64)
    targets = np.asarray(targets, np.float64)
    # any order of equal doses gives the same Dx (the accumulated weight at the end of a run of
    # ties does not depend on it), so the faster unstable sort does
    order = np.argsort(-dose, axis=1)
    hot = np.take_along_axis(dose, order, axis=1)
    cumulative = np.cumsum(w[order], axis=1)
    total = float(w.sum())
    shifted = targets - _CUMULATIVE_RTOL * total
    # first index whose accumulated weight reaches the target, per row
    idx = np.stack([(cumulative < s).sum(axis=1) for s in shifted], axis=1)
    idx = np.minimum(idx, w.size - 1)
    out = np.take_along_axis(hot, idx, axis=1).astype(np.float64)
    return np.where(targets[None, :] > total * (1 + _CUMULATIVE_RTOL), np.nan, out)


def structure_metrics_batched(
    dose_gy: np.ndarray, weights: np.ndarray, voxel_volume_cm3: float, prescription_gy: float
) -> dict[str, np.ndarray]:
    """:data:`BATCHED_METRIC_KEYS` -> (K,) values for the (K, n) doses of one structure whose
    voxels have occupancy ``weights`` (n,) (voxels of weight 0 are dropped)."""
    w = np.asarray(weights, np.float64)
    keep = w > 0
    dose, w = np.asarray(dose_gy)[:, keep], w[keep]
    k = dose.shape[0]
    total = float(w.sum())
    if total <= 0:
        return {key: np.full(k, np.nan) for key in BATCHED_METRIC_KEYS}
    fractions = np.array([0.98, 0.90, 0.50, 0.02]) * total
    volumes = np.array([2.0, 0.1]) / voxel_volume_cm3
    d98, d90, d50, d2, d2cc, d01cc = dose_at_weights_batched(
        dose, w, np.concatenate([fractions, volumes])
    ).T

    def v_percent(level: float) -> np.ndarray:
        return 100.0 * ((dose >= level * prescription_gy) @ w) / total

    return {
        "mean_gy": (dose @ w) / total,
        "max_gy": dose.max(axis=1).astype(np.float64),
        "min_gy": dose.min(axis=1).astype(np.float64),
        "D98_gy": d98,
        "D90_gy": d90,
        "D50_gy": d50,
        "D2_gy": d2,
        "D2cc_gy": d2cc,
        "D0.1cc_gy": d01cc,
        "V100_percent": v_percent(1.0),
        "V150_percent": v_percent(1.5),
        "V200_percent": v_percent(2.0),
    }
