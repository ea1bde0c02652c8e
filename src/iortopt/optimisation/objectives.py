"""Objective terms for inverse planning: small pure functions of (dose, dwell times) that compose.

Each term maps ``dose_gy`` (P,) on the optimisation voxels and ``times_s`` (N,) to a scalar. A
structure enters through its weights ``w`` (P,), its fractional occupancy on those voxels. Dose
penalties are divided by the square of their reference dose so that weights are dimensionless and
comparable between prescriptions. :func:`combine` sums weighted terms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TermFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


class Term(NamedTuple):
    """A named objective term. ``fn(dose, times, params)``; ``params`` holds its numbers (weight,
    dose, volume) so they can enter a compiled optimiser as arguments: a sweep over weights or
    doses then reuses one compiled program instead of recompiling per value."""

    name: str
    params: dict[str, float]
    fn: Callable[[jnp.ndarray, jnp.ndarray, dict], jnp.ndarray]


def _wmean(w: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(w * x) / jnp.sum(w)


def underdose(w: jnp.ndarray, dose_min_gy: float) -> TermFn:
    """Mean over the structure of max(d_min - d, 0)^2 / d_min^2."""
    return lambda d, t: _wmean(w, jnp.square(jax.nn.relu(dose_min_gy - d))) / dose_min_gy**2


def overdose(w: jnp.ndarray, dose_max_gy: float) -> TermFn:
    """Mean over the structure of max(d - d_max, 0)^2 / d_max^2."""
    return lambda d, t: _wmean(w, jnp.square(jax.nn.relu(d - dose_max_gy))) / dose_max_gy**2


def max_dose(w: jnp.ndarray, dose_max_gy: float) -> TermFn:
    """Sum (not mean) over voxels of w max(d - d_max, 0)^2 / d_max^2: one hot voxel counts fully,
    however large the structure, which is what a maximum-dose limit means."""
    return lambda d, t: jnp.sum(w * jnp.square(jax.nn.relu(d - dose_max_gy))) / dose_max_gy**2


def mean_dose(w: jnp.ndarray, dose_limit_gy: float, scale_gy: float) -> TermFn:
    """max(mean - limit, 0)^2 / scale^2; with limit 0 this minimises the mean dose."""
    return lambda d, t: jnp.square(jax.nn.relu(_wmean(w, d) - dose_limit_gy)) / scale_gy**2


def dose_at_volume(
    d: jnp.ndarray, w: jnp.ndarray, volume: float | jnp.ndarray, n_valid=None
) -> jnp.ndarray:
    """D_v: minimum dose to the hottest ``volume`` (in units of w: fraction x sum(w) or voxels).

    ``n_valid``: only the first n_valid voxels are real, the rest padding of dose 0 and weight 0
    (:mod:`iortopt.optimisation.buckets`). The stable sort puts every real voxel before the
    padding (doses are >= 0), so clamping the index to n_valid - 1 gives the unpadded D_v.
    """
    order = jnp.argsort(-d)
    cum = jnp.cumsum(w[order])
    last = d.shape[0] - 1 if n_valid is None else n_valid - 1
    k = jnp.minimum(jnp.searchsorted(cum, volume), last)
    return d[order][k]


def dose_at_volume_top_k(
    d: jnp.ndarray, w: jnp.ndarray, volume: float | jnp.ndarray, k: int, n_valid=None
) -> jnp.ndarray:
    """:func:`dose_at_volume` from the ``k`` hottest voxels only (``lax.top_k``, a partial sort),
    falling back to the full sort when those ``k`` voxels do not hold ``volume``.

    The result equals :func:`dose_at_volume` bit for bit: top_k orders equal doses by index, as
    the stable argsort does, and a cumulative sum's first k values do not depend on what follows
    them. For a small volume of a large structure (a bowel D2cc) the partial sort is several times
    cheaper than the full one. Not for use under ``vmap``: there the ``cond`` would compute both
    branches. ``k``: static, see :func:`top_k_size`.
    """
    d = jax.lax.stop_gradient(d)
    values, index = jax.lax.top_k(d, k)
    cum = jnp.cumsum(w[index])
    last = d.shape[0] - 1 if n_valid is None else n_valid - 1

    def within(_):
        return values[jnp.minimum(jnp.searchsorted(cum, volume), last)]

    def full(_):
        return dose_at_volume(d, w, volume, n_valid)

    return jax.lax.cond(cum[-1] >= volume, within, full, None)


#: Smallest partial sort :func:`top_k_size` proposes; sizes are powers of two from it, so cases of
#: similar size share compiled programs.
TOP_K_MIN = 64


def top_k_size(w: np.ndarray, volume: float, n_rows: int) -> int:
    """The ``k`` of :func:`dose_at_volume_top_k` for a D_v term, or 0 to keep the full sort.

    ``k`` is a power of two (at least ``TOP_K_MIN``) large enough that any ``k`` of the
    structure's voxels hold twice ``volume`` (in units of ``w``: its smallest weights are summed),
    so a replan may double the volume before the fallback sort is needed; 0 when that ``k``
    exceeds a quarter of the ``n_rows`` sorted, where the partial sort stops paying.
    """
    weights = np.sort(np.asarray(w, np.float64)[np.asarray(w) > 0])
    need = int(np.searchsorted(np.cumsum(weights), 2.0 * float(volume))) + 1
    if need > weights.size:
        return 0
    k = max(TOP_K_MIN, 1 << (need - 1).bit_length())
    return k if 4 * k <= n_rows else 0


def term_top_k_size(w: np.ndarray, params: Mapping, n_rows: int) -> int:
    """:func:`top_k_size` of a DVH term from its numbers: ``volume_fraction`` of the structure's
    weight or ``volume_voxels`` (the rule of :func:`_volume_in_weight_units`, on the host)."""
    w = np.asarray(w, np.float64)
    fraction, voxels = params.get("volume_fraction"), params.get("volume_voxels")
    volume = float(fraction) * float(w.sum()) if voxels is None else float(voxels)
    return top_k_size(w, volume, n_rows)


def _volume_in_weight_units(w: jnp.ndarray, volume_fraction, volume_voxels):
    return volume_fraction * jnp.sum(w) if volume_voxels is None else volume_voxels


def dvh_min(
    w: jnp.ndarray, dose_gy: float, volume_fraction=None, volume_voxels=None, dv_fn=None
) -> TermFn:
    """Surrogate of D_v >= dose (at least volume v at or above dose).

    Penalises the voxels that must be raised, those with D_v(current) <= d < dose, quadratically:
    the usual differentiable DVH-constraint surrogate (Wu and Mohan 2000). ``dv_fn``: how D_v is
    found (default :func:`dose_at_volume`, a sort; batched optimisers pass a sort-free one).
    """
    dv_fn = dv_fn or dose_at_volume

    def fn(d, t):
        dv = jax.lax.stop_gradient(
            dv_fn(d, w, _volume_in_weight_units(w, volume_fraction, volume_voxels))
        )
        mask = (d >= dv).astype(d.dtype)
        return _wmean(w, mask * jnp.square(jax.nn.relu(dose_gy - d))) / dose_gy**2

    return fn


def dvh_max(
    w: jnp.ndarray, dose_gy: float, volume_fraction=None, volume_voxels=None, dv_fn=None
) -> TermFn:
    """Surrogate of D_v <= dose (at most volume v above dose): penalises voxels with
    dose < d <= D_v(current). ``dv_fn``: as in :func:`dvh_min`."""
    dv_fn = dv_fn or dose_at_volume

    def fn(d, t):
        dv = jax.lax.stop_gradient(
            dv_fn(d, w, _volume_in_weight_units(w, volume_fraction, volume_voxels))
        )
        mask = (d <= dv).astype(d.dtype)
        return _wmean(w, mask * jnp.square(jax.nn.relu(d - dose_gy))) / dose_gy**2

    return fn


def modulation(pairs: np.ndarray) -> TermFn:
    """Dwell-time modulation restriction: mean squared difference of neighbouring dwell times in a
    catheter, relative to the mean dwell time (so the weight does not depend on source strength)."""
    i, j = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])

    def fn(d, t):
        if pairs.shape[0] == 0:
            return jnp.zeros((), t.dtype)
        scale = jax.lax.stop_gradient(jnp.mean(t)) + 1e-6
        return jnp.mean(jnp.square(t[i] - t[j])) / scale**2

    return fn


def term_params(terms: Sequence[Term], dtype=jnp.float32) -> list[dict[str, jnp.ndarray]]:
    """The terms' numbers as a pytree of arrays (pass it to the compiled objective)."""
    return [{k: jnp.asarray(v, dtype) for k, v in term.params.items()} for term in terms]


def combine(terms: Sequence[Term]) -> Callable[[jnp.ndarray, jnp.ndarray, list], jnp.ndarray]:
    """Weighted sum of ``terms`` as one function of (dose, times, params from term_params)."""
    return lambda d, t, params: sum(
        p["weight"] * term.fn(d, t, p) for term, p in zip(terms, params, strict=True)
    )


def evaluate(terms: Sequence[Term], d: jnp.ndarray, t: jnp.ndarray) -> dict[str, float]:
    """Each weighted term's value (for reports), computed as one compiled program and fetched
    with one transfer (term by term, eagerly, every operation was dispatched on its own)."""
    if not terms:
        return {}

    def values(d, t, params):
        return jnp.stack(
            [p["weight"] * term.fn(d, t, p) for term, p in zip(terms, params, strict=True)]
        )

    out = np.asarray(jax.jit(values)(d, t, term_params(terms, d.dtype)), np.float64)
    return {term.name: float(v) for term, v in zip(terms, out, strict=True)}


def build_terms(
    objectives: Sequence,
    weights: Mapping[str, jnp.ndarray],
    voxel_volume_cm3: float,
    neighbour_pairs: np.ndarray,
    prescription_gy: float,
    dv_fn=None,
    partial_sort: bool = False,
) -> list[Term]:
    """Terms from config objectives (:class:`iortopt.config.Objective`).

    Args:
        objectives: config entries with type, structure, dose_gy, volume_percent/volume_cc, weight.
        weights: structure name -> (P,) occupancy on the optimisation voxels.
        voxel_volume_cm3: converts volume_cc to voxel units.
        neighbour_pairs: (K, 2) indices of neighbouring active dwells (modulation term).
        prescription_gy: scale of the mean-dose term when its limit is 0.
        dv_fn: D_v of the DVH terms (None: :func:`dose_at_volume`).
        partial_sort: with ``dv_fn`` None, a DVH term of a small volume finds its D_v by a
            partial sort (:func:`dose_at_volume_top_k`, the same values); not for terms that
            will be evaluated under ``vmap``.
    Raises:
        KeyError naming an unknown structure (the caller turns it into a ConfigError).
    """
    terms = []
    for k, obj in enumerate(objectives):
        name = f"{k}:{obj.type}" + (f":{obj.structure}" if obj.structure else "")
        if obj.type == "modulation":
            smooth = modulation(neighbour_pairs)
            terms.append(Term(name, {"weight": obj.weight}, lambda d, t, p, f=smooth: f(d, t)))
            continue
        if obj.structure not in weights:
            raise KeyError(
                f"objectives[{k}].structure: unknown structure {obj.structure!r}; "
                f"have {sorted(weights)}"
            )
        w_all = np.asarray(weights[obj.structure])
        inside = np.flatnonzero(w_all > 0)
        if inside.size == 0:
            raise ValueError(
                f"objectives[{k}].structure: {obj.structure!r} has no voxels on the grid"
            )
        # indexed on the host: an eager gather on the device is one compiled program per term
        w = jnp.asarray(w_all[inside])
        dose = obj.dose_gy
        if obj.type in ("underdose", "overdose", "max_dose", "dvh_min", "dvh_max") and dose <= 0:
            raise ValueError(f"objectives[{k}].dose_gy: must be > 0 for type {obj.type!r}")
        params = {"weight": obj.weight, "dose_gy": dose}
        if obj.type in ("underdose", "overdose", "max_dose"):
            factory = {"underdose": underdose, "overdose": overdose, "max_dose": max_dose}[obj.type]
            make = lambda p, w=w, f=factory: f(w, p["dose_gy"])  # noqa: E731
        elif obj.type == "mean_dose":
            params["scale_gy"] = dose if dose > 0 else prescription_gy
            make = lambda p, w=w: mean_dose(w, p["dose_gy"], p["scale_gy"])  # noqa: E731
        else:
            factory = dvh_min if obj.type == "dvh_min" else dvh_max
            if obj.volume_percent is not None:
                params["volume_fraction"] = obj.volume_percent / 100.0
            else:
                params["volume_voxels"] = obj.volume_cc / voxel_volume_cm3
            k_top = term_top_k_size(w_all[inside], params, inside.size) if partial_sort else 0
            term_dv = (
                functools.partial(dose_at_volume_top_k, k=k_top)
                if dv_fn is None and k_top
                else dv_fn
            )
            make = lambda p, w=w, f=factory, dv=term_dv: f(  # noqa: E731
                w, p["dose_gy"], p.get("volume_fraction"), p.get("volume_voxels"), dv_fn=dv
            )
        take = _taker(inside)
        terms.append(Term(name, params, lambda d, t, p, m=make, g=take: m(p)(g(d), t)))
    return terms


def _taker(inside: np.ndarray) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """``d -> d[inside]``: a static slice when the indices are one contiguous run (cheaper to
    differentiate than a gather, whose gradient is a scatter), else a gather."""
    start, stop = int(inside[0]), int(inside[-1]) + 1
    if stop - start == inside.size:
        return lambda d: d[start:stop]
    idx = jnp.asarray(inside)
    return lambda d: d[idx]
