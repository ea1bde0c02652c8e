"""SOP classes of the objects iortopt reads and writes, and fresh UIDs."""

from __future__ import annotations

from pydicom.uid import generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"


def new_uid() -> str:
    """A new globally unique UID (pydicom's root and a random suffix)."""
    return generate_uid()
