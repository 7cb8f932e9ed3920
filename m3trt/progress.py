"""Progress bars with rate and ETA for every long job, silenced by ``--quiet``.

The library reports through a ``Reporter``; only the CLI decides whether it draws (rich) or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from m3trt.errors import terminal_safe


class RateColumn(ProgressColumn):
    """Items per second, in the task's own unit (images/s for most jobs)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class TaskHandle:
    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: float = 1, **fields: object) -> None:
        if self._progress is not None and self._task_id is not None:
            info = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            # Values are data, not markup: a "[gpu]" in a path or a reason must show as is.
            self._progress.update(self._task_id, advance=n, info=escape(info))


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Reporter:
    """Draws progress bars and one-line messages on stderr, unless quiet."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[TaskHandle]:
        if self.quiet:
            yield TaskHandle(None, None)
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(escape(description), total=total, unit=unit, info="")
            yield TaskHandle(progress, task_id)

    def log(self, message: str) -> None:
        """A line for people; file names in it may hold escape sequences, shown escaped."""
        if not self.quiet:
            text = terminal_safe(message, keep_newlines=True)
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


SILENT = Reporter(quiet=True)
