"""Size buckets: patient-dependent array sizes rounded up to a small ladder of sizes, so that a
new case of similar size reuses the compiled programs of an earlier one instead of compiling anew.

The ladder is geometric with ratio :data:`RATIO` (1.25), each rung rounded up to a multiple of a
quantum (64 voxel rows, 16 dwells or dwell pairs). Why these numbers: a size n is padded by at
most 25 % (plus one quantum), so the padded work per iteration stays within about 1.25x of the
exact one, while the number of distinct sizes between 1 000 and 100 000 rows is about 20, so a
clinic's cases of similar size share a handful of programs. Multiples of 16/64 keep the padded
arrays aligned to vector widths. A finer ladder (say 1.1) would compile more often; a coarser one
(2x, powers of two) would waste up to half of each iteration.

Padding rules (see :mod:`iortopt.optimisation.bucketed`): padded dwells have zero influence and
are held at zero time by a mask; padded voxel rows have weight 0 in every term and are kept out
of the dose-at-volume search, so a padded problem has the same optimum as the exact one.

Where: the replanning session (:mod:`iortopt.modalities.hdr_flap.replan`) always; ``iortopt run``
only with ``IORTOPT_BUCKET_RUNS=1`` (:func:`bucketed_runs_enabled`). Off: ``IORTOPT_NO_BUCKETS=1``
(every size exact, same code path) or ``buckets=False`` where a function takes it.
"""

from __future__ import annotations

import math
import os

import numpy as np

#: Growth factor between neighbouring bucket sizes.
RATIO = 1.25
#: Quantum of voxel rows and of dwells / dwell pairs.
ROW_QUANTUM = 64
DWELL_QUANTUM = 16
NO_BUCKETS_ENV = "IORTOPT_NO_BUCKETS"
RUN_BUCKETS_ENV = "IORTOPT_BUCKET_RUNS"


def buckets_enabled() -> bool:
    """False when ``IORTOPT_NO_BUCKETS`` is set to anything but empty, ``0``, ``false``, ``no``."""
    return os.environ.get(NO_BUCKETS_ENV, "").strip().lower() in ("", "0", "false", "no")


def bucketed_runs_enabled() -> bool:
    """True when ``IORTOPT_BUCKET_RUNS`` is set (not empty, ``0``, ``false``, ``no``): ``iortopt
    run`` of an HDR flap plan then optimises the bucketed problem too. Off by default because the
    float32 L-BFGS run stops where the objective is flat, so the re-associated sums of another
    layout move the stopping point: same objective within ~3e-6, metrics within ~1 % (measured on
    configs/flap_default.toml), not the bit-identical results the shipped configs keep."""
    value = os.environ.get(RUN_BUCKETS_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no") and buckets_enabled()


def bucket_size(n: int, quantum: int, ratio: float = RATIO) -> int:
    """The smallest rung >= ``n`` of the ladder ``quantum * ceil(ratio**k)``-style sizes.

    Rungs are ``q * m_k`` with ``m_0 = 1`` and ``m_{k+1} = max(m_k + 1, ceil(m_k * ratio))``,
    so they depend only on (quantum, ratio), never on n. ``n <= 0`` gives 0.
    """
    if quantum < 1 or ratio <= 1.0:
        raise ValueError(f"bucket_size: need quantum >= 1 and ratio > 1, got {quantum}, {ratio}")
    if n <= 0:
        return 0
    m = 1
    while quantum * m < n:
        m = max(m + 1, math.ceil(m * ratio))
    return quantum * m


def padded_size(n: int, quantum: int, enabled: bool | None = None) -> int:
    """``bucket_size(n, quantum)`` when buckets are on (None: :func:`buckets_enabled`), else n."""
    on = buckets_enabled() if enabled is None else enabled
    return bucket_size(n, quantum) if on else n


def pad_axis(a: np.ndarray, size: int, axis: int = 0, value=0) -> np.ndarray:
    """``a`` padded with ``value`` at the end of ``axis`` to ``size`` (a copy; never truncates)."""
    a = np.asarray(a)
    extra = size - a.shape[axis]
    if extra < 0:
        raise ValueError(f"pad_axis: size {size} < length {a.shape[axis]}")
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths, constant_values=value)


def valid_mask(n: int, size: int) -> np.ndarray:
    """(size,) float mask: 1 for the first n entries (the real ones), 0 for the padding."""
    return (np.arange(size) < n).astype(np.float64)
