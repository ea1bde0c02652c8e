"""Reading TOML data files (configs, source and beam data) with one clear error per failure."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from iortopt.io.text_file import read_utf8_text


def read_toml(path: str | Path, error: type[Exception]) -> dict:
    """Parse ``path`` as TOML (data only: nothing is evaluated).

    Raises:
        error: naming the file, when it is missing, a folder, unreadable, not UTF-8 text (a
            UTF-8 byte order mark is accepted) or not valid TOML.
    """
    return read_toml_and_text(path, error)[0]


def read_toml_and_text(path: str | Path, error: type[Exception]) -> tuple[dict, str]:
    """:func:`read_toml` and the text it parsed (one read: the two always agree)."""
    path = Path(path)
    text = read_utf8_text(path, error, "TOML")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None


def packaged_names(subfolder: str) -> list[str]:
    """Names (without ``.toml``) of the data files packaged in ``iortopt/data/<subfolder>``."""
    folder = resources.files("iortopt") / "data" / subfolder
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def read_packaged_or_file(
    path_or_name: str | Path, subfolder: str, error: type[Exception], kind: str
) -> tuple[dict, str]:
    """A data document and its origin: a packaged file by name (case-insensitive) from
    ``iortopt/data/<subfolder>``, or a TOML file by path (``.toml`` suffix or an existing file).

    Raises:
        error: unknown name (listing the packaged ones), or the file cannot be read as TOML.
    """
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or text.endswith(".toml") or Path(text).is_file():
        return read_toml(text, error), text
    names = packaged_names(subfolder)
    lower = {n.lower(): n for n in names}
    if text.lower() not in lower:
        raise error(f"unknown {kind} {text!r}: expected one of {', '.join(names)} or a .toml path")
    resource = resources.files("iortopt") / "data" / subfolder / f"{lower[text.lower()]}.toml"
    with resource.open("rb") as fh:
        return tomllib.load(fh), f"packaged:{resource.name}"
