"""Numeric CSV tables with a header line: one reader for every user CSV (dwells, QA points).

Lines starting with ``#`` are comments. Errors name the file (and the row) and raise
:class:`~iortopt.errors.InputFileError`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from iortopt.errors import InputFileError
from iortopt.io.text_file import read_utf8_text


def read_numeric_csv(path: str | Path, columns: tuple[str, ...], what: str) -> np.ndarray:
    """The named ``columns`` of a CSV file as a (rows, len(columns)) float64 array.

    ``what`` names a row in messages ("dwells", "points"). Values must be finite numbers.
    """
    path = Path(path)
    try:
        with io.StringIO(read_utf8_text(path, InputFileError, "CSV"), newline="") as fh:
            reader = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputFileError(
                    f"{path}: missing column(s) {missing}; expected header {','.join(columns)}"
                )
            rows = []
            for line_no, row in enumerate(reader, start=2):
                try:
                    rows.append([float(row[c]) for c in columns])
                except (TypeError, ValueError):
                    raise InputFileError(
                        f"{path}: row {line_no}: expected {len(columns)} numbers, got {row}"
                    ) from None
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found") from None
    except csv.Error as exc:  # e.g. a field over the size limit (binary data)
        raise InputFileError(f"{path}: not valid CSV ({exc})") from None
    if not rows:
        raise InputFileError(f"{path}: no {what}")
    data = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputFileError(f"{path}: values must be finite")
    return data
