"""One cell, wherever it runs: :func:`run_cell_once` and its :class:`Outcome` (the bottom of :mod:`lenbench.execute`).

Every executor has one interface, ``run(cells, store, console) -> list[Outcome]``, and every cell,
wherever it runs, goes through :func:`run_cell_once`: it runs under its folder's lock (so no cell
runs twice at once), a cell whose ``DONE`` exists with the same config is skipped, and a NaN/inf
loss marks the cell failed (reason and step in ``FAILED``) while the grid goes on. The grid
expansion and the store decide what is pending, so rerunning or resubmitting is always safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console

from lenbench.errors import LenbenchError
from lenbench.execute.tracking import Tracking, tracked
from lenbench.results import CellBusy, CellDir, ResultStore, environment_manifest
from lenbench.suites.base import Cell, Reporter
from lenbench.train import NonFiniteLoss

LOCK_TRIES = 3  # a `lenbench status` probe holds a lock for microseconds: retry briefly before "busy"


@dataclass
class Outcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    cell_dir: CellDir
    status: str  # "done", "skipped", "failed", "busy", "submitted"
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class Executor(Protocol):
    """Runs (or submits) the cells of a grid; ``console=None`` runs silently."""

    def run(self, cells: list[Cell], store: ResultStore, console: Console | None = None) -> list[Outcome]: ...


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def cell_log(cell_dir: CellDir) -> Iterator[None]:
    """Append this run's stdout, stderr and any traceback to ``<cell>/run.log`` (worker processes)."""
    with open(cell_dir.path / "run.log", "a", buffering=1) as fh:
        where = ", ".join(
            f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID")
            if k in os.environ
        )
        import torch

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        fh.write(f"== {stamp} start on {socket.gethostname()} pid {os.getpid()} "
                 f"threads {torch.get_num_threads()}{', ' + where if where else ''}\n")
        status = "interrupted"
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
            status = "finished"
        except Exception:
            traceback.print_exc(file=fh)
            raise
        finally:
            fh.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} {status}\n")


@contextlib.contextmanager
def locked(cell_dir: CellDir) -> Iterator[None]:
    """The cell's lock (:meth:`CellDir.lock`), retried briefly before :class:`CellBusy` is raised."""
    for attempt in range(LOCK_TRIES):
        entered = False
        try:
            with cell_dir.lock():
                entered = True
                yield
            return
        except CellBusy:
            if entered or attempt == LOCK_TRIES - 1:
                raise
            time.sleep(0.05)


def run_cell_once(
    cell: Cell, store: ResultStore, suite: Any, reporter: Reporter, log: bool = False, tracking: Tracking | None = None
) -> Outcome:
    """Run one cell unless it is done or locked by another process (``log``: also write ``run.log``;
    ``tracking``: also send it to TensorBoard / W&B, :mod:`lenbench.execute.tracking`)."""
    cell_dir = store.cell(cell.suite, cell.label, cell.config)
    if cell_dir.is_done(cell.config):
        return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
    try:
        with locked(cell_dir):
            if cell_dir.is_done(cell.config):  # finished by another process while we waited
                return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
            cell_dir.prepare(cell.config, environment_manifest(device_name()))
            with cell_log(cell_dir) if log else contextlib.nullcontext(), tracked(tracking, cell, cell_dir) as trackers:
                try:
                    summary = suite.run_cell(cell, cell_dir, trackers.reporter(reporter))
                except NonFiniteLoss as exc:
                    trackers.failed = True
                    cell_dir.mark_failed(str(exc), exc.step)
                    if log:
                        print(f"FAILED: {exc}")
                    return Outcome(cell, cell_dir, "failed", reason=str(exc))
                trackers.records(cell_dir.read_metrics())
            cell_dir.mark_done(summary)
            return Outcome(cell, cell_dir, "done", summary)
    except CellBusy as exc:
        return Outcome(cell, cell_dir, "busy", reason=str(exc))


def _read_summary(cell_dir: CellDir) -> dict[str, Any]:
    try:
        return json.loads(cell_dir.done_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LenbenchError(f"corrupted DONE marker {cell_dir.done_path}; delete it to rerun the cell") from exc


def report_outcome(outcome: Outcome, reporter: Reporter) -> None:
    """One line for a cell that did not simply finish: skipped, failed or busy."""
    label = outcome.cell.label
    if outcome.status == "skipped":
        reporter.message(f"skip {label}: already done ({outcome.cell_dir.path})")
    elif outcome.status == "failed":
        reporter.message(f"FAILED {label}: {outcome.reason}")
    elif outcome.status == "busy":
        reporter.message(f"skip {label}: {outcome.reason}")
