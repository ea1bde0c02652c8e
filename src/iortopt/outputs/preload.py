"""Import the output writers' libraries in a background thread while a plan is computed.

matplotlib (the figures) and Jinja2 (the report) take ~0.4 s to import on the 2-core CPU and are
needed only when the outputs are written, after the optimisation. Importing them in a daemon
thread at the start of the run overlaps that time with the planning, most of which runs in XLA
with the interpreter lock released. Nothing is drawn or configured here: the writers import the
same modules as usual and find them loaded (or wait for the thread's import to finish, which
Python's per-module import locks make safe).

    start_preload() -> threading.Thread | None   the thread started (None if already started)
"""

from __future__ import annotations

import importlib
import threading

#: What the figure and report writers import (:mod:`iortopt.outputs.figures`,
#: :mod:`iortopt.outputs.report`).
OUTPUT_MODULES = (
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "matplotlib.patheffects",
    "matplotlib.lines",
    "matplotlib.font_manager",
    "jinja2",
)

_started = threading.Event()


def _import_all() -> None:
    for name in OUTPUT_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the writer imports it again and reports the error
            return


def start_preload() -> threading.Thread | None:
    """Start importing :data:`OUTPUT_MODULES` in a daemon thread, once per process."""
    if _started.is_set():
        return None
    _started.set()
    thread = threading.Thread(target=_import_all, name="iortopt-preload", daemon=True)
    thread.start()
    return thread
