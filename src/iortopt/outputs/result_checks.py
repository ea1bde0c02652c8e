"""Checks on a plan's computed result before anything is written (``write_plan_outputs``)."""

from __future__ import annotations

import math

import numpy as np

from iortopt.errors import PlanFailedError


def _finite(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float) or math.isfinite(value)


def check_dose_finite(dose: np.ndarray) -> None:
    """Raise :class:`PlanFailedError` if the dose grid holds NaN or inf (checked before the DVHs,
    which would fail on it with a less helpful error)."""
    check_result_finite(dose, {}, {})


def check_result_finite(
    dose: np.ndarray, applicator: dict[str, dict[str, np.ndarray]], summary: dict
) -> None:
    """Raise :class:`PlanFailedError` if the dose, an applicator array (dwell times, positions,
    sphere centre...) or the summary's objective is NaN or infinite.

    A non-finite optimiser result would otherwise be written as a plan (or fail later with a
    traceback); the message says which quantity is bad and how many values.
    """
    bad = []
    dose = np.asarray(dose)
    if dose.size and not np.all(np.isfinite(dose)):
        bad.append(f"dose ({np.count_nonzero(~np.isfinite(dose))} of {dose.size} voxels)")
    for group, arrays in applicator.items():
        for name, values in arrays.items():
            arr = np.asarray(values)
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                count = np.count_nonzero(~np.isfinite(arr))
                bad.append(f"{group}/{name} ({count} of {arr.size} values)")
    if "objective" in summary and not _finite(summary["objective"]):
        bad.append(f"objective ({summary['objective']!r})")
    if bad:
        raise PlanFailedError(
            "the optimised plan is not finite (NaN or inf): " + "; ".join(bad) + ". Nothing was "
            "written; check the config (prescription, source strength, weights) or try "
            "--precision float64"
        )
