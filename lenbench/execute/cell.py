"""One cell, wherever it runs: :func:`run_cell_once` and its :class:`Outcome` (the bottom of :mod:`lenbench.execute`).

Every executor has one interface, ``run(cells, store, console) -> list[Outcome]``, and every cell,
wherever it runs, goes through :func:`run_cell_once`: it runs under its folder's lock (so no cell
runs twice at once), a cell whose ``DONE`` exists with the same config is skipped, and a NaN/inf
loss marks the cell failed (reason and step in ``FAILED``) while the grid goes on. The grid
expansion and the store decide what is pending, so rerunning or resubmitting is always safe. A cell
computed again because its PE changed (an edited plugin, a changed default) says why before it
starts, and its stale folder moves aside once it finishes (:mod:`lenbench.execute.supersede`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console

from lenbench.errors import LenbenchError
from lenbench.execute.supersede import stale_cells, supersede_stale
from lenbench.execute.tracking import Tracking, tracked
from lenbench.results import CellBusy, CellDir, ResultStore, environment_manifest
from lenbench.suites.base import Cell, Reporter, RunContext
from lenbench.train import NonFiniteLoss
from lenbench.train.parallel import DataParallel

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


class Whereabouts:
    """A reporter wrapper that remembers how far the cell got, for the Ctrl-C message (:func:`stopped_at`)."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.phase, self.done, self.total = "", 0, 0

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        self.phase, self.done, self.total = "train", resumed_from, total_steps
        self.inner.train_start(label, total_steps, resumed_from)

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        self.done = step
        self.inner.train_step(step, metrics)

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        self.phase, self.done, self.total = "eval", 0, total
        self.inner.eval_start(label, total, weights)

    def eval_step(self, done: int, what: str, value: float) -> None:
        self.done = done
        self.inner.eval_step(done, what, value)

    def message(self, text: str) -> None:
        self.inner.message(text)


def stopped_at(cell: Cell, where: Whereabouts) -> str:
    """One line for Ctrl-C: where the cell stopped and what rerunning the same command does."""
    every = int((cell.config.get("train") or {}).get("checkpoint_every") or 0)
    if where.phase == "train":
        kept = where.done // every * every if every else 0
        resume = f"from its checkpoint at step {kept}" if kept else "from step 0 (no checkpoint yet)"
        at = f"at training step {where.done}/{where.total}; rerunning the same command resumes it {resume}"
    elif where.phase == "eval":
        at = (f"while evaluating ({where.done}/{where.total} done, each kept); rerunning the same command resumes "
              "its evaluation there")
    else:
        at = "before it trained; rerunning the same command starts it again"
    return f"interrupted {cell.label} {at}; finished cells are kept"


def run_cell_once(
    cell: Cell, store: ResultStore, suite: Any, reporter: Reporter, log: bool = False, tracking: Tracking | None = None,
    parallel: DataParallel | None = None,
) -> Outcome:
    """Run one cell unless it is done or locked by another process (``log``: also write ``run.log``;
    ``tracking``: also send it to TensorBoard / W&B, :mod:`lenbench.execute.tracking`; ``parallel``:
    the torchrun context handed to the suite in its :class:`RunContext`)."""
    cell_dir = store.cell(cell.suite, cell.label, cell.config)
    if cell_dir.is_done(cell.config):
        return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
    try:
        with locked(cell_dir):
            if cell_dir.is_done(cell.config):  # finished by another process while we waited
                return Outcome(cell, cell_dir, "skipped", _read_summary(cell_dir))
            for old, why in stale_cells(cell, store):
                reporter.message(f"rerun {cell.label}: {why} ({old.path}; it moves aside when this cell finishes)")
            cell_dir.prepare(cell.config, environment_manifest(device_name()))
            where = Whereabouts(reporter)
            with cell_log(cell_dir) if log else contextlib.nullcontext(), tracked(tracking, cell, cell_dir) as trackers:
                try:
                    summary = suite.run_cell(cell, cell_dir, RunContext(trackers.reporter(where), parallel))
                except KeyboardInterrupt:
                    reporter.message(stopped_at(cell, where))
                    raise
                except NonFiniteLoss as exc:
                    trackers.failed = True
                    cell_dir.mark_failed(str(exc), exc.step)
                    if log:
                        print(f"FAILED: {exc}")
                    for line in supersede_stale(cell, store):
                        reporter.message(line)
                    return Outcome(cell, cell_dir, "failed", reason=str(exc))
                except Exception as exc:  # e.g. a dataset that cannot be loaded: failed, with why, then raised
                    trackers.failed = True
                    cell_dir.mark_failed(failure_reason(exc), None)
                    raise
                trackers.records(cell_dir.read_metrics())
            cell_dir.mark_done(summary)
            for line in supersede_stale(cell, store):
                reporter.message(line)
            return Outcome(cell, cell_dir, "done", summary)
    except CellBusy as exc:
        return Outcome(cell, cell_dir, "busy", reason=str(exc))


def failure_reason(exc: BaseException) -> str:
    """The one line ``FAILED`` records for an error that stopped a cell."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, LenbenchError) else f"{type(exc).__name__}: {text}".rstrip(": ")


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
