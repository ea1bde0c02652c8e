"""The flap phantom (:mod:`iortopt.cases.flap`) as the case side of an HDR flap plan."""

from __future__ import annotations

from iortopt.cases.flap import FlapCaseParams, build_flap_case
from iortopt.config import PlanConfig, case_params
from iortopt.modalities.hdr_flap.pipeline import FlapCaseSide


def build(cfg: PlanConfig, dtype) -> FlapCaseSide:
    """The flap phantom of ``[case.flap]``: its case, catheter applicator, source-to-surface
    distance and the ``behind_flap`` shield surface.

    Raises:
        ConfigError: invalid ``[case.flap]`` parameters, naming the field.
    """
    params = case_params(FlapCaseParams, cfg.case.flap, "flap")
    case, applicator = build_flap_case(params)
    return FlapCaseSide(case, applicator, params.source_to_surface_mm, {"flap": params})
