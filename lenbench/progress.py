"""Rich progress for the terminal: training (steps, loss, accuracy, ETA), then evaluation lengths."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichReporter:
    """Implements :class:`lenbench.suites.base.Reporter` with a live rich progress display."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.train_task: TaskID | None = None
        self.eval_task: TaskID | None = None
        self.eval_total = 0

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        note = f" (resumed at {resumed_from})" if resumed_from else ""
        self.train_task = self.progress.add_task(
            f"train {label}{note}", total=total_steps, completed=resumed_from, info=""
        )

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.train_task is None:
            return
        info = f"loss {metrics.get('loss', float('nan')):.4f}"
        if "acc" in metrics:
            info += f" acc {metrics['acc']:.3f}"
        if "ppl" in metrics:
            info += f" ppl {metrics['ppl']:.2f}"
        self.progress.update(self.train_task, completed=step, info=info)

    def eval_start(self, label: str, total: int) -> None:
        if self.train_task is not None:
            self.progress.remove_task(self.train_task)
            self.train_task = None
        self.eval_total = total
        self.eval_task = self.progress.add_task(f"eval  {label}", total=total, info="")

    def eval_step(self, done: int, what: str, value: float) -> None:
        if self.eval_task is None:
            return
        self.progress.update(self.eval_task, completed=done, info=f"{what}: {value:.3f}")
        if done == self.eval_total:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)
