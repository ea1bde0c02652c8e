"""The output libraries' background import (``iortopt.outputs.preload``)."""

from __future__ import annotations

import sys

from iortopt.outputs import preload


def test_preload_imports_the_writers_libraries_once(monkeypatch):
    monkeypatch.setattr(preload, "_started", type(preload._started)())  # a fresh, unset event
    thread = preload.start_preload()
    assert thread is not None and thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert all(name in sys.modules for name in preload.OUTPUT_MODULES)
    assert preload.start_preload() is None  # once per process
