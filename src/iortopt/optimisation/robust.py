"""Robust aggregation of objective values over uncertainty scenarios: small pure JAX functions.

Every function maps ``values`` (S,), one value per scenario (S >= 1), to a scalar, and is
differentiable. With one scenario every aggregate is that value exactly, and with S identical
values :func:`expected` and :func:`smooth_worst` return it exactly too, so a scenario set of zero
magnitude gives the nominal objective.

    expected(values)                      mean over the scenarios
    smooth_worst(values, temperature)     log-mean-exp smooth maximum, relative temperature
    cvar(values, alpha)                   mean of the worst ``alpha`` fraction (CVaR)
    aggregate(values, kind, ...)          one of the three by name (``[robust] aggregate``)
    robust_objective(terms, aggregate)    f(doses (S, P), times, params): the weighted sum of
                                          each term aggregated over the scenarios
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Below this a relative temperature is the exact maximum (a smaller one would underflow).
MIN_TEMPERATURE = 1e-6


def expected(values: jnp.ndarray) -> jnp.ndarray:
    """Mean of ``values`` (S,) over the scenarios (equal scenario weights)."""
    values = jnp.asarray(values)
    if values.shape[0] == 1:
        return values[0]
    return jnp.mean(values)


def smooth_worst(values: jnp.ndarray, temperature: float) -> jnp.ndarray:
    """Smooth maximum of ``values`` (S,): ``m + T log(mean_s exp((v_s - m) / T))``.

    ``m`` is the largest value, ``T = temperature * max(|m|, tiny)`` (held out of the gradient),
    so ``temperature`` is relative to the term's size and dimensionless. The log-mean-exp lies
    between the mean (T -> infinity) and the maximum (T -> 0; ``temperature`` below
    :data:`MIN_TEMPERATURE` is the exact maximum) and is exactly ``v`` when every value is ``v``.
    """
    values = jnp.asarray(values)
    if values.shape[0] == 1:
        return values[0]
    top = jnp.max(values)
    if temperature < MIN_TEMPERATURE:
        return top
    scale = temperature * jnp.maximum(jnp.abs(jax.lax.stop_gradient(top)), 1e-30)
    return top + scale * jnp.log(jnp.mean(jnp.exp((values - top) / scale)))


def cvar_weights(n_scenarios: int, alpha: float) -> jnp.ndarray:
    """Weights (S,) of the scenarios sorted worst first in CVaR at tail fraction ``alpha``.

    The worst ``alpha * S`` scenarios share the weight, a fractional one taking its fraction:
    S = 4, alpha = 0.3 gives (1, 0.2, 0, 0) / 1.2. Weights sum to 1.

    Raises:
        ValueError: ``alpha`` outside (0, 1].
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"cvar alpha must be in (0, 1], got {alpha}")
    tail = alpha * n_scenarios
    rank = jnp.arange(n_scenarios)
    w = jnp.clip(tail - rank, 0.0, 1.0)
    return w / jnp.sum(w)


def cvar(values: jnp.ndarray, alpha: float) -> jnp.ndarray:
    """Conditional value at risk: mean of the worst (largest) ``alpha`` fraction of ``values``
    (S,), a fractional scenario counted by its fraction; alpha = 1 is the mean, alpha <= 1/S the
    maximum."""
    values = jnp.asarray(values)
    if values.shape[0] == 1:
        return values[0]
    worst_first = -jnp.sort(-values)
    return jnp.sum(cvar_weights(values.shape[0], alpha).astype(values.dtype) * worst_first)


def aggregate(
    values: jnp.ndarray, kind: str, temperature: float = 0.1, alpha: float = 0.2
) -> jnp.ndarray:
    """``values`` (S,) aggregated by ``kind``: ``"expected"``, ``"worst"`` or ``"cvar"``.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "expected":
        return expected(values)
    if kind == "worst":
        return smooth_worst(values, temperature)
    if kind == "cvar":
        return cvar(values, alpha)
    raise ValueError(f"robust aggregate must be 'expected', 'worst' or 'cvar', got {kind!r}")


def aggregator(kind: str, temperature: float = 0.1, alpha: float = 0.2) -> Callable:
    """``values -> aggregate(values, kind, temperature, alpha)`` (checks ``kind`` now)."""
    aggregate(jnp.zeros(1), kind, temperature, alpha)
    return lambda values: aggregate(values, kind, temperature, alpha)


def robust_objective(
    terms: Sequence, reduce: Callable[[jnp.ndarray], jnp.ndarray]
) -> Callable[[jnp.ndarray, jnp.ndarray, list], jnp.ndarray]:
    """``f(doses, times, params)``: sum over ``terms`` of ``weight * reduce(term over scenarios)``.

    ``terms``: :class:`iortopt.optimisation.objectives.Term` (``fn(dose, times, params)``);
    ``doses``: (S, P) dose in Gy per scenario on the optimisation voxels; each term is evaluated
    on every scenario at once (vmap) and then reduced, e.g. by :func:`aggregator`.
    """

    def total(doses, t, params):
        out = 0.0
        for term, p in zip(terms, params, strict=True):
            per_scenario = jax.vmap(lambda d, term=term, p=p: term.fn(d, t, p))(doses)
            out = out + p["weight"] * reduce(per_scenario)
        return out

    return total


def per_term_values(
    terms: Sequence, doses: jnp.ndarray, t: jnp.ndarray, params: list
) -> dict[str, list[float]]:
    """Each weighted term's value in every scenario (reports): name -> S floats (one compiled
    program for all terms)."""

    @jax.jit
    def values(doses, t, params):
        return [
            jax.vmap(lambda d, term=term, p=p: p["weight"] * term.fn(d, t, p))(doses)
            for term, p in zip(terms, params, strict=True)
        ]

    out = values(doses, t, params)
    return {
        term.name: [float(v) for v in np.asarray(row)] for term, row in zip(terms, out, strict=True)
    }


def axis_scenarios(
    axes: Sequence[tuple[str, int, bool]],
    sigma: dict[str, float],
    kind: str = "plus_minus",
    n_scenarios: int = 21,
    seed: int = 0,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Scenario rows over named uncertainty axes (numpy; the modalities' ``scenarios.py``).

    ``axes``: (name, n_components, one_sided): e.g. ``("shift_mm", 3, False)`` is a vector
    deviation with one plus/minus pair per component, ``("gap_mm", 1, True)`` a one-sided
    deviation (+sigma only; sampled: |N(0, sigma)|). ``sigma``: name -> one sigma (0: left out).
    Returns (label, {name: (n_components,) deviation}); row 0 is the nominal one (all zeros).
    ``"plus_minus"``: each component at +sigma and -sigma in turn; ``"sampled"``: ``n_scenarios
    - 1`` seeded Gaussian samples of every axis at once. With every sigma 0, the nominal only.
    """

    def zeros():
        return {name: np.zeros(n) for name, n, _ in axes}

    rows = [("nominal", zeros())]
    if all(sigma.get(name, 0.0) == 0 for name, _, _ in axes):
        return rows
    if kind == "sampled":
        rng = np.random.default_rng(seed)
        for k in range(1, n_scenarios):
            row = {}
            for name, n, one_sided in axes:
                v = (
                    rng.normal(0.0, sigma.get(name, 0.0), n)
                    if sigma.get(name, 0.0) > 0
                    else np.zeros(n)
                )
                row[name] = np.abs(v) if one_sided else v
            rows.append((f"sample_{k}", row))
        return rows
    for name, n, one_sided in axes:
        s = sigma.get(name, 0.0)
        if s <= 0:
            continue
        for i in range(n):
            for sign in (+1.0,) if one_sided else (+1.0, -1.0):
                row = zeros()
                row[name][i] = sign * s
                suffix = "xyz"[i] if n == 3 else (str(i) if n > 1 else "")
                rows.append(
                    (f"{name}{'_' + suffix if suffix else ''}{'+' if sign > 0 else '-'}", row)
                )
    return rows


def check_magnitudes(modality: str, defaults: dict, overrides: dict[str, float]) -> dict:
    """``defaults`` (axis -> {value, source, assumed}) with ``[robust] magnitudes`` applied.

    Raises:
        ValueError: an unknown axis (the caller names the field).
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"robust.magnitudes: unknown axis {unknown} for {modality}; expected {sorted(defaults)}"
        )
    out = {k: dict(v) for k, v in defaults.items()}
    for k, v in overrides.items():
        out[k] = {"value": float(v), "source": "config ([robust] magnitudes)", "assumed": False}
    return out
