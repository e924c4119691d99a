"""Progress of long work drawn as rich bars, on the console it is given (stderr in the CLI)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="cyan")


class RichProgress:
    """The extraction engine's progress hook (:class:`featstore.extract.ExtractProgress`)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._task = None

    def start(self, alias: str, total_rows: int) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), _RateColumn(), TimeElapsedColumn(),
                                  console=self._console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(alias, total=total_rows)

    def advance(self, rows: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, rows)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
