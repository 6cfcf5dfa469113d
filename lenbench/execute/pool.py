"""The local worker pool: a grid's cells in a process pool, one worker per device slot, one progress view.

Workers are spawned, never forked (CUDA and thread pools do not survive a fork). With N visible GPUs,
worker i sees GPU ``i mod N`` only (``CUDA_VISIBLE_DEVICES``); every worker gets ``cores // workers``
torch threads. Each cell writes its stdout, stderr and any traceback to ``<cell>/run.log``; its progress
calls travel through a queue to the parent, which draws one rich view over the whole grid.

The first error that is not a NaN loss stops the grid: no new cell starts, running cells finish, then
the error is reported. Ctrl-C interrupts the workers; their cells resume from their checkpoints. A
worker ends when the parent does, even on SIGKILL (:mod:`lenbench.execute.lifeline`), so no orphan
keeps a cell locked: rerunning the grid resumes its unfinished cells.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from rich.console import Console

from lenbench.errors import LenbenchError
from lenbench.execute.cell import Outcome, run_cell_once
from lenbench.execute.lifeline import die_with_parent
from lenbench.execute.tracking import Tracking
from lenbench.progress import GridProgress
from lenbench.results import ResultStore
from lenbench.suites.base import Cell, SilentReporter

_EVENTS: Any = None  # the worker's queue to the parent, set by _init_worker


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a Slurm or cgroup allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA devices."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_workers() -> int:
    """One worker per GPU; on a CPU machine one per two cores."""
    return len(visible_gpus()) or max(1, cpu_cores() // 2)


class QueueReporter:
    """A worker's :class:`~lenbench.suites.base.Reporter`: forwards each call to the parent's view.

    Training steps are sent at most every ``every`` seconds; messages also go to stdout (``run.log``).
    """

    def __init__(self, label: str, events: Any, every: float = 0.25) -> None:
        self.label, self.events, self.every = label, events, every
        self.last = 0.0

    def send(self, method: str, *args: Any) -> None:
        self.events.put((self.label, method, args))

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        self.send("train_start", label, total_steps, resumed_from)

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.send("train_step", step, {k: float(v) for k, v in metrics.items()})

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        self.send("eval_start", label, total, None if weights is None else [float(w) for w in weights])

    def eval_step(self, done: int, what: str, value: float) -> None:
        self.send("eval_step", done, what, float(value))

    def message(self, text: str) -> None:
        print(text)
        self.send("message", text)


def _init_worker(slots: Any, threads: int, events: Any, parent: int) -> None:
    """Runs once in each new worker: end with the parent, take a device slot, set the thread count, keep the queue."""
    global _EVENTS
    import torch

    die_with_parent(parent)
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot
    torch.set_num_threads(threads)
    _EVENTS = events


def _run_in_worker(cell: Cell, root: str, tracking: Tracking | None = None) -> Outcome:
    from lenbench.suites import get_suite

    reporter = QueueReporter(cell.label, _EVENTS)
    reporter.send("started", os.getpid())
    return run_cell_once(cell, ResultStore(root), get_suite(cell.suite), reporter, log=True, tracking=tracking)


class LocalPool:
    """Cells in a pool of ``workers`` spawned processes (default: one per GPU, else one per two cores)."""

    def __init__(self, workers: int | None = None, tracking: Tracking | None = None) -> None:
        if workers is not None and workers < 1:
            raise LenbenchError(f"--workers must be >= 1, got {workers}")
        self.workers, self.tracking = workers, tracking

    def run(self, cells: list[Cell], store: ResultStore, console: Console | None = None) -> list[Outcome]:
        store.check_writable()
        reporter = SilentReporter()
        outcomes: dict[int, Outcome] = {}
        for i, cell in enumerate(cells):  # done cells never reach a worker
            cell_dir = store.cell(cell.suite, cell.label, cell.config)
            if cell_dir.is_done(cell.config):
                outcomes[i] = run_cell_once(cell, store, None, reporter)
                if console is not None:
                    console.print(f"skip {cell.label}: already done ({cell_dir.path})", highlight=False)
        todo = [i for i in range(len(cells)) if i not in outcomes]
        if todo:
            workers = min(self.workers or default_workers(), len(todo))
            view = GridProgress(console, len(todo)) if console is not None else None
            if console is not None:
                console.print(f"[dim]{len(todo)} cell(s) on {workers} worker(s), "
                              f"{max(1, cpu_cores() // workers)} thread(s) each; logs in <cell>/run.log[/dim]")
            outcomes.update(self._pool(cells, todo, store, workers, view))
        return [outcomes[i] for i in range(len(cells))]

    def _pool(
        self, cells: list[Cell], todo: list[int], store: ResultStore, workers: int, view: GridProgress | None
    ) -> dict[int, Outcome]:
        ctx = mp.get_context("spawn")
        slots, events = ctx.Queue(), ctx.Queue()
        gpus = visible_gpus()
        for w in range(workers):
            slots.put(gpus[w % len(gpus)] if gpus else None)
        threads = max(1, cpu_cores() // workers)
        pool = ProcessPoolExecutor(workers, ctx, _init_worker, (slots, threads, events, os.getpid()))
        tracking = self.tracking.for_grid(cells) if self.tracking is not None else None
        futures: dict[Future[Outcome], int] = {
            pool.submit(_run_in_worker, cells[i], str(store.root), tracking): i for i in todo
        }
        pids: dict[str, int] = {}
        outcomes: dict[int, Outcome] = {}
        error: LenbenchError | None = None
        interrupted = False
        try:
            with view or contextlib.nullcontext():
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(events, view, pids)
                    for future in finished:
                        cell = cells[futures[future]]
                        pids.pop(cell.label, None)
                        try:
                            outcome = future.result()
                        except CancelledError:
                            continue
                        except Exception as exc:  # the cell's error, or BrokenProcessPool
                            for other in pending:
                                other.cancel()  # cells not started yet; running ones finish
                            if error is None and view is not None:
                                view.finished(cell.label, "failed", f"{type(exc).__name__}: {exc}")
                            error = error or _cell_error(cell, store, exc)
                            continue
                        outcomes[futures[future]] = outcome
                        if view is not None:
                            view.finished(cell.label, outcome.status, _detail(outcome))
        except KeyboardInterrupt:
            interrupted = True
            for future in futures:
                future.cancel()
            for pid in pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)  # our own workers: stop their cells at the next step
            raise
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        if error is not None:
            raise error
        return outcomes


def _drain(events: Any, view: GridProgress | None, pids: dict[str, int]) -> None:
    """Move every queued worker event to the view (and remember which worker runs which cell)."""
    while True:
        try:
            label, method, args = events.get_nowait()
        except queue.Empty:
            return
        if method == "started":
            pids[label] = args[0]
            if view is not None:
                view.started(label)
        elif view is not None:
            view.event(label, method, args)


def _detail(outcome: Outcome) -> str:
    if outcome.status in ("failed", "busy"):
        return outcome.reason
    from lenbench.suites import get_suite

    seconds = outcome.summary.get("train_seconds_this_run")
    parts = [get_suite(outcome.cell.suite).summary_text(outcome.summary) or ""]
    parts.append(f"trained {seconds:.0f} s" if isinstance(seconds, (int, float)) else "")
    return ", ".join(p for p in parts if p)


def _cell_error(cell: Cell, store: ResultStore, exc: BaseException) -> LenbenchError:
    """One line for a cell that raised in a worker; the traceback is in the cell's run.log."""
    log = store.cell(cell.suite, cell.label, cell.config).path / "run.log"
    if isinstance(exc, BrokenProcessPool):
        return LenbenchError(
            f"a worker process died (killed, or out of memory?) while running {cell.label}; "
            "finished cells are kept, rerun to resume"
        )
    where = f" (traceback in {log})" if log.exists() else ""
    if isinstance(exc, LenbenchError):
        return LenbenchError(f"cell {cell.label}: {exc}{where}")
    return LenbenchError(f"cell {cell.label} raised {type(exc).__name__}: {exc}{where}")
