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


class RichFinetuneProgress:
    """The finetuning loop's progress hook (:class:`featstore.finetune.FinetuneProgress`):
    one bar per epoch with img/s and the running train loss, then a line with the epoch's
    train loss and val metric."""

    def __init__(self, console: Console, label: str = "") -> None:
        self._console = console
        self._label = label
        self._progress: Progress | None = None
        self._task = None
        self._loss = 0.0

    def start(self, epoch: int, epochs: int, total: int) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), _RateColumn(),
                                  TextColumn("loss {task.fields[loss]:.4f}"),
                                  TimeElapsedColumn(), console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(f"{self._label} epoch {epoch}/{epochs}",
                                             total=total, loss=0.0)

    def advance(self, n: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, loss=loss)

    def end(self, epoch: int, train_loss: float, val_metric: float, img_s: float) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._console.print(f"{self._label} epoch {epoch}: train loss {train_loss:.4f}, "
                            f"val {val_metric:.4f}, {img_s:,.0f} img/s", highlight=False)
