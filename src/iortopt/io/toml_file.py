"""Reading TOML data files (configs, source and beam data) with one clear error per failure."""

from __future__ import annotations

import tomllib
from pathlib import Path


def read_toml(path: str | Path, error: type[Exception]) -> dict:
    """Parse ``path`` as TOML (data only: nothing is evaluated).

    Raises:
        error: naming the file, when it is missing, a folder, unreadable or not valid TOML.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid TOML (not UTF-8 text: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None
