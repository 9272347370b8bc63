"""A rich progress bar for migrations, for a terminal that waits on the runner.

    with MigrationBars() as bars:
        Runner(..., progress=bars.update)
"""
from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from drctl.runner.migration import Progress as Sample


class MigrationBars:
    def __init__(self, **progress_kw: Any) -> None:
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                              TimeElapsedColumn(), **progress_kw)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "MigrationBars":
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def update(self, s: Sample) -> None:
        """Progress callback: one bar per intent, memory sent of memory total."""
        key = f"{s.intent}:{s.dst}"
        if key not in self._tasks:
            self._tasks[key] = self._bars.add_task(f"{s.vm} -> {s.dst}", total=max(1, s.memory_total), detail="")
        detail = (f"iter {s.iteration} rem {s.memory_remaining >> 20} MiB "
                  f"{s.bps / 2**20:.0f} MiB/s {s.phase.value}")
        self._bars.update(self._tasks[key], completed=s.memory_processed, total=max(1, s.memory_total),
                          detail=detail)
