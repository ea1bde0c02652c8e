"""Reading UTF-8 text files (configs, CSV tables) with one clear error per failure.

A UTF-8 byte order mark (as some Windows editors write) is accepted and dropped. UTF-16/UTF-32
files (byte order mark), binary content (null bytes) and bytes that are not UTF-8 are refused with
a message naming the file and saying what was found.
"""

from __future__ import annotations

import codecs
from pathlib import Path

UTF8_BOM = codecs.BOM_UTF8
#: Byte order marks of encodings we do not read, longest first (UTF-32 LE starts like UTF-16 LE).
OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
NOT_TEXT = "not a UTF-8 text file"


def decode_utf8(path: str | Path, data: bytes, error: type[Exception], kind: str = "") -> str:
    """``data`` (the bytes of ``path``) as text, without a leading UTF-8 byte order mark.

    ``kind`` (e.g. "TOML", "CSV") words the message: "not valid TOML: not a UTF-8 text file".

    Raises:
        error: naming ``path``: another encoding's byte order mark, null bytes, or invalid UTF-8.
    """
    not_text = f"not valid {kind}: {NOT_TEXT}" if kind else NOT_TEXT
    for bom, encoding in OTHER_BOMS:
        if data.startswith(bom):
            raise error(f"{path}: {not_text} ({encoding} byte order mark); save it as UTF-8")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise error(
            f"{path}: {not_text} (null byte at offset {at}: binary data, or UTF-16 without a "
            "byte order mark)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}: {not_text} (byte 0x{data[exc.start]:02x} at offset {exc.start}, line "
            f"{line}, is not valid UTF-8); save it as UTF-8"
        ) from None


def read_utf8_text(path: str | Path, error: type[Exception], kind: str = "") -> str:
    """The text of the UTF-8 file ``path`` (see :func:`decode_utf8`).

    Raises:
        error: naming the file, when it is missing, a folder, unreadable or not UTF-8 text.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a {kind or 'text'} file") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_utf8(path, data, error, kind)
