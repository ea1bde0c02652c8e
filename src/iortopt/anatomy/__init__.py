"""Anatomy: planning cases from built-in parametric phantoms (and, later, DICOM)."""

from iortopt.anatomy.phantoms import (
    FlapCaseParams,
    bed_depth_mm,
    build_flap_case,
    ureter_centreline_mm,
)

__all__ = ["FlapCaseParams", "bed_depth_mm", "build_flap_case", "ureter_centreline_mm"]
