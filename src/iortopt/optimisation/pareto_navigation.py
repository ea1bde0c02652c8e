"""Choosing a plan from a Pareto set by its metrics: ``"bowel.D2cc_gy <= 10"``, ``"CTV.D90_gy"``.

A condition is ``structure.metric op number`` with ``op`` one of ``<=``, ``>=``, ``<``, ``>``; an
aim names one ``structure.metric`` to maximise or minimise. Both are read by regular expressions
(never evaluated). :func:`choose` keeps the non-dominated plans that meet every condition and
returns the best for the aim; with none feasible it raises :class:`NoFeasiblePlan` holding the
plans closest to feasible (smallest sum of relative violations).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COLUMN = r"(?P<structure>[A-Za-z0-9_\-]+)\.(?P<metric>[A-Za-z0-9_.]+)"
_CONDITION = re.compile(rf"^\s*{_COLUMN}\s*(?P<op><=|>=|<|>)\s*(?P<value>{_NUMBER})\s*$")
_AIM = re.compile(rf"^\s*{_COLUMN}\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class BadExpression(ValueError):
    """A condition or aim that does not parse or names an unknown ``structure.metric``."""


@dataclass(frozen=True)
class Condition:
    column: str  # "structure.metric"
    op: str
    value: float

    def met(self, values: np.ndarray) -> np.ndarray:
        return _OPS[self.op](values, self.value) & np.isfinite(values)

    def violation(self, values: np.ndarray) -> np.ndarray:
        """How far each value is from meeting the condition, relative to |value| (0 if met)."""
        scale = max(abs(self.value), 1e-9)
        gap = values - self.value if self.op in ("<=", "<") else self.value - values
        return np.where(np.isfinite(values), np.maximum(gap, 0.0) / scale, np.inf)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


def _known(column: str, columns: Sequence[str], text: str) -> str:
    if column not in columns:
        structures = sorted({c.split(".", 1)[0] for c in columns})
        metrics = sorted({c.split(".", 1)[1] for c in columns})
        raise BadExpression(
            f"{text!r}: unknown {column!r}; structures {structures}, metrics {metrics}"
        )
    return column


def parse_condition(text: str, columns: Sequence[str]) -> Condition:
    """``"bowel.D2cc_gy <= 10"`` -> :class:`Condition` (``columns``: the known metrics).

    Raises:
        BadExpression: naming the text and what is wrong.
    """
    m = _CONDITION.match(text)
    if m is None:
        raise BadExpression(
            f"{text!r}: expected 'structure.metric OP number' with OP one of <=, >=, <, > "
            "(e.g. 'bowel.D2cc_gy <= 10')"
        )
    column = _known(f"{m['structure']}.{m['metric']}", columns, text)
    value = float(m["value"])
    if not np.isfinite(value):
        raise BadExpression(f"{text!r}: the number must be finite")
    return Condition(column, m["op"], value)


def parse_aim(text: str, columns: Sequence[str]) -> str:
    """``"CTV.D90_gy"`` -> the column name (BadExpression if it does not parse or is unknown)."""
    m = _AIM.match(text)
    if m is None:
        raise BadExpression(f"{text!r}: expected 'structure.metric' (e.g. 'CTV.D90_gy')")
    return _known(f"{m['structure']}.{m['metric']}", columns, text)


class NoFeasiblePlan(LookupError):
    """No non-dominated plan meets every condition; ``closest`` holds (plan index, total
    relative violation, {column: value}) of the nearest ones."""

    def __init__(self, conditions: Sequence[Condition], closest: list[tuple[int, float, dict]]):
        self.conditions = list(conditions)
        self.closest = closest
        super().__init__("no non-dominated plan meets " + " and ".join(map(str, conditions)))


def choose(
    columns: Sequence[str],
    metrics: np.ndarray,
    non_dominated: np.ndarray,
    conditions: Sequence[Condition],
    aim: str,
    maximise: bool = True,
    n_closest: int = 3,
) -> int:
    """Index of the non-dominated plan meeting every condition with the best ``aim`` value.

    Args:
        columns: (M,) ``structure.metric`` names of the columns of ``metrics`` (K, M).
    Raises:
        NoFeasiblePlan: none meets the conditions (the closest ``n_closest`` are attached).
    """
    columns = list(columns)
    candidates = np.asarray(non_dominated, bool).copy()
    violation = np.zeros(metrics.shape[0])
    for c in conditions:
        values = metrics[:, columns.index(c.column)]
        candidates &= c.met(values)
        violation += c.violation(values)
    aim_values = metrics[:, columns.index(aim)]
    candidates &= np.isfinite(aim_values)
    if not np.any(candidates):
        pool = np.flatnonzero(non_dominated)
        order = pool[np.argsort(violation[pool], kind="stable")][:n_closest]
        shown = list(dict.fromkeys([c.column for c in conditions] + [aim]))
        closest = [
            (
                int(i),
                float(violation[i]),
                {col: float(metrics[i, columns.index(col)]) for col in shown},
            )
            for i in order
        ]
        raise NoFeasiblePlan(conditions, closest)
    score = np.where(candidates, aim_values if maximise else -aim_values, -np.inf)
    return int(np.argmax(score))
