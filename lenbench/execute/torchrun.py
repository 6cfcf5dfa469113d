"""Data-parallel training under ``torchrun`` (DDP): every rank runs each cell together, for suites
whose ``data_parallel`` is true.

``torchrun --nproc-per-node 8 -m lenbench run --suite <suite> ...`` starts one process per device; each
runs the same command and so expands the same grid. :class:`DataParallelExecutor` joins the process
group (:func:`lenbench.train.parallel.process_group`) and runs the cells one after another on all
ranks together:

- rank 0 takes the cell's lock and decides (skip when done or busy, else run) for every rank;
- the suite gets the rank context (:mod:`lenbench.train.parallel`) in its ``RunContext`` and passes it
  to the training loop;
- only rank 0 writes: results, checkpoints (holding every rank's RNG state, so resuming with the same
  number of ranks is exact) and logs. The other ranks write into a private temporary folder, deleted
  after the cell. Every rank evaluates (identical work, no collectives), so none waits on another.
  The cell config, and its folder, are those of a one-process run.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from typing import Any

from rich.console import Console

from lenbench.errors import LenbenchError
from lenbench.execute.cell import Outcome, report_outcome, run_cell_once
from lenbench.execute.tracking import Tracking
from lenbench.results import CellDir, ResultStore, atomic_write_json
from lenbench.suites.base import Cell, Reporter, RunContext, SilentReporter
from lenbench.train import NonFiniteLoss
from lenbench.train.parallel import DataParallel, DistEnv, process_group, rank_split, split_batch


class _Announce:
    """Wraps a suite so rank 0 tells the other ranks to start just before it runs the cell."""

    def __init__(self, suite: Any, par: DataParallel) -> None:
        self.suite, self.par, self.announced = suite, par, False

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        self.announced = True
        self.par.broadcast("run")
        with contextlib.suppress(OSError, json.JSONDecodeError):  # the manifest says how this run trained
            manifest = json.loads(cell_dir.manifest_path.read_text())
            split = rank_split(*self.suite.batch_split(cell), self.par)
            parallel = {
                "world_size": self.par.world_size,
                "backend": "nccl" if self.par.cuda else "gloo",
                "batch_per_rank": split.per_rank,
                "micro_batch_size": split.micro,
                "accumulation": split.accumulation,
            }
            atomic_write_json(cell_dir.manifest_path, {**manifest, "data_parallel": parallel})
        return self.suite.run_cell(cell, cell_dir, ctx)


class DataParallelExecutor:
    """Runs each cell on all torchrun ranks together; rank 0 alone locks, writes and reports."""

    def __init__(self, env: DistEnv, tracking: Tracking | None = None) -> None:
        self.env, self.tracking = env, tracking

    def check(self, cells: list[Cell]) -> None:
        """Refuse, before any process group is joined, cells this executor cannot split over the ranks."""
        from lenbench.suites import get_suite

        serial = sorted({c.suite for c in cells if not get_suite(c.suite).data_parallel})
        if serial:
            raise LenbenchError(f"torchrun trains cells data-parallel; suite {serial[0]!r} runs without it")
        for cell in cells:
            try:
                split_batch(*get_suite(cell.suite).batch_split(cell), self.env.world_size)
            except LenbenchError as exc:
                raise LenbenchError(f"{cell.label}: {exc}") from exc

    def run(self, cells: list[Cell], store: ResultStore, console: Console | None = None) -> list[Outcome]:
        from lenbench.progress import RichReporter
        from lenbench.suites import get_suite

        self.check(cells)
        rank0 = self.env.rank == 0
        if rank0:
            store.check_writable()
        outcomes = []
        tracking = self.tracking.for_grid(cells) if self.tracking is not None else None  # rank 0 alone tracks
        with process_group(self.env) as par, tempfile.TemporaryDirectory(prefix=f"lenbench-rank{par.rank}-") as tmp:
            reporter: Reporter = SilentReporter()
            with contextlib.ExitStack() as stack:
                if rank0 and console is not None:
                    backend = "nccl" if par.cuda else "gloo"
                    console.print(f"[dim]data-parallel over {par.world_size} ranks ({backend})[/dim]")
                    reporter = stack.enter_context(RichReporter(console))
                for cell in cells:
                    suite = get_suite(cell.suite)
                    if rank0:
                        announcing = _Announce(suite, par)
                        outcome = run_cell_once(cell, store, announcing, reporter, tracking=tracking, parallel=par)
                        if not announcing.announced:
                            par.broadcast("skip")
                        report_outcome(outcome, reporter)
                        par.broadcast((outcome.status, outcome.summary, outcome.reason))
                    else:
                        if par.broadcast(None) == "run":
                            scratch = ResultStore(tmp).cell(cell.suite, cell.label, cell.config)
                            scratch.path.mkdir(parents=True, exist_ok=True)
                            with contextlib.suppress(NonFiniteLoss):  # rank 0 records the failure
                                suite.run_cell(cell, scratch, RunContext(SilentReporter(), par))
                        status, summary, reason = par.broadcast(None)
                        cell_dir = store.cell(cell.suite, cell.label, cell.config)
                        outcome = Outcome(cell, cell_dir, status, summary, reason)
                    outcomes.append(outcome)
        return outcomes
