"""Progress display that appears only for work lasting longer than a second."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class DelayedProgress:
    """A rich progress bar for ``total`` steps, shown once ``delay_s`` has passed (None: never)."""

    def __init__(self, console: Console | None, total: int, description: str, delay_s: float = 1.0):
        self.console, self.total, self.description, self.delay_s = (
            console,
            total,
            description,
            delay_s,
        )
        self.start = time.perf_counter()
        self.bar: Progress | None = None
        self.task = None

    def update(self, step: int, info: str = "") -> None:
        if self.console is None:
            return
        if self.bar is None:
            if time.perf_counter() - self.start < self.delay_s:
                return
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, info="")
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
