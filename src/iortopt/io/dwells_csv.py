"""Dwell lists as CSV: ``x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,time_s`` (one dwell per row).

Positions are in patient mm; the axis points from the cable side to the source tip (it need not be
unit length, but must not be zero); times are in seconds. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from iortopt.errors import InputFileError
from iortopt.io.text_file import read_utf8_text

COLUMNS = ("x_mm", "y_mm", "z_mm", "axis_x", "axis_y", "axis_z", "time_s")


def read_dwells_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (N, 3) mm, axes (N, 3) and times (N,) s from a dwell CSV file."""
    path = Path(path)
    try:
        with io.StringIO(read_utf8_text(path, InputFileError, "CSV"), newline="") as fh:
            reader = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputFileError(
                    f"{path}: missing column(s) {missing}; expected header {','.join(COLUMNS)}"
                )
            rows = []
            for line_no, row in enumerate(reader, start=2):
                try:
                    rows.append([float(row[c]) for c in COLUMNS])
                except (TypeError, ValueError):
                    raise InputFileError(
                        f"{path}: row {line_no}: expected 7 numbers, got {row}"
                    ) from None
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found") from None
    except csv.Error as exc:  # e.g. a field over the size limit (binary data)
        raise InputFileError(f"{path}: not valid CSV ({exc})") from None
    if not rows:
        raise InputFileError(f"{path}: no dwells")
    data = np.asarray(rows)
    if not np.all(np.isfinite(data)):
        raise InputFileError(f"{path}: values must be finite")
    positions, axes, times = data[:, 0:3], data[:, 3:6], data[:, 6]
    if np.any(np.linalg.norm(axes, axis=1) == 0):
        raise InputFileError(
            f"{path}: row {int(np.argmin(np.linalg.norm(axes, axis=1))) + 2}: zero source axis"
        )
    if np.any(times < 0):
        raise InputFileError(f"{path}: row {int(np.argmin(times)) + 2}: negative time_s")
    return positions, axes, times
