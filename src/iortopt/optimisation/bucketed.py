"""A dwell-time problem on an explicit influence matrix whose compiled programs depend only on its
structure and size buckets, never on the patient's numbers.

    problem = build_problem(objectives, blocks, matrix_rows, pairs, vv_cm3, rx_gy, dtype)
    result = minimise_problem(problem, init_times_s, t_max_s, method=...)
    values = term_values(problem, times_s)          # every weighted term, one program

The rows of the matrix come as contiguous per-structure blocks (the layout of
:func:`iortopt.modalities.hdr_flap.pareto.term_blocks`); each block is padded to a bucket size
(:mod:`iortopt.optimisation.buckets`) with zero rows of weight 0, the dwells with zero columns held
at zero time by the dwell mask, the neighbour pairs with pairs of weight 0. What the compiled
step is specialised on, :class:`Layout`, holds the term types, which block each reads and the
padded sizes; the weights, the real counts, the pairs, the mask, the matrix and every term number
are arguments. Two cases whose sizes fall in the same buckets therefore run the same compiled
step (in one process through the jit cache, across processes through the persistent cache).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from iortopt.optimisation import objectives
from iortopt.optimisation.buckets import (
    DWELL_QUANTUM,
    ROW_QUANTUM,
    pad_axis,
    padded_size,
    valid_mask,
)
from iortopt.optimisation.optax_loop import (
    OptimizationResult,
    minimise_u,
    times_from_u,
    u_from_times,
)

_DOSE_TERMS = ("underdose", "overdose", "max_dose", "mean_dose", "dvh_min", "dvh_max")


@dataclass(frozen=True)
class Layout:
    """What a compiled program of the problem depends on (hashable): per term (type, block index,
    volume kind "" / "fraction" / "voxels", the partial sort size of a DVH term's D_v or 0 for
    the full sort), the padded rows of each block, the padded dwell and pair counts."""

    terms: tuple[tuple[str, int, str, int], ...]
    block_rows: tuple[int, ...]
    n_dwells: int
    n_pairs: int

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.block_rows)]))


@dataclass
class Problem:
    """A bucketed problem: its layout, term names, per-term numbers (objectives.term_params
    shape) and the array data, plus the real dwell count."""

    layout: Layout
    names: list[str]
    params: list[dict]
    data: dict
    n_dwells: int

    def with_params(self, params: list[dict]) -> Problem:
        """The same problem with other term numbers (objectives.term_params of the same terms)."""
        return Problem(self.layout, self.names, params, self.data, self.n_dwells)

    def with_mask(self, active: np.ndarray) -> Problem:
        """The same problem with only the dwells ``active`` (N,) bool allowed time."""
        mask = np.zeros(self.layout.n_dwells)
        mask[: self.n_dwells] = np.asarray(active, bool)
        data = dict(self.data, dwell_mask=jnp.asarray(mask, self.data["dwell_mask"].dtype))
        return Problem(self.layout, self.names, self.params, data, self.n_dwells)


def build_problem(
    objective_cfgs: Sequence,
    blocks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    neighbour_pairs: np.ndarray,
    voxel_volume_cm3: float,
    prescription_gy: float,
    dtype=jnp.float32,
    buckets: bool | None = None,
) -> Problem:
    """The bucketed problem of config objectives (:class:`iortopt.config.Objective`).

    Args:
        blocks: structure -> (rows (R_s, N) Gy/s, weights (R_s,)) of the voxels its terms read
            (a mean-dose-only structure may be one row of its mean, weight 1).
        neighbour_pairs: (K, 2) indices of neighbouring dwells (modulation term).
        buckets: pad to bucket sizes (None: on unless ``IORTOPT_NO_BUCKETS``).
    Raises:
        KeyError / ValueError as :func:`objectives.build_terms` (unknown structure, bad dose).
    """
    names_s = list(blocks)
    n = next(iter(blocks.values()))[0].shape[1] if blocks else 0
    n_pad = padded_size(n, DWELL_QUANTUM, buckets)
    rows, ws, n_valid, block_rows = [], [], [], []
    for s in names_s:
        m, w = blocks[s]
        size = m.shape[0] if m.shape[0] == 1 else padded_size(m.shape[0], ROW_QUANTUM, buckets)
        rows.append(pad_axis(pad_axis(np.asarray(m), n_pad, axis=1), size))
        ws.append(jnp.asarray(pad_axis(np.asarray(w), size), dtype))
        n_valid.append(m.shape[0])
        block_rows.append(size)
    pairs = np.asarray(neighbour_pairs, np.int32).reshape(-1, 2)
    k_pad = padded_size(pairs.shape[0], DWELL_QUANTUM, buckets)
    terms, names, params = term_specs(
        objective_cfgs, names_s, voxel_volume_cm3, prescription_gy, dtype
    )
    terms = [
        (*term, _top_k(term, p, blocks[names_s[term[1]]][1], block_rows[term[1]]))
        for term, p in zip(terms, params, strict=True)
    ]
    layout = Layout(tuple(terms), tuple(block_rows), n_pad, k_pad)
    matrix = np.concatenate(rows, axis=0) if rows else np.zeros((0, n_pad))
    data = {
        "matrix": jnp.asarray(matrix, dtype),
        "w": tuple(ws),
        "n_valid": tuple(jnp.asarray(v, jnp.int32) for v in n_valid),
        "pairs": jnp.asarray(pad_axis(pairs, k_pad), jnp.int32),
        "pair_w": jnp.asarray(valid_mask(pairs.shape[0], k_pad), dtype),
        "n_pairs": jnp.asarray(max(pairs.shape[0], 1), dtype),
        "dwell_mask": jnp.asarray(valid_mask(n, n_pad), dtype),
        "n_dwells": jnp.asarray(max(n, 1), dtype),
    }
    return Problem(layout, names, params, data, n)


def term_specs(
    objective_cfgs: Sequence,
    structures: Sequence[str],
    voxel_volume_cm3: float,
    prescription_gy: float,
    dtype=jnp.float32,
) -> tuple[tuple[tuple[str, int, str], ...], list[str], list[dict]]:
    """Per config objective: its (type, block index, volume kind), its name and its numbers as
    arrays (the ``params`` argument of the compiled programs).

    Raises:
        KeyError: an unknown structure; ValueError: a dose <= 0 where it must be > 0.
    """
    terms, params, names = [], [], []
    for k, obj in enumerate(objective_cfgs):
        name = f"{k}:{obj.type}" + (f":{obj.structure}" if obj.structure else "")
        names.append(name)
        if obj.type == "modulation":
            terms.append(("modulation", -1, ""))
            params.append({"weight": obj.weight})
            continue
        if obj.structure not in structures:
            raise KeyError(
                f"objectives[{k}].structure: unknown structure {obj.structure!r}; "
                f"have {sorted(structures)}"
            )
        if obj.type not in _DOSE_TERMS:
            raise ValueError(f"objectives[{k}].type: unknown term type {obj.type!r}")
        dose = obj.dose_gy
        if obj.type != "mean_dose" and dose <= 0:
            raise ValueError(f"objectives[{k}].dose_gy: must be > 0 for type {obj.type!r}")
        p = {"weight": obj.weight, "dose_gy": dose}
        kind = ""
        if obj.type == "mean_dose":
            p["scale_gy"] = dose if dose > 0 else prescription_gy
        elif obj.type in ("dvh_min", "dvh_max"):
            if obj.volume_percent is not None:
                kind, p["volume_fraction"] = "fraction", obj.volume_percent / 100.0
            else:
                kind, p["volume_voxels"] = "voxels", obj.volume_cc / voxel_volume_cm3
        terms.append((obj.type, list(structures).index(obj.structure), kind))
        params.append(p)
    params = [{key: jnp.asarray(v, dtype) for key, v in p.items()} for p in params]
    return tuple(terms), names, params


def _top_k(term: tuple[str, int, str], p: dict, w: np.ndarray, n_rows: int) -> int:
    """The partial sort size of a DVH term's D_v (:func:`objectives.top_k_size`), 0 for others.
    Sized from the config's volume: a replan's larger volume falls back to the full sort."""
    return objectives.term_top_k_size(w, p, n_rows) if term[2] else 0


def _modulation(t, data, n_pairs: int):
    """objectives.modulation on padded dwells and pairs: the padding has weight 0 and the mean
    dwell time counts the real dwells only."""
    if n_pairs == 0:
        return jnp.zeros((), t.dtype)
    i, j = data["pairs"][:, 0], data["pairs"][:, 1]
    scale = jax.lax.stop_gradient(jnp.sum(t * data["dwell_mask"]) / data["n_dwells"]) + 1e-6
    return jnp.sum(data["pair_w"] * jnp.square(t[i] - t[j])) / data["n_pairs"] / scale**2


def _term_value(kind, d_block, w, n_valid, p, t, data, layout):
    ttype, _, volume, top_k = kind
    if ttype == "modulation":
        return _modulation(t, data, layout.n_pairs)
    if ttype in ("underdose", "overdose", "max_dose"):
        factory = {
            "underdose": objectives.underdose,
            "overdose": objectives.overdose,
            "max_dose": objectives.max_dose,
        }[ttype]
        return factory(w, p["dose_gy"])(d_block, t)
    if ttype == "mean_dose":
        return objectives.mean_dose(w, p["dose_gy"], p["scale_gy"])(d_block, t)
    factory = objectives.dvh_min if ttype == "dvh_min" else objectives.dvh_max
    if top_k:
        dv_fn = functools.partial(objectives.dose_at_volume_top_k, k=top_k, n_valid=n_valid)
    else:
        dv_fn = functools.partial(objectives.dose_at_volume, n_valid=n_valid)
    if volume == "fraction":
        return factory(w, p["dose_gy"], p["volume_fraction"], dv_fn=dv_fn)(d_block, t)
    return factory(w, p["dose_gy"], volume_voxels=p["volume_voxels"], dv_fn=dv_fn)(d_block, t)


def weighted_terms(layout: Layout, t, params, data) -> jnp.ndarray:
    """(T,) every term's weighted value at padded times ``t`` (already masked)."""
    d = data["matrix"] @ t
    off = layout.offsets
    values = []
    for kind, p in zip(layout.terms, params, strict=True):
        b = kind[1]
        if b < 0:
            d_block, w, nv = None, None, None
        else:
            d_block, w, nv = d[off[b] : off[b + 1]], data["w"][b], data["n_valid"][b]
        values.append(p["weight"] * _term_value(kind, d_block, w, nv, p, t, data, layout))
    return jnp.stack(values)


@functools.lru_cache(maxsize=32)
def objective_of_u(layout: Layout, dtype_name: str) -> Callable:
    """``f(u, params, data, t_max_s)``: the objective of the unconstrained variable, one function
    object per (layout, dtype) so the optimiser's compiled step is shared by every problem of
    that layout (optax_loop caches the step per function)."""
    dtype = jnp.dtype(dtype_name)

    def f(u, params, data, t_max_s):
        t = times_from_u(u, t_max_s) * data["dwell_mask"]
        return jnp.asarray(jnp.sum(weighted_terms(layout, t, params, data)), dtype)

    return f


@functools.lru_cache(maxsize=32)
def _values_program(layout: Layout):
    return jax.jit(functools.partial(weighted_terms, layout))


def padded_times(problem: Problem, times_s: np.ndarray) -> np.ndarray:
    return pad_axis(np.asarray(times_s, np.float64), problem.layout.n_dwells)


def term_values(problem: Problem, times_s: np.ndarray) -> dict[str, float]:
    """Each weighted term's value at the real dwell times ``times_s`` (N,), as one program."""
    dtype = problem.data["matrix"].dtype
    t = jnp.asarray(padded_times(problem, times_s), dtype) * problem.data["dwell_mask"]
    out = np.asarray(_values_program(problem.layout)(t, problem.params, problem.data), np.float64)
    return dict(zip(problem.names, (float(v) for v in out), strict=True))


def minimise_problem(
    problem: Problem, init_times_s: np.ndarray, t_max_s: float, **loop_settings
) -> OptimizationResult:
    """:func:`iortopt.optimisation.optax_loop.minimise` of a bucketed problem; times (N,) of the
    real dwells in and out (s). ``loop_settings``: method, max_iterations, tolerance,
    learning_rate, progress, checkpoint, checkpoint_every
    (:func:`~iortopt.optimisation.optax_loop.minimise_u`)."""
    dtype = problem.data["matrix"].dtype
    f = objective_of_u(problem.layout, jnp.dtype(dtype).name)
    n = problem.n_dwells
    # padded dwells start at the first real dwell's time: their time is masked to 0 anyway
    init = pad_axis(np.asarray(init_times_s, np.float64), problem.layout.n_dwells)
    init[n:] = init[0] if n else 0.0
    return minimise_u(
        f,
        u_from_times(init, t_max_s).astype(dtype),
        t_max_s,
        operands=(problem.params, problem.data, jnp.asarray(t_max_s, dtype)),
        n_dwells=n,
        **loop_settings,
    )
