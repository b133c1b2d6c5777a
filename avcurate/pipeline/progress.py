"""Progress bars for a run: one bar per stage, in rows."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """A thin wrapper so the runner does not depend on rich's API details (and can be silenced)."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self._bar = RichProgress(
            TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not enabled, transient=False,
        )

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def stage(self, name: str, total: int | None) -> TaskID:
        return self._bar.add_task(name, total=total)

    def advance(self, task: TaskID, rows: int) -> None:
        self._bar.advance(task, rows)

    def done(self, task: TaskID) -> None:
        completed = self._bar.tasks[task].completed
        self._bar.update(task, total=completed, completed=completed)

    def skip(self, name: str, rows: int) -> None:
        self._bar.add_task(f"{name} (done)", total=rows, completed=rows)
