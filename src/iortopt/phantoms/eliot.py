"""The ELIOT-type phantom (:mod:`iortopt.cases.eliot`) as the case side of an electron plan.

build(config, dtype)          -> ElectronSetting      what the electron plan plans
eliot_setting(params)         -> ElectronSetting      the phantom, its geometry and samples
optimise_eliot(params, ...)   -> ElectronPlanResult   :func:`optimise_electron` on it
"""

from __future__ import annotations

from iortopt.cases.eliot import EliotCaseParams, build_eliot_case_with_samples
from iortopt.config import PlanConfig, case_params
from iortopt.modalities.electron.choice import (
    ElectronPlanResult,
    ElectronSetting,
    optimise_electron,
)

#: The config field of the phantom's disc space (named in messages).
DISC_SPACE_FIELD = "case.eliot.disc_gap_mm"


def eliot_setting(params: EliotCaseParams) -> ElectronSetting:
    """The phantom of ``params`` built (case, geometry, structure samples) as an
    :class:`~iortopt.modalities.electron.choice.ElectronSetting`."""
    case, geometry, samples = build_eliot_case_with_samples(params)
    return ElectronSetting(
        case,
        geometry,
        samples,
        disc_space_mm=float(params.disc_gap_mm),
        supersampling=params.supersampling,
        disc_space_field=DISC_SPACE_FIELD,
    )


def build(cfg: PlanConfig, dtype) -> ElectronSetting:
    """The ELIOT-type phantom of ``[case.eliot]`` as the electron plan's case side.

    Raises:
        ConfigError: invalid ``[case.eliot]`` parameters, naming the field.
    """
    return eliot_setting(case_params(EliotCaseParams, cfg.case.eliot, "eliot"))


def optimise_eliot(params: EliotCaseParams, *args, **kwargs) -> ElectronPlanResult:
    """:func:`~iortopt.modalities.electron.choice.optimise_electron` on the phantom of ``params``
    (the other arguments as there)."""
    return optimise_electron(eliot_setting(params), *args, **kwargs)
