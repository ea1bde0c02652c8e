"""Reading DICOM files with clear errors, and writing them atomically.

Files without a preamble or file meta information (as some RTSTRUCT exports) are read with
``force=True``; a file that still has no SOP Class UID is not treated as DICOM. A file cut short
(a value that ends past the end of the file) is an error naming the file, not a smaller object.
Required attributes are read with ``required_text`` / ``required_int`` / ``required_floats``:
missing, empty or malformed values give an InputFileError naming the file, the attribute keyword
and tag, and what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from iortopt.errors import InputFileError
from iortopt.io.store import atomic_path

#: Bytes before the first data element of a DICOM Part 10 file: preamble and the "DICM" prefix.
PREAMBLE_BYTES = 132


class NotDicomError(InputFileError):
    """The file is not a DICOM object (skipped when scanning a folder)."""


class _TruncatedRead(Exception):
    pass


class _StrictReader:
    """A binary file that raises on a short read past the preamble.

    pydicom reads a value cut off by the end of the file without complaint (a truncated RTSTRUCT
    would lose its last ROIs silently); every read of a declared length must get all its bytes. An
    empty read of at most 8 bytes (the next element's tag and length) is the normal end of a file.
    """

    def __init__(self, fh):
        self._fh = fh
        self.name = getattr(fh, "name", "")

    def read(self, size: int = -1) -> bytes:
        start = self._fh.tell()
        data = self._fh.read(size)
        short = size is not None and 0 <= len(data) < size
        if short and start >= PREAMBLE_BYTES and (data or size > 8):
            raise _TruncatedRead(f"file ends at byte {start + len(data)}, inside a data element")
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _has_dicm_prefix(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(PREAMBLE_BYTES)
    return head[128:132] == b"DICM"


def read_dataset(path: str | Path, *, headers_only: bool = False) -> Dataset:
    """One DICOM file; ``headers_only`` stops before the pixel data.

    Raises:
        NotDicomError: the file is not DICOM (no "DICM" prefix and unreadable, or no SOP Class
            UID).
        InputFileError: the file is missing, or a DICOM file (with the "DICM" prefix) that is
            truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: DICOM file not found")
    try:
        part10 = _has_dicm_prefix(path)
        with path.open("rb") as fh:
            ds = pydicom.dcmread(
                _StrictReader(fh), stop_before_pixels=headers_only, force=not part10
            )
    except _TruncatedRead as exc:
        message = f"{path}: truncated DICOM file ({exc}); copy it again from the source"
        raise (InputFileError if part10 else NotDicomError)(message) from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        error = InputFileError if part10 else NotDicomError
        raise error(f"{path}: cannot read as DICOM, truncated or corrupt ({exc})") from None
    if "SOPClassUID" not in ds:
        raise NotDicomError(f"{path}: not a DICOM object (no SOP Class UID)")
    return ds


def try_read_header(path: Path) -> Dataset | None:
    """The header of ``path`` if it is a DICOM object, else None (for scanning folders).

    Raises:
        InputFileError: a DICOM file (with the "DICM" prefix) that is truncated or corrupt.
    """
    try:
        return read_dataset(path, headers_only=True)
    except NotDicomError:
        return None


def tag_text(keyword: str) -> str:
    """``"(0028,0010)"`` for ``"Rows"``; "" for an unknown keyword."""
    tag = tag_for_keyword(keyword)
    return "" if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _attribute(ds: Dataset, keyword: str, where: str, expected: str):
    """The value of a required attribute; InputFileError naming ``where``, the keyword and tag
    when it is missing, empty or cannot be decoded."""
    name = f"{keyword} {tag_text(keyword)}".strip()
    if keyword not in ds:
        raise InputFileError(f"{where}: required attribute {name} is missing; expected {expected}")
    try:
        value = ds[keyword].value
    except Exception as exc:  # pydicom converts raw values lazily and raises on bad ones
        raise InputFileError(
            f"{where}: attribute {name} is malformed ({exc}); expected {expected}"
        ) from None
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise InputFileError(f"{where}: required attribute {name} is empty; expected {expected}")
    return value


def _malformed(keyword: str, where: str, value, expected: str) -> InputFileError:
    name = f"{keyword} {tag_text(keyword)}".strip()
    return InputFileError(f"{where}: attribute {name} is {value!r}; expected {expected}")


def required_text(ds: Dataset, keyword: str, where: str | Path) -> str:
    """A required non-empty string attribute (a UID, a code string)."""
    value = str(_attribute(ds, keyword, str(where), "a non-empty value")).strip()
    if not value:
        raise _malformed(keyword, str(where), value, "a non-empty value")
    return value


def required_int(
    ds: Dataset,
    keyword: str,
    where: str | Path,
    minimum: int | None = None,
    maximum: int | None = None,
    allowed: tuple[int, ...] | None = None,
) -> int:
    """A required integer attribute within ``minimum``..``maximum`` (or one of ``allowed``)."""
    where = str(where)
    if allowed is not None:
        expected = f"one of {', '.join(map(str, allowed))}"
    elif minimum is not None and maximum is not None:
        expected = f"an integer {minimum}..{maximum}"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    else:
        expected = "an integer"
    value = _attribute(ds, keyword, where, expected)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _malformed(keyword, where, value, expected) from None
    if (
        not math.isfinite(number)
        or number != int(number)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
        or (allowed is not None and int(number) not in allowed)
    ):
        raise _malformed(keyword, where, value, expected)
    return int(number)


def required_floats(
    ds: Dataset, keyword: str, where: str | Path, n: int, positive: bool = False
) -> np.ndarray:
    """A required attribute of ``n`` finite numbers (all > 0 if ``positive``), as floats."""
    where = str(where)
    expected = f"{n} finite {'positive ' if positive else ''}number{'s' if n > 1 else ''}"
    value = _attribute(ds, keyword, where, expected)
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        out = np.asarray([float(v) for v in items], float)
    except (TypeError, ValueError):
        raise _malformed(keyword, where, value, expected) from None
    if out.shape != (n,) or not np.all(np.isfinite(out)) or (positive and np.any(out <= 0)):
        raise _malformed(keyword, where, out.tolist(), expected)
    return out


def optional_float(
    ds: Dataset, keyword: str, where: str | Path, default: float, minimum: float | None = None
) -> float:
    """An optional number (``default`` when absent or empty); finite and >= ``minimum``."""
    if keyword not in ds or ds[keyword].value in (None, "", b""):
        return default
    value = float(required_floats(ds, keyword, where, 1)[0])
    if minimum is not None and value < minimum:
        raise _malformed(keyword, str(where), value, f"a finite number >= {minimum}")
    return value


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
