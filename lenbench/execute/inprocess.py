"""The default executor: a grid's cells one after another in this process, with live per-step progress."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lenbench.execute.cell import Outcome, report_outcome, run_cell_once
from lenbench.execute.tracking import Tracking
from lenbench.results import CellDir, ResultStore
from lenbench.suites.base import Cell, Reporter, RunContext, SilentReporter


def run_in_process(
    cells: list[Cell], store: ResultStore, suite: Any, reporter: Reporter, tracking: Tracking | None = None
) -> list[Outcome]:
    """Run every cell sequentially in this process, reporting skips and failures as it goes."""
    store.check_writable()
    outcomes = []
    tracking = tracking.for_grid(cells) if tracking is not None else None
    for cell in cells:
        outcome = run_cell_once(cell, store, suite, reporter, tracking=tracking)
        report_outcome(outcome, reporter)
        outcomes.append(outcome)
    return outcomes


class InProcess:
    """Cells one after another in this process, with live per-step progress (the default executor)."""

    def __init__(self, tracking: Tracking | None = None) -> None:
        self.tracking = tracking

    def run(self, cells: list[Cell], store: ResultStore, console: Console | None = None) -> list[Outcome]:
        from lenbench.progress import RichReporter
        from lenbench.suites import get_suite

        by_suite: dict[str, Any] = {c.suite: get_suite(c.suite) for c in cells}
        suite = _OneSuite(by_suite)
        if console is None:
            return run_in_process(cells, store, suite, SilentReporter(), self.tracking)
        with RichReporter(console) as reporter:
            return run_in_process(cells, store, suite, reporter, self.tracking)


class _OneSuite:
    """Dispatches ``run_cell`` to the module of the cell's suite."""

    def __init__(self, modules: dict[str, Any]) -> None:
        self.modules = modules

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        return self.modules[cell.suite].run_cell(cell, cell_dir, ctx)
