"""What a plan run decided before it started, handed to the modality's ``run`` as an argument.

:func:`iortopt.pipeline.execute` builds a :class:`RunContext` from the memory plan (TG-43 pairs
per chunk, budget, influence mode) and ``compute.devices`` (the voxel mesh); the modality passes
the chunk size and mesh on to the dose engines explicitly. Nothing here is global state: a
modality called without a context (``RunContext()``) runs with the defaults, on one device.
"""

from __future__ import annotations

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
    """

    pairs_per_chunk: int | None = None
    budget_bytes: int | None = None
    influence: str | None = None
    mesh: Any = None
    console: Any = None

    def chunk_size(self, n_dwells: int) -> int:
        """TG-43 points per chunk for ``n_dwells`` dwells (:func:`auto_chunk_size`)."""
        return auto_chunk_size(n_dwells, self.pairs_per_chunk)
