"""``iortopt run --watch CONFIG``: plan again, in the same process, each time CONFIG is saved.

The process keeps JAX, the imported libraries and every compiled program, so a replan after an
edit (a goal, an objective weight, the active dwells, a shift) skips Python's and JAX's start-up
and most of the compilation (benchmarks/RESULTS.md gives the measured times). Each replan is a
whole ``iortopt run`` of the saved file: the same checks, the same outputs written the same way;
a config that fails to load or plan prints its error and the watch goes on, waiting for the next
save. Ctrl-C while waiting stops the watch (exit 0); Ctrl-C during a replan stops it as any run
(exit 130).

    file_stamp(path) -> (mtime_ns, size) | None     what "saved again" is compared on
    wait_for_change(path, stamp, poll_s, sleep)      blocks until the stamp differs; the new one
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

#: Seconds between two looks at the config file.
POLL_S = 0.3
#: A change is acted on once the file has been unchanged this long (editors write in steps).
SETTLE_S = 0.2

Stamp = tuple[int, int]


def file_stamp(path: Path) -> Stamp | None:
    """(modification time ns, size bytes) of ``path``; None while it does not exist (an editor
    that saves by replace may remove it for a moment)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def wait_for_change(
    path: Path,
    stamp: Stamp | None,
    poll_s: float = POLL_S,
    settle_s: float = SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Stamp:
    """Block until ``path`` exists with a stamp other than ``stamp`` and has kept that stamp for
    ``settle_s``; return it."""
    while True:
        sleep(poll_s)
        new = file_stamp(path)
        if new is None or new == stamp:
            continue
        sleep(settle_s)
        if file_stamp(path) == new:
            return new
