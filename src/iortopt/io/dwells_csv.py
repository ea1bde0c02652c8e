"""Dwell lists as CSV: ``x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s`` (one dwell per row).

Positions are in patient mm; the axis points from the cable side to the source tip (it need not be
unit length, but must not be zero); times are in seconds. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iortopt.errors import InputFileError
from iortopt.io.csv_table import read_numeric_csv

COLUMNS = ("x_mm", "y_mm", "z_mm", "axis_x", "axis_y", "axis_z", "time_s")


def read_dwells_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (N, 3) mm, axes (N, 3) and times (N,) s from a dwell CSV file."""
    path = Path(path)
    data = read_numeric_csv(path, COLUMNS, "dwells")
    positions, axes, times = data[:, 0:3], data[:, 3:6], data[:, 6]
    if np.any(np.linalg.norm(axes, axis=1) == 0):
        raise InputFileError(
            f"{path}: row {int(np.argmin(np.linalg.norm(axes, axis=1))) + 2}: zero source axis"
        )
    if np.any(times < 0):
        raise InputFileError(f"{path}: row {int(np.argmin(times)) + 2}: negative time_s")
    return positions, axes, times
