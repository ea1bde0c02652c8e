"""What a case offers a modality: capabilities, and what a config must give to provide each.

A modality declares the capabilities it needs (``NEEDS`` in its ``pipeline.py``); a case provides
some, depending on its kind and the config. :func:`iortopt.pipeline.check_capabilities` refuses a
plan whose case lacks one, naming it and how to provide it.

- ``catheters``: catheter (applicator) paths for HDR dwell positions.
- ``cavity``: a surgical cavity an applicator sphere fills (its centre and size).
- ``tissue_surface``: the air/tissue boundary an electron beam enters through.
- ``cone_pose``: where the electron cone ends and its axis.

Each built-in phantom provides the capabilities of its own technique only: a phantom models the
anatomy of one operation (a presacral flap with its catheters, a lumpectomy cavity, the gland
surface of an ELIOT breast under a cone) and holds nothing that another technique could be
planned on; other techniques on real anatomy go through ``case.kind = "dicom"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iortopt.config import PlanConfig

CATHETERS = "catheters"
CAVITY = "cavity"
TISSUE_SURFACE = "tissue_surface"
CONE_POSE = "cone_pose"
#: Every capability a modality may need.
ALL = frozenset({CATHETERS, CAVITY, TISSUE_SURFACE, CONE_POSE})

#: The capabilities each built-in phantom provides (see the module docstring).
BUILTIN = {
    "builtin_flap": frozenset({CATHETERS}),
    "builtin_breast": frozenset({CAVITY}),
    "builtin_eliot": frozenset({TISSUE_SURFACE, CONE_POSE}),
}

#: How a DICOM case provides each capability (the config fields to give).
DICOM_HOW = {
    CATHETERS: "give applicator.catheters_mm: catheter polylines in patient mm, tip first "
    "(or applicator.from_rtplan: a brachy RTPLAN)",
    CAVITY: (
        'map a ROI with role "cavity" in [case.dicom.structures] or give xray.centre_mm and '
        "xray.cavity_radius_mm"
    ),
    TISSUE_SURFACE: "a CT always has one: the body ROI or the HU threshold",
    CONE_POSE: "give electron.cone_end_mm and electron.cone_axis in patient mm",
}

#: How each capability reads in an error message.
NOUN = {
    CATHETERS: "catheters",
    CAVITY: "a cavity",
    TISSUE_SURFACE: "a tissue surface",
    CONE_POSE: "a cone pose",
}


def _given(section, *names: str) -> bool:
    """Whether every field ``names`` of a config section is given."""
    return all(getattr(section, name) is not None for name in names)


def dicom_capabilities(cfg: PlanConfig) -> frozenset[str]:
    """What a ``case.kind = "dicom"`` case provides with this config (a CT always has a tissue
    surface; the rest depends on the fields given, see :data:`DICOM_HOW`)."""
    provided = {TISSUE_SURFACE}
    if cfg.applicator.catheters_mm or cfg.applicator.from_rtplan:
        provided.add(CATHETERS)
    structures = cfg.case.dicom.structures if cfg.case.dicom is not None else {}
    if any(s.role == "cavity" for s in structures.values()) or _given(
        cfg.xray, "centre_mm", "cavity_radius_mm"
    ):
        provided.add(CAVITY)
    if _given(cfg.electron, "cone_end_mm", "cone_axis"):
        provided.add(CONE_POSE)
    return frozenset(provided)


def case_capabilities(cfg: PlanConfig) -> frozenset[str]:
    """The capabilities the case of ``cfg`` provides."""
    if cfg.case.kind == "dicom":
        return dicom_capabilities(cfg)
    return BUILTIN[cfg.case.kind]


def how_to_provide(capability: str, case_kind: str) -> str:
    """What a config can do to give a ``case_kind`` case ``capability`` (for error messages)."""
    dicom = DICOM_HOW[capability]
    if case_kind == "dicom":
        return dicom
    phantoms = [kind for kind, caps in BUILTIN.items() if capability in caps]
    builtin = " or ".join(f'case.kind "{kind}"' for kind in phantoms)
    return (
        f"each built-in phantom models one operation's anatomy: use {builtin}, or "
        f'case.kind "dicom" ({dicom})'
    )


def missing_message(modality: str, capability: str, case_kind: str) -> str:
    """The error for a ``modality`` plan whose ``case_kind`` case lacks ``capability``."""
    return (
        f'plan.modality "{modality}" needs {NOUN[capability]}: case.kind "{case_kind}" has '
        f"none; {how_to_provide(capability, case_kind)}"
    )
