"""Built-in phantoms as the modalities' case sides: the adapters between ``iortopt.cases``'
phantoms (flap, breast, ELIOT) and the modalities that plan them.

A modality never imports a phantom: it plans a case side of its own type (the HDR flap's
``FlapCaseSide``, the X-ray ``SphereCaseSide``, the electron ``ElectronSetting``), and for a
built-in ``case.kind`` :func:`iortopt.pipeline.prepare_modality` asks :func:`build` for it and
passes it to the modality's ``prepare(cfg, dtype, builtin)``. DICOM cases have no adapter: each
modality imports them itself (:func:`build` returns None).

Each adapter is a module with ``build(cfg, dtype)`` -> that modality's case side, registered in
:data:`REGISTRY` under its case kind and modality. A new phantom is a module here and one line
there.
"""

from __future__ import annotations

import importlib

from iortopt.config import PlanConfig
from iortopt.errors import ConfigError

#: case.kind -> {plan.modality -> the adapter module building that modality's case side}.
REGISTRY = {
    "builtin_flap": {"hdr_flap": "iortopt.phantoms.flap"},
    "builtin_breast": {"xray_sphere": "iortopt.phantoms.breast"},
    "builtin_eliot": {"electron": "iortopt.phantoms.eliot"},
}


def build(cfg: PlanConfig, dtype):
    """The case side of ``cfg``'s built-in phantom for its modality; None for a DICOM case.

    Raises:
        ConfigError: a case kind no adapter builds for the plan's modality (the capability check
            of :func:`iortopt.pipeline.check_capabilities` refuses these first), or invalid
            ``[case.<phantom>]`` parameters, naming the field.
    """
    if cfg.case.kind == "dicom":
        return None
    adapters = REGISTRY.get(cfg.case.kind, {})
    if cfg.plan.modality not in adapters:
        raise ConfigError(
            f"case.kind {cfg.case.kind!r}: no built-in phantom adapter for plan.modality "
            f"{cfg.plan.modality!r} (built-in kinds per modality: "
            + ", ".join(f"{kind} -> {', '.join(sorted(a))}" for kind, a in REGISTRY.items())
            + ")"
        )
    return importlib.import_module(adapters[cfg.plan.modality]).build(cfg, dtype)
