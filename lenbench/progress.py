"""Rich progress for the terminal: one cell (training steps, loss, ETA, then evaluation lengths), or a
whole grid run by worker processes (cells done / running / failed with an ETA, a row per running cell).

Evaluation lengths differ in cost (a CHE length of 500 costs far more than one of 41), so a suite
passes each length's relative cost (:func:`forward_cost`) to ``eval_start``; the bar and its ETA
advance by cost, while the count column still reads lengths done / lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def forward_cost(tokens: int, dim: int, layers: int = 1, vocab: int = 0) -> float:
    """Relative cost of one transformer forward over ``tokens`` tokens: ``tokens * (layers * (12 dim +
    2 tokens) + vocab)``, its multiply-adds divided by ``dim`` (per token and layer ``12 dim^2`` in the
    q, k, v, out projections and the 4x feed-forward and ``2 tokens dim`` in ``q k^T`` and ``p v``, plus
    ``dim * vocab`` in the output head: the forward-FLOP count of Kaplan et al. 2020, Table 1)."""
    return float(tokens) * (layers * (12.0 * dim + 2.0 * tokens) + vocab)


def new_progress(console: Console) -> Progress:
    """The progress display every view shares: description, bar, count (m/n), info, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class RichReporter:
    """Implements :class:`lenbench.suites.base.Reporter` with a live rich progress display."""

    def __init__(self, console: Console | None = None, progress: Progress | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = progress or new_progress(self.console)
        self.train_task: TaskID | None = None
        self.eval_task: TaskID | None = None
        self.eval_total = 0
        self.eval_done_cost: list[float] = []  # cumulative cost after each evaluated item
        self.train_total = 0

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        note = f" (resumed at {resumed_from})" if resumed_from else ""
        self.train_total = total_steps
        self.train_task = self.progress.add_task(
            f"train {label}{note}", total=total_steps, completed=resumed_from, info="",
            count=f"{resumed_from}/{total_steps}",
        )

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.train_task is None:
            return
        info = f"loss {metrics.get('loss', float('nan')):.4f}"
        if "acc" in metrics:
            info += f" acc {metrics['acc']:.3f}"
        if "ppl" in metrics:
            info += f" ppl {metrics['ppl']:.2f}"
        self.progress.update(self.train_task, completed=step, info=info, count=f"{step}/{self.train_total}")

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        """``total`` items to evaluate; ``weights``: their relative costs (default: equal), which the bar
        and ETA advance by."""
        if self.train_task is not None:
            self.progress.remove_task(self.train_task)
            self.train_task = None
        costs = [float(w) for w in weights] if weights is not None and len(weights) == total else [1.0] * total
        self.eval_total = total
        self.eval_done_cost = list(accumulate(costs))
        self.eval_task = self.progress.add_task(
            f"eval  {label}", total=self.eval_done_cost[-1] if costs else 0, info="", count=f"0/{total}"
        )

    def eval_step(self, done: int, what: str, value: float) -> None:
        if self.eval_task is None:
            return
        completed = self.eval_done_cost[done - 1] if 0 < done <= len(self.eval_done_cost) else 0.0
        self.progress.update(self.eval_task, completed=completed, info=f"{what}: {value:.3f}",
                             count=f"{done}/{self.eval_total}")
        if done == self.eval_total:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


class GridProgress:
    """One live view over a grid whose cells run in worker processes.

    The top row counts cells (done / running / failed, ETA from the finished ones); each running
    cell gets a row driven by the :class:`RichReporter` calls its worker forwards (see :meth:`event`).
    """

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress = new_progress(console)
        self.total = total
        self.grid = self.progress.add_task("cells", total=total, info="", count=f"0/{total}")
        self.cells: dict[str, RichReporter] = {}
        self.counts = {"done": 0, "failed": 0, "busy": 0}

    def __enter__(self) -> GridProgress:
        self.progress.start()
        self._refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _refresh(self) -> None:
        parts = [f"{self.counts['done']} done", f"{len(self.cells)} running", f"{self.counts['failed']} failed"]
        parts += [f"{self.counts['busy']} busy"] if self.counts["busy"] else []
        finished = sum(self.counts.values())
        self.progress.update(self.grid, completed=finished, info=" · ".join(parts), count=f"{finished}/{self.total}")

    def started(self, label: str) -> None:
        """A worker took the cell (its rows appear with its first progress call)."""
        self.cells.setdefault(label, RichReporter(self.console, self.progress))
        self._refresh()

    def event(self, label: str, method: str, args: tuple[Any, ...]) -> None:
        """Replay a worker's reporter call (``train_start``, ``train_step``, ``eval_*``, ``message``)."""
        if method == "message":
            self.progress.console.print(f"{label}: {args[0]}", highlight=False)
            return
        if label not in self.cells:
            self.started(label)
        getattr(self.cells[label], method)(*args)

    def finished(self, label: str, status: str, detail: str = "") -> None:
        """A cell ended: drop its rows and print one line."""
        reporter = self.cells.pop(label, None)
        if reporter is not None:
            for task in (reporter.train_task, reporter.eval_task):
                if task is not None:
                    self.progress.remove_task(task)
        self.counts[status if status in self.counts else "done"] += 1
        style = {"failed": "red", "busy": "yellow"}.get(status, "green")
        self.progress.console.print(f"[{style}]{status}[/{style}] {label}{': ' + detail if detail else ''}")
        self._refresh()

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)
