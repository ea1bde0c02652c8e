"""Along-away QA tables: the consensus HEBD 2012 tables packaged with iortopt, and recomputing them.

An along-away table gives the dose rate per unit air-kerma strength (cGy h^-1 U^-1) at points
(z along the source axis, y away from it), in cm from the source centre, z > 0 towards the tip.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from iortopt.errors import InputFileError
from iortopt.io.csv_table import read_numeric_csv
from iortopt.physics.sources import SourceData
from iortopt.physics.tg43 import TG43Kernel, dose_rate_per_sk


@dataclass(frozen=True)
class AlongAwayTable:
    """Reference along-away table; ``flagged`` marks interpolated, extrapolated or inside-source
    cells."""

    z_cm: np.ndarray
    y_cm: np.ndarray
    dose_rate: np.ndarray  # cGy h^-1 U^-1, nan where the table has no value
    flagged: np.ndarray  # bool
    flag_interp: np.ndarray | None = None  # bool: interpolated or extrapolated
    flag_inside: np.ndarray | None = None  # bool: inside the source

    @property
    def r_cm(self) -> np.ndarray:
        return np.hypot(self.z_cm, self.y_cm)


def read_along_away_csv(source) -> AlongAwayTable:
    """Read an along-away table in the packaged CSV layout (``#`` comment lines, then columns
    z_along_cm, y_away_cm, dose_rate_cGy_h-1_U-1, flag_interp_or_extrap, flag_inside_source).

    ``source`` is a path or an open text resource.

    Raises:
        InputFileError: naming the file, when a column is missing or a value is not a number.
    """
    name = str(source)
    if isinstance(source, (str, Path)):
        with Path(source).open(newline="") as fh:
            return _parse_along_away(fh, name)
    with source.open() as fh:
        return _parse_along_away(fh, name)


def _parse_along_away(fh, name: str) -> AlongAwayTable:
    rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    columns = (
        "z_along_cm",
        "y_away_cm",
        "dose_rate_cGy_h-1_U-1",
        "flag_interp_or_extrap",
        "flag_inside_source",
    )
    if not rows or any(key not in rows[0] for key in columns):
        raise InputFileError(f"{name}: expected the columns {', '.join(columns)}")

    def col(key: str) -> np.ndarray:
        try:
            return np.array([float(r[key]) if r[key] else np.nan for r in rows])
        except (TypeError, ValueError) as exc:
            raise InputFileError(f"{name}: column {key}: {exc}") from None

    interp = col("flag_interp_or_extrap") > 0
    inside = col("flag_inside_source") > 0
    return AlongAwayTable(
        z_cm=col("z_along_cm"),
        y_cm=col("y_away_cm"),
        dose_rate=col("dose_rate_cGy_h-1_U-1"),
        flagged=interp | inside,
        flag_interp=interp,
        flag_inside=inside,
    )


def consensus_table(source: SourceData) -> AlongAwayTable | None:
    """The packaged consensus QA table of ``source``'s model, or None if there is none."""
    resource = (
        resources.files("iortopt") / "data" / "qa" / f"{source.name}_HEBD2012_QA_along_away.csv"
    )
    if source.dataset != "HEBD2012" or not resource.is_file():
        return None
    return read_along_away_csv(resource)


def read_points_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``z_along_cm,y_away_cm`` points from a CSV file with that header."""
    data = read_numeric_csv(path, ("z_along_cm", "y_away_cm"), "points")
    z_arr, y_arr = data[:, 0], data[:, 1]
    if np.any(y_arr < 0):
        raise InputFileError(f"{path}: points must have y_away_cm >= 0")
    return z_arr, y_arr


def along_away(kernel: TG43Kernel, z_cm: np.ndarray, y_cm: np.ndarray) -> np.ndarray:
    """Dose rate per unit S_K (cGy h^-1 U^-1) at along/away points (cm)."""
    dtype = kernel.g_values.dtype
    return np.asarray(dose_rate_per_sk(jnp.asarray(z_cm, dtype), jnp.asarray(y_cm, dtype), kernel))


def compare_with_consensus(kernel: TG43Kernel, table: AlongAwayTable) -> dict:
    """Relative deviations (%) from a consensus table at the points it does not flag.

    Returns max |deviation| for r >= 0.25 cm and for r >= 1 cm, the number of points compared and
    the worst point, as used by the acceptance criteria (1 % and 0.3 %).
    """
    ok = ~table.flagged & np.isfinite(table.dose_rate) & (table.r_cm >= 0.25)
    computed = along_away(kernel, table.z_cm[ok], table.y_cm[ok])
    dev = 100.0 * (computed / table.dose_rate[ok] - 1.0)
    far = table.r_cm[ok] >= 1.0
    worst = int(np.argmax(np.abs(dev)))
    return {
        "n_points": int(ok.sum()),
        "max_abs_dev_percent_r_ge_0.25cm": float(np.max(np.abs(dev))),
        "max_abs_dev_percent_r_ge_1cm": float(np.max(np.abs(dev[far]))),
        "worst_point_z_y_cm": [float(table.z_cm[ok][worst]), float(table.y_cm[ok][worst])],
    }
