"""Field checks shared by the physics data loaders (beam data, shield materials): every failure is
a :class:`~iortopt.errors.SourceDataError` naming the file, the table and the field."""

from __future__ import annotations

import math

import numpy as np

from iortopt.errors import SourceDataError


def fail(origin: str, where: str, problem: str) -> SourceDataError:
    return SourceDataError(f"{origin}: {where}: {problem}")


def is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def number(origin, table: dict, where: str, key: str, *, low=0.0, low_ok=False, high=None):
    """``table[key]`` as a finite float above ``low`` (or at it with ``low_ok``), below ``high``."""
    value = table.get(key)
    if value is None:
        raise fail(origin, f"{where} {key}", "missing")
    if not is_number(value) or not math.isfinite(value):
        raise fail(origin, f"{where} {key}", f"expected a finite number, got {value!r}")
    if value < low or (value == low and not low_ok) or (high is not None and value >= high):
        bound = f">= {low:g}" if low_ok else f"> {low:g}"
        if high is not None:
            bound += f" and < {high:g}"
        raise fail(origin, f"{where} {key}", f"expected a number {bound}, got {value!r}")
    return float(value)


def number_list(origin, table: dict, where: str, key: str, *, min_len: int = 1) -> np.ndarray:
    """``table[key]`` as a float64 array of at least ``min_len`` finite numbers."""
    value = table.get(key)
    if value is None:
        raise fail(origin, f"{where} {key}", "missing")
    if not isinstance(value, list) or len(value) < min_len:
        plural = "s" if min_len != 1 else ""
        raise fail(
            origin, f"{where} {key}", f"expected a list of at least {min_len} number{plural}"
        )
    bad = next((v for v in value if not is_number(v)), None)
    if bad is not None:
        raise fail(origin, f"{where} {key}", f"expected numbers, found {bad!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise fail(origin, f"{where} {key}", "contains nan or inf")
    return arr


def increasing(origin, where: str, arr: np.ndarray) -> None:
    steps = np.diff(arr)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0)) + 1
        raise fail(origin, where, f"must be strictly increasing (entry {k}: {arr[k]:g})")


def string(origin, table: dict, where: str, key: str, *, required: bool) -> str:
    value = table.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise fail(origin, f"{where} {key}", f"expected a non-empty string, got {value!r}")
    return value.strip()
