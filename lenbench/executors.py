"""Where cells run. In-process, one after another; the store decides what is pending.

Each cell runs under its folder's lock; a cell whose ``DONE`` exists with the same config is
skipped; a NaN/inf loss marks the cell failed (reason and step in ``FAILED``) and the grid goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lenbench.errors import LenbenchError
from lenbench.results import CellBusy, CellDir, ResultStore, environment_manifest
from lenbench.suites.base import Cell, Reporter
from lenbench.train import NonFiniteLoss


@dataclass
class Outcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    cell_dir: CellDir
    status: str  # "done", "skipped", "failed", "busy"
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_cell_once(cell: Cell, store: ResultStore, suite: Any, reporter: Reporter) -> Outcome:
    """Run one cell unless it is done or locked by another process."""
    cell_dir = store.cell(cell.suite, cell.label, cell.config)
    if cell_dir.is_done(cell.config):
        return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
    try:
        with cell_dir.lock():
            if cell_dir.is_done(cell.config):  # finished by another process while we waited
                return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
            cell_dir.prepare(cell.config, environment_manifest(device_name()))
            try:
                summary = suite.run_cell(cell, cell_dir, reporter)
            except NonFiniteLoss as exc:
                cell_dir.mark_failed(str(exc), exc.step)
                return Outcome(cell, cell_dir, "failed", reason=str(exc))
            cell_dir.mark_done(summary)
            return Outcome(cell, cell_dir, "done", summary)
    except CellBusy as exc:
        return Outcome(cell, cell_dir, "busy", reason=str(exc))


def _read_summary(cell_dir: CellDir) -> dict[str, Any]:
    try:
        return json.loads(cell_dir.done_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LenbenchError(f"corrupted DONE marker {cell_dir.done_path}; delete it to rerun the cell") from exc


def run_in_process(cells: list[Cell], store: ResultStore, suite: Any, reporter: Reporter) -> list[Outcome]:
    """Run every cell sequentially in this process, reporting skips and failures as it goes."""
    store.check_writable()
    outcomes = []
    for cell in cells:
        outcome = run_cell_once(cell, store, suite, reporter)
        if outcome.status == "skipped":
            reporter.message(f"skip {cell.label}: already done ({outcome.cell_dir.path})")
        elif outcome.status == "failed":
            reporter.message(f"FAILED {cell.label}: {outcome.reason}")
        elif outcome.status == "busy":
            reporter.message(f"skip {cell.label}: {outcome.reason}")
        outcomes.append(outcome)
    return outcomes
