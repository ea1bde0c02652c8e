"""Output folders that never destroy what iortopt did not create.

A plan's output folder (``iortopt run --out DIR``) holds iortopt's own entries (:data:`OWNED_NAMES`:
``plan.zarr``, ``summary.json``, ``dvh.png``, ``dose_slices.png``, ``hot_spot_slices.png``,
``report.html``, ``dicom/``, ``pareto.png``, ``dvh_bands.png``) and a marker,
``.iortopt-output.json`` (plan name, modality, version), written last. The marker is what
makes a folder "an iortopt output of plan P".

Before any computation, :func:`check_output_target` refuses (``ConfigError``, exit 2 in the CLI):
the current folder or one that contains it (``--out .``, ``--out ''``), a symbolic link, a regular
file (a file is never replaced by a folder), an existing folder that is not an output of this plan
(no marker or another plan's marker, and not empty) unless ``overwrite``, a parent that is a file
or not writable, and a name whose longest sibling (lock, temporaries, checkpoints) would not fit
the file system's NAME_MAX. :func:`check_store_target` and :func:`check_file_target` do the same
for single-store and single-file writers (``iortopt dose``, ``dicom import``, ``qa``, ``init``).

How the folder is written (:func:`publish_folder`): everything is built in a temporary sibling
``.<name>.tmp-XXXXXXXX``, with the marker inside it, then

- **swap** when the target does not exist or holds only iortopt's entries: the old folder is
  renamed aside (``.<name>.old-XXXXXXXX``), the new one renamed into place, the old one deleted.
  The folder that exists is always complete.
- **merge** when the target holds foreign files (allowed with ``--overwrite``, or a previous
  overwrite left the marker of this plan next to foreign files): the marker is removed first, then
  each new entry is moved in with ``os.replace`` (an existing entry of the same name renamed aside
  and deleted), iortopt entries the new run did not produce (a stale ``dicom/``) are removed, and
  the marker is written last. Foreign files are never touched; a folder without the marker is
  not a complete output.

:func:`output_lock` holds an advisory ``fcntl.flock`` on ``.<name>.lock`` beside the output for
the whole run; a second run into the same output fails at once. Under the lock,
:func:`clean_stale_temporaries` removes the temporaries of killed runs (beside the output and
inside it); without the lock a concurrent run's temporaries could be removed, so it never runs
without it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iortopt import __version__
from iortopt.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory lock
    fcntl = None

MARKER_NAME = ".iortopt-output.json"
#: Entries iortopt writes into an output folder (the marker included).
OWNED_NAMES = frozenset(
    {
        "plan.zarr",
        "summary.json",
        "dvh.png",
        "dose_slices.png",
        "dvh_bands.png",
        "hot_spot_slices.png",
        "dicom",
        "report.html",
        "pareto.png",
        MARKER_NAME,
    }
)
#: Names made beside an output ``<name>`` (the longest one bounds the name length).
SIBLING_TEMPLATES = (
    ".{name}.tmp-XXXXXXXX",
    ".{name}.old-XXXXXXXX",
    ".{name}.lock",
    ".{name}.checkpoint.npz.tmp.npz",
    ".{name}.shields.checkpoint.npz.tmp.npz",
)
#: Names made beside a single file or store written by :func:`iortopt.io.store.atomic_path`.
TEMP_TEMPLATES = (".{name}.tmp-XXXXXXXX", ".{name}.old-XXXXXXXX")
_SUFFIX = r"\.(?:tmp|old)-[0-9a-f]{8}"
_OWNED_TEMP = re.compile(
    r"^\.(?:"
    + "|".join(re.escape(n) for n in sorted(OWNED_NAMES))
    + r")(?:"
    + _SUFFIX
    + r"|\.tmp)$"
)


def lock_path_for(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.lock")


def _is_owned(name: str) -> bool:
    return name in OWNED_NAMES or bool(_OWNED_TEMP.match(name))


def read_marker(folder: str | Path) -> dict | None:
    """The marker of an iortopt output folder, or None (absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("plan"), str) else None


def _marker_text(plan_name: str, kind: str) -> str:
    return json.dumps(
        {
            "iortopt_output": 1,
            "plan": plan_name,
            "modality": kind,
            "iortopt_version": __version__,
            "written_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        indent=2,
    )


def _legacy_output_of(folder: Path, plan_name: str) -> bool:
    """An output written before the marker existed: only iortopt's entries, this plan's summary."""
    try:
        names = [p.name for p in folder.iterdir()]
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return all(_is_owned(n) for n in names) and summary.get("plan") == plan_name


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or "/")


def _check_parent(label: str, path: Path) -> None:
    """The nearest existing ancestor of ``path.parent`` is a writable folder."""
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{label} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{label} {path}: cannot write in {ancestor} (permission denied)")


def _check_name(label: str, path: Path, templates: tuple[str, ...]) -> None:
    name = path.name
    if not name or name in (".", ".."):
        raise ConfigError(f"{label} {str(path)!r}: give a folder name")
    limit = _name_max(_existing_ancestor(path.parent))
    longest = max((t.format(name=name) for t in templates), key=lambda s: len(s.encode()))
    if len(longest.encode()) > limit:
        spare = len(longest.encode()) - len(name.encode())
        raise ConfigError(
            f"{label} {path}: the name is {len(name.encode())} bytes; with the temporary and "
            f"checkpoint names beside it ({longest[:20]}...) it must be at most "
            f"{limit - spare} bytes (the file system allows {limit})"
        )


def _check_not_cwd(label: str, path: Path, templates: tuple[str, ...]) -> Path:
    """The resolved ``path`` after the checks every target shares (before touching it: a name
    too long makes every later file system call fail)."""
    if str(path) in ("", "."):
        raise ConfigError(f"{label} {str(path)!r}: the current folder is not an output folder")
    if path.name not in ("", ".", ".."):
        _check_name(label, path, templates)
    if path.is_symlink():
        raise ConfigError(f"{label} {path}: is a symbolic link; give the folder itself")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if cwd == resolved or resolved in cwd.parents:
        raise ConfigError(f"{label} {path}: is the current folder or contains it")
    return resolved


def _os_errors_named(check):
    """Turn an OSError of a check (a path component too long, a loop of links) into a
    ConfigError naming the path."""

    @functools.wraps(check)
    def checked(path, *args, **kwargs):
        try:
            return check(path, *args, **kwargs)
        except OSError as exc:
            label = kwargs.get("label", "--out")
            raise ConfigError(f"{label} {path}: {exc.strerror or exc}") from None

    return checked


@_os_errors_named
def check_output_target(path: str | Path, overwrite: bool, plan_name: str) -> None:
    """Refuse an output folder that a run of ``plan_name`` must not write (nothing is written).

    Raises:
        ConfigError: naming the path and why (see the module docstring), with the fix.
    """
    label = "--out"
    path = Path(path)
    resolved = _check_not_cwd(label, path, SIBLING_TEMPLATES)
    _check_name(label, resolved, SIBLING_TEMPLATES)
    _check_parent(label, resolved)
    if not resolved.exists():
        return
    if not resolved.is_dir():
        raise ConfigError(
            f"{label} {path}: is a file, not a folder; iortopt never replaces a file by a "
            "folder (remove it or choose another --out)"
        )
    marker = read_marker(resolved)
    if marker is not None and marker["plan"] == plan_name:
        pass
    elif not any(resolved.iterdir()) or _legacy_output_of(resolved, plan_name):
        pass
    elif not overwrite:
        if marker is not None:
            what = f"holds the outputs of plan {marker['plan']!r}, not {plan_name!r}"
        else:
            foreign = sorted(p.name for p in resolved.iterdir() if not _is_owned(p.name))
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            what = f"is not an iortopt output folder (it holds {shown or 'other files'})"
        raise ConfigError(
            f"{label} {path}: {what}; choose a new or empty folder, or pass --overwrite to "
            "replace only iortopt's own files there (other files are kept)"
        )
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise ConfigError(f"{label} {path}: cannot write in it (permission denied)")


@_os_errors_named
def check_store_target(path: str | Path, label: str = "--out") -> None:
    """Refuse a zarr store target that is a file, a foreign folder or unwritable (before work).

    An existing store written by iortopt (``zarr.json`` with ``iortopt`` attributes) is replaced.
    """
    path = Path(path)
    resolved = _check_not_cwd(label, path, TEMP_TEMPLATES)
    _check_name(label, resolved, TEMP_TEMPLATES)
    _check_parent(label, resolved)
    if not resolved.exists():
        return
    if not resolved.is_dir():
        raise ConfigError(
            f"{label} {path}: is a file; a zarr store is a folder and iortopt never replaces a "
            "file by a folder (remove it or choose another --out)"
        )
    try:
        meta = json.loads((resolved / "zarr.json").read_text())
        ours = isinstance(meta.get("attributes", {}).get("iortopt"), dict)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ConfigError(
            f"{label} {path}: is a folder that is not a zarr store written by iortopt; "
            "choose another --out (iortopt replaces only its own stores)"
        )


@_os_errors_named
def check_file_target(path: str | Path, label: str = "--out") -> None:
    """Refuse a file target that is a folder or whose parent is not writable (before work)."""
    path = Path(path)
    if str(path) in ("", "."):
        raise ConfigError(f"{label} {str(path)!r}: give a file name")
    _check_name(label, path, TEMP_TEMPLATES)
    resolved = path.resolve()
    _check_parent(label, resolved)
    if resolved.is_dir():
        raise ConfigError(f"{label} {path}: is a folder; iortopt never replaces a folder by a file")


@contextmanager
def output_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``out_dir`` (a ``.<name>.lock`` file beside it).

    Raises:
        ConfigError: another process holds the lock, or the lock file cannot be created.
    """
    out_dir = Path(out_dir)
    lock = lock_path_for(out_dir)
    if fcntl is None:  # pragma: no cover
        yield lock
        return
    created = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create {lock.parent}: {exc.strerror}") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"--out {out_dir}: cannot create {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"--out {out_dir}: another iortopt run{by} is writing this output (it holds "
                f"{lock}); wait for it to finish or choose another --out"
            ) from None
        # The previous holder removes the file on release: lock only the file still at the path.
        try:
            st_path, st_fd = os.stat(lock), os.fstat(fd)
            same = (st_path.st_dev, st_path.st_ino) == (st_fd.st_dev, st_fd.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in created:  # deepest first: a failed run leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Remove what killed runs into ``out_dir`` left behind; call only under :func:`output_lock`.

    Beside the output: ``.<name>.tmp-XXXXXXXX``, ``.<name>.old-XXXXXXXX`` and the checkpoint
    temporaries; inside it: the temporaries of iortopt's own entries. Returns what was removed.
    """
    out_dir = Path(out_dir)
    name = re.escape(out_dir.name)
    beside = re.compile(
        rf"^\.{name}(?:{_SUFFIX}|\.checkpoint\.npz\.tmp\.npz|\.shields\.checkpoint\.npz\.tmp\.npz)$"
    )
    removed = []
    if out_dir.parent.is_dir():
        removed += [p for p in out_dir.parent.iterdir() if beside.match(p.name)]
    if out_dir.is_dir() and not out_dir.is_symlink():
        removed += [p for p in out_dir.iterdir() if _OWNED_TEMP.match(p.name)]
    for path in removed:
        _remove(path)
    return removed


def new_temp_folder(out_dir: str | Path) -> Path:
    """A fresh temporary folder beside ``out_dir`` (its parent created if needed)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")


def publish_folder(tmp: Path, out_dir: str | Path, plan_name: str, kind: str) -> None:
    """Move the finished folder ``tmp`` to ``out_dir`` (swap or merge, see the module docstring)
    and write the marker of ``plan_name`` (modality ``kind``) last."""
    out_dir = Path(out_dir)
    marker_text = _marker_text(plan_name, kind)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ConfigError(f"{out_dir}: is not a folder; iortopt never replaces it by one")
    if not out_dir.exists() or all(_is_owned(p.name) for p in out_dir.iterdir()):
        (tmp / MARKER_NAME).write_text(marker_text)
        if out_dir.exists():
            old = _aside(out_dir)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            _remove(old)
        else:
            os.replace(tmp, out_dir)
        return
    (out_dir / MARKER_NAME).unlink(missing_ok=True)
    new_names = {p.name for p in tmp.iterdir()}
    for name in sorted(new_names):
        dest = out_dir / name
        old = None
        if dest.exists() or dest.is_symlink():
            old = _aside(dest)
            os.replace(dest, old)
        os.replace(tmp / name, dest)
        if old is not None:
            _remove(old)
    for entry in out_dir.iterdir():
        if entry.name in OWNED_NAMES and entry.name not in new_names and entry.name != MARKER_NAME:
            _remove(entry)
    marker_tmp = out_dir / f".{MARKER_NAME}.tmp"
    marker_tmp.write_text(marker_text)
    os.replace(marker_tmp, out_dir / MARKER_NAME)
    tmp.rmdir()


def refuse_other_output(out: Path, command: str) -> None:
    """An output folder of a plan or of another command would be replaced whole by ``command``'s
    (every entry there is iortopt's own): refuse it, even with --overwrite.

    Raises:
        ConfigError: naming the folder and what it holds.
    """
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None and marker["plan"] != command:
        raise ConfigError(
            f"--out {out}: holds the outputs of {marker['plan']!r}, which {command} would "
            "replace; choose another folder (even with --overwrite)"
        )


def write_command_folder(out: Path, overwrite: bool, command: str, write) -> None:
    """Write a command's output folder (``iortopt evaluate``, ``check-plan``): under the
    folder's lock, check it again, clear killed runs' temporaries, ``write(tmp)`` into a new
    temporary folder and publish it with the marker last (nothing half-written is left)."""
    with output_lock(out):
        refuse_other_output(out, command)
        check_output_target(out, overwrite, command)
        clean_stale_temporaries(out)
        tmp = new_temp_folder(out)
        try:
            write(tmp)
            publish_folder(tmp, out, command, command)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
