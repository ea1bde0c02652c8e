"""Reading DICOM files with clear errors, and writing them atomically.

Files without a preamble or file meta information (as some RTSTRUCT exports) are read with
``force=True``; a file that still has no SOP Class UID is not treated as DICOM.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from iortopt.errors import InputFileError
from iortopt.io.store import atomic_path


def read_dataset(path: str | Path, *, headers_only: bool = False) -> Dataset:
    """One DICOM file; ``headers_only`` stops before the pixel data.

    Raises:
        InputFileError: the file is missing, unreadable or not DICOM (no SOP Class UID).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: DICOM file not found")
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InputFileError(f"{path}: cannot read as DICOM ({exc})") from None
    if "SOPClassUID" not in ds:
        raise InputFileError(f"{path}: not a DICOM object (no SOP Class UID)")
    return ds


def try_read_header(path: Path) -> Dataset | None:
    """The header of ``path`` if it is a DICOM object, else None (for scanning folders)."""
    try:
        return read_dataset(path, headers_only=True)
    except InputFileError:
        return None


def dicom_files(folder: str | Path, what: str = "DICOM folder") -> list[Path]:
    """Regular files under ``folder`` (recursively, sorted; hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"{folder}: {what} not found (not a directory)")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def ds_text(value: float) -> str:
    """A Decimal String (at most 16 characters) as close to ``value`` as DS allows."""
    return format_number_as_ds(float(value))


def ds_list(values) -> list[str]:
    return [ds_text(v) for v in values]


def new_file_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An empty dataset with file meta information (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def save_atomic(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM file under a temporary name, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
