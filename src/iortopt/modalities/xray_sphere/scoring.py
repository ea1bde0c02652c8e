"""The smooth score of a sphere plan that optimisers use: soft target coverage and the OAR sum.

Shared by the continuous-radius relaxation (:mod:`.choice`) and the shield placement
(:mod:`.shields`), so that both optimise the same quantity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iortopt.optimisation.objectives import dose_at_volume

D2CC_CM3 = 2.0
#: Soft-membership width (mm) and soft-coverage width (fraction of the coverage dose).
SOFT_DEPTH_MM = 0.5
SOFT_DOSE_FRACTION = 0.02


def smooth_coverage_and_oar(
    dose, pts, idx, weight, centre, radius, target_thickness_mm: float, coverage_dose_gy: float
):
    """The smooth parts of the score, for optimisers: soft PTV coverage (fraction) and the OAR
    sum skin max + chest wall D2cc + rib D2cc + lung mean (Gy), from the dose at the evaluation
    points (``idx``: groups of :class:`~iortopt.modalities.xray_sphere.choice.EvalPoints`,
    ``weight``: their volumes per group)."""
    breast = idx["breast"]
    depth = jnp.linalg.norm(pts[breast] - centre, axis=-1) - radius
    member = jax.nn.sigmoid(depth / SOFT_DEPTH_MM) * jax.nn.sigmoid(
        (target_thickness_mm - depth) / SOFT_DEPTH_MM
    )
    # Inside the sphere the soft membership is small but not 0, and there is no tissue there to
    # underdose: count those points as covered rather than as 0 Gy.
    covered = jnp.where(
        depth < 0,
        1.0,
        jax.nn.sigmoid((dose[breast] - coverage_dose_gy) / (SOFT_DOSE_FRACTION * coverage_dose_gy)),
    )
    coverage = jnp.sum(member * covered) / jnp.maximum(jnp.sum(member), 1e-6)

    def d2cc(name):
        d = dose[idx[name]]
        return dose_at_volume(d, weight[name], D2CC_CM3) if d.size else 0.0

    lung = (
        jnp.sum(dose[idx["lung"]] * weight["lung"]) / jnp.sum(weight["lung"])
        if idx["lung"].size
        else 0.0
    )
    # A case without a skin structure (DICOM) has an empty skin group: no skin term.
    skin = jnp.max(dose[idx["skin"]]) if idx["skin"].size else 0.0
    oar = skin + d2cc("chest_wall") + d2cc("rib") + lung
    return coverage, oar
