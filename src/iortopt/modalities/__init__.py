"""Modalities: one folder per IORT technique, each behind the same small interface.

A modality is a module (its folder's ``pipeline.py``) that provides:

    NAME                  the ``plan.modality`` value of its configs
    SECTIONS              the top-level config sections it reads (others given are refused)
    NEEDS                 the case capabilities it needs (:mod:`iortopt.cases.capabilities`); a
                          case that lacks one is refused before anything is built
    DWELL_CHUNKED         True if it optimises TG-43 dwell times (the memory plan then chooses the
                          influence-matrix mode and the points per TG-43 chunk)
    prepare(cfg, dtype, builtin=None) -> prepared plan: case, applicator candidates, settings
                          (no optimisation, no files); raises ConfigError on invalid input.
                          ``builtin``: on a built-in ``case.kind``, the phantom's case side in
                          the modality's own type, built by its adapter in
                          :mod:`iortopt.phantoms` (a modality never imports a phantom); None on
                          a DICOM case, which the modality imports itself
    run(prepared, out_dir, ctx) -> result with ``summary`` and ``out_dir`` (optimise, full-grid
                          dose, evaluation, outputs); ``ctx``: the run's
                          :class:`iortopt.compute.run_context.RunContext` (TG-43 chunking,
                          device mesh, progress console), passed on to the dose engines
    print_result(result, console)
    memory_sizes(prepared) -> the sizes its memory estimate needs (``n_voxels``, ``n_points``,
                          ``spacing_mm``, ...), without computing anything
    memory_estimate(sizes, chunk, dtype, influence) -> iortopt.compute.memory.MemoryEstimate

:func:`get` is the one place that maps a modality name to its module; nothing else switches on the
name. A new modality is a new folder with a ``pipeline.py`` and one line in :data:`REGISTRY`
(plus, to plan a built-in phantom, an adapter in :mod:`iortopt.phantoms`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: plan.modality -> the module implementing the interface above.
REGISTRY = {
    "hdr_flap": "iortopt.modalities.hdr_flap.pipeline",
    "xray_sphere": "iortopt.modalities.xray_sphere.pipeline",
    "electron": "iortopt.modalities.electron.pipeline",
}
#: The config sections every modality reads; each adds its own to its ``SECTIONS``.
COMMON_SECTIONS = frozenset(
    {"plan", "case", "prescription", "goals", "radiobiology", "output", "compute"}
)
INTERFACE = (
    "NAME",
    "SECTIONS",
    "NEEDS",
    "DWELL_CHUNKED",
    "prepare",
    "run",
    "print_result",
    "memory_sizes",
    "memory_estimate",
)


def get(name: str) -> ModuleType:
    """The module of modality ``name`` (imported on first use).

    Raises:
        KeyError: an unknown modality (configs are validated against :data:`REGISTRY` first).
    """
    return importlib.import_module(REGISTRY[name])
