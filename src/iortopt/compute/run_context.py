"""What a plan run decided before it started, handed to the modality's ``run`` as an argument.

:func:`iortopt.pipeline.execute` builds a :class:`RunContext` from the memory plan (TG-43 pairs
per chunk, budget, influence mode) and ``compute.devices`` (the voxel mesh); the modality passes
the chunk size and mesh on to the dose engines explicitly. Nothing here is global state: a
modality called without a context (``RunContext()``) runs with the defaults, on one device.

The context also carries the clock of the run (:attr:`RunContext.started_s` and what the caller
spent before, :attr:`RunContext.times_before_s`), so the output writer puts the whole time
budget into summary.json once, as the last file it writes (:meth:`RunContext.wall_times_s`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iortopt.compute.memory import auto_chunk_size


@dataclass(frozen=True)
class RunContext:
    """Run settings of one plan.

    Attributes:
        pairs_per_chunk: TG-43 point x dwell pairs per chunk chosen from the memory budget
            (None: :data:`iortopt.compute.memory.PAIRS_PER_CHUNK`).
        budget_bytes: the memory budget of the run (None: not limited).
        influence: ``"matrix"`` or ``"matrix_free"`` as the memory plan decided for
            ``optimizer.influence = "auto"`` (None: decide from the sizes and the budget).
        mesh: a 1-D :class:`jax.sharding.Mesh` to split the voxels over
            (:func:`iortopt.compute.sharding.voxel_mesh`); None: one device.
        console: a rich console for progress bars (None: no progress display).
        started_s: ``time.perf_counter()`` when the run started (None: no run clock; the
            summary then gives the modality's stages only).
        times_before_s: what the caller spent before the run (start-up, imports, case build;
            s, None where not measured), first in summary.json's ``wall_times_s``.
        compile_cache: the persistent compilation cache folder in use (recorded in the summary).
    """

    pairs_per_chunk: int | None = None
    budget_bytes: int | None = None
    influence: str | None = None
    mesh: Any = None
    console: Any = None
    started_s: float | None = None
    times_before_s: Mapping[str, float | None] | None = None
    compile_cache: str | None = None

    @property
    def timed(self) -> bool:
        """Whether the caller gave process times or a cache (summary.json then has the totals)."""
        return self.times_before_s is not None or self.compile_cache is not None

    def chunk_size(self, n_dwells: int) -> int:
        """TG-43 points per chunk for ``n_dwells`` dwells (:func:`auto_chunk_size`)."""
        return auto_chunk_size(n_dwells, self.pairs_per_chunk)

    def wall_times_s(self, stages: Mapping[str, float | None]) -> dict[str, float | None]:
        """summary.json's ``wall_times_s`` now: the caller's times, the modality's ``stages``,
        ``other_s`` (what no stage timed: memory plan, metrics, glue), ``planning_s`` (the
        modality's own ``total_s``, renamed so it is not counted twice) and ``total_s`` (from the
        process start where known). Without a run clock, ``stages`` unchanged."""
        if not self.timed or self.started_s is None:
            return dict(stages)
        return total_wall_times_s(
            self.times_before_s or {}, stages, time.perf_counter() - self.started_s
        )


def total_wall_times_s(
    before_s: Mapping[str, float | None], stages: Mapping[str, float | None], run_s: float
) -> dict[str, float | None]:
    """The caller's times ``before_s``, then ``stages``, ``other_s``, ``planning_s`` and
    ``total_s`` (s): ``total_s`` = the known ``before_s`` + ``run_s`` (the run so far), and
    ``other_s`` what neither accounts for (never negative)."""
    stages = dict(stages)
    planning_s = stages.pop("total_s", None)
    times = {**before_s, **stages}
    total_s = sum(v for v in before_s.values() if v is not None) + run_s
    times["other_s"] = max(0.0, total_s - sum(v for v in times.values() if v is not None))
    if planning_s is not None:
        times["planning_s"] = planning_s
    times["total_s"] = total_s
    return times
