"""Validation shared by the phantom parameter dataclasses (flap, breast, ELIOT)."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np


def invalid(params, name: str, value, expected: str) -> ValueError:
    """The error for one bad field: ``<Class>.<field> = <value> is invalid: expected ...``.

    ``params`` is the dataclass or an instance of it."""
    cls = params if isinstance(params, type) else type(params)
    return ValueError(f"{cls.__name__}.{name} = {value!r} is invalid: expected {expected}")


def check_fields(
    params,
    integers: dict[str, int],
    non_negative: tuple[str, ...] = (),
    signed: tuple[str, ...] = (),
) -> None:
    """Every field of the dataclass ``params`` is a finite number; ``integers`` (name -> minimum)
    are integers, ``non_negative`` are >= 0, ``signed`` any sign, all other fields > 0.

    Raises:
        ValueError naming the first invalid field, its value and what was expected.
    """
    for f in fields(params):
        value = getattr(params, f.name)
        if f.name in integers:
            low = integers[f.name]
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise invalid(params, f.name, value, f"an integer >= {low}")
        elif isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise invalid(params, f.name, value, "a number")
        elif not math.isfinite(value):
            raise invalid(params, f.name, value, "a finite number")
        elif f.name in signed:
            continue
        elif f.name in non_negative:
            if value < 0:
                raise invalid(params, f.name, value, "a number >= 0")
        elif value <= 0:
            raise invalid(params, f.name, value, "a number > 0")
