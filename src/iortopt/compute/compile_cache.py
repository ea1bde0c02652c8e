"""JAX's persistent compilation cache for plan runs: compile a program once, reuse it in every
later process that runs the same program on the same kind of device.

Where: ``$IORTOPT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/iortopt`` (the XDG base-directory
convention; ``~/.cache/iortopt`` when the variable is unset), in a subfolder named for the iortopt
and JAX versions and the host (machine type and a hash of the CPU's instruction-set flags, since an
XLA CPU executable uses the instructions of the CPU it was compiled on and an HPC home folder is
shared by nodes of different CPUs). JAX's own cache key adds the program, the compile options, the
backend and the device kind, so a stale or foreign entry is never loaded.

Concurrent runs: the cache is size-limited (:data:`MAX_CACHE_BYTES`), which makes JAX hold a file
lock (the ``filelock`` package) around every read and write, so a run never reads an entry that
another run is still writing. Off: ``iortopt run --no-cache`` or ``IORTOPT_NO_COMPILE_CACHE=1``.
A cache that cannot be used (folder not writable) is reported and the run compiles as before.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from iortopt import __version__

CACHE_DIR_ENV = "IORTOPT_CACHE_DIR"
NO_CACHE_ENV = "IORTOPT_NO_COMPILE_CACHE"
#: Upper bound of the cache folder; JAX evicts the least recently used entries beyond it.
MAX_CACHE_BYTES = 2 * 1024**3


def cache_disabled_by_env() -> bool:
    """``IORTOPT_NO_COMPILE_CACHE`` set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """The user's iortopt cache folder (``$IORTOPT_CACHE_DIR``, else the XDG cache home)."""
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "iortopt"


def host_key() -> str:
    """Machine type and a short hash of the CPU flags (Linux ``/proc/cpuinfo``; else the
    processor string), so executables never move between CPUs of different instruction sets."""
    flags = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{platform.machine() or 'unknown'}-{digest}"


def cache_dir() -> Path:
    """This iortopt + JAX version's cache folder on this host."""
    return cache_root() / f"iortopt-{__version__}_jax-{jax.__version__}_{host_key()}"


def enable_compile_cache(enabled: bool = True, folder: Path | None = None) -> Path | None:
    """Turn the persistent compilation cache on (before the first compilation); returns its
    folder, or None when it is off (``enabled`` false, the env variable, or an unusable folder).

    ``folder``: use this one (a batch store's shared cache) instead of :func:`cache_dir`.

    Every compiled program is cached, however quick its compilation (a plan's small programs add
    up to seconds of start-up)."""
    if not enabled or cache_disabled_by_env():
        disable_compile_cache()
        return None
    folder = cache_dir() if folder is None else Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        disable_compile_cache()
        return None
    if not _filelock_available():
        disable_compile_cache()
        return None  # without the lock, concurrent runs could read a half-written entry
    if jax.config.jax_compilation_cache_dir != str(folder):
        jax.config.update("jax_compilation_cache_dir", str(folder))
        reset_cache()  # JAX decides once per process whether a cache is used: decide again
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    return folder


def disable_compile_cache() -> None:
    """Stop using a persistent cache in this process (e.g. ``--no-cache`` after a cached run)."""
    if jax.config.jax_compilation_cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        reset_cache()


def _filelock_available() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True
