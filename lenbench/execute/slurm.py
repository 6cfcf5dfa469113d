"""Slurm job arrays through submitit: one array task per pending cell, requeued when preempted.

submitit is the optional dependency ``lenbench[slurm]``, imported here only. The store decides what
is pending: done cells are not submitted, nor cells another process holds at submission time, and
each task runs its cell under the cell's lock, so resubmitting a grid is always safe. A preempted or
timed-out task is requeued by submitit (:meth:`CellJob.checkpoint`, its checkpointing protocol) and
resumes from the cell's last checkpoint, which makes the continued training bit-identical to an
uninterrupted run (the steps since that checkpoint are redone). ``--gpus-per-cell N`` with N > 1
starts N tasks per cell that train it data-parallel (suites whose ``data_parallel`` is true;
:mod:`lenbench.execute.torchrun`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lenbench.errors import LenbenchError
from lenbench.execute.cell import Outcome, run_cell_once
from lenbench.execute.status import lock_held
from lenbench.execute.tracking import Tracking
from lenbench.results import ResultStore
from lenbench.suites.base import Cell, SilentReporter

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """A Slurm time limit (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole minutes, rounded up."""
    m = _TIME.match(text.strip())
    if m is None:
        raise LenbenchError(f"--time {text!r} is not a Slurm time (e.g. 90, 08:00:00 or 1-12:00:00)")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = (a * 60 + b) * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise LenbenchError(f"--time {text!r} must be positive")
    return -(-seconds // 60)


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise LenbenchError("--executor slurm needs submitit: pip install 'lenbench[slurm]'") from exc
    return submitit


@dataclass
class CellJob:
    """What one array task runs: one cell into the store at ``root``; returns its :class:`Outcome`."""

    cell: Cell
    root: str
    threads: int | None = None
    tracking: Tracking | None = None

    def __call__(self) -> Outcome:
        import torch

        from lenbench.suites import get_suite

        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:
            torch.set_num_threads(threads)
        store = ResultStore(self.root)
        if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", os.environ.get("SLURM_NTASKS", "1"))) > 1:
            return self._data_parallel(store)
        suite = get_suite(self.cell.suite)
        return run_cell_once(self.cell, store, suite, SilentReporter(), log=True, tracking=self.tracking)

    def _data_parallel(self, store: ResultStore) -> Outcome:
        from lenbench.execute.torchrun import DataParallelExecutor
        from lenbench.train.parallel import detect

        import_submitit().helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        env = detect()
        assert env is not None  # export() set RANK and WORLD_SIZE
        return DataParallelExecutor(env, self.tracking).run([self.cell], store)[0]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on preemption or timeout: requeue the same cell (it resumes from disk)."""
        return import_submitit().helpers.DelayedSubmission(CellJob(self.cell, self.root, self.threads, self.tracking))


class SlurmArray:
    """Submits the pending cells as one job array and returns at once (``self.jobs`` holds the jobs).

    ``cluster="local"`` runs the same array with submitit's local executor (tests, a workstation).
    """

    def __init__(
        self,
        partition: str | None = None,
        gpus_per_cell: int = 1,
        cpus_per_cell: int | None = None,
        max_parallel: int = 64,
        time: str = "08:00:00",
        cluster: str = "slurm",
        folder: str | Path | None = None,
        tracking: Tracking | None = None,
    ) -> None:
        self.submitit = import_submitit()
        for what, value, least in (("--gpus-per-cell", gpus_per_cell, 0), ("--max-parallel", max_parallel, 1),
                                   ("--cpus-per-cell", cpus_per_cell or 1, 1)):
            if value < least:
                raise LenbenchError(f"{what} must be >= {least}, got {value}")
        self.partition, self.gpus, self.cpus = partition, gpus_per_cell, cpus_per_cell
        self.max_parallel, self.time, self.minutes = max_parallel, time, parse_time(time)
        self.cluster, self.folder, self.tracking = cluster, folder, tracking
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise LenbenchError("sbatch not found: submit from a Slurm login node (--executor local runs here)")
        self.jobs: list[Any] = []

    def log_folder(self, store: ResultStore) -> Path:
        """submitit's folder (pickles, stdout/stderr per task), beside the results root, not in it."""
        return Path(self.folder) if self.folder else store.root.with_name(f"{store.root.name}_submitit")

    def run(self, cells: list[Cell], store: ResultStore, console: Console | None = None) -> list[Outcome]:
        store.check_writable()
        tasks = max(1, self.gpus)
        if tasks > 1:
            from lenbench.suites import get_suite

            serial = sorted({c.suite for c in cells if not get_suite(c.suite).data_parallel})
            if serial:
                raise LenbenchError(f"--gpus-per-cell above 1 trains one cell data-parallel; suite {serial[0]!r} "
                                    "does not train data-parallel")
        outcomes: list[Outcome] = []
        todo: list[int] = []
        for cell in cells:
            cell_dir = store.cell(cell.suite, cell.label, cell.config)
            if cell_dir.is_done(cell.config):
                outcomes.append(run_cell_once(cell, store, None, SilentReporter()))
            elif cell_dir.path.is_dir() and lock_held(cell_dir):
                outcomes.append(Outcome(cell, cell_dir, "busy", reason="being run by another process; not submitted"))
            else:
                todo.append(len(outcomes))
                outcomes.append(Outcome(cell, cell_dir, "submitted"))
        if not todo:
            if console is not None:
                console.print("nothing to submit: every cell is done or running")
            return outcomes
        executor = self.submitit.AutoExecutor(folder=self.log_folder(store), cluster=self.cluster)
        suite = cells[todo[0]].suite
        params: dict[str, Any] = {
            "name": f"lenbench-{suite}",
            "timeout_min": self.minutes,
            "nodes": 1,
            "tasks_per_node": tasks,
            "gpus_per_node": self.gpus,
            "slurm_array_parallelism": self.max_parallel,
        }
        if self.cpus:
            params["cpus_per_task"] = self.cpus
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        root = str(store.root.resolve())  # a task may start in another working directory
        tracking = self.tracking.for_grid(cells) if self.tracking is not None else None
        jobs = executor.submit_array([CellJob(outcomes[i].cell, root, self.cpus, tracking) for i in todo])
        self.jobs = list(jobs)
        for i, job in zip(todo, jobs, strict=True):
            outcomes[i].reason = f"job {job.job_id}"
        if console is not None:
            self._say(console, len(todo), len(cells) - len(todo), store)
        return outcomes

    def array_id(self) -> str:
        return str(self.jobs[0].job_id).split("_")[0] if self.jobs else ""

    def _say(self, console: Console, submitted: int, skipped: int, store: ResultStore) -> None:
        where = f"partition {self.partition}, " if self.partition else ""
        what = f"job array {self.array_id()}" if self.cluster == "slurm" else f"{self.cluster} jobs"
        console.print(
            f"submitted {submitted} cell(s) as {what} ({where}{self.gpus} GPU(s) per cell, at most "
            f"{self.max_parallel} at once, time {self.time}); {skipped} done or running, not submitted"
        )
        console.print(f"logs: {self.log_folder(store)}/ (submitit) and <cell>/run.log under {store.root}/")
        squeue = f"; squeue -j {self.array_id()}" if self.cluster == "slurm" else ""
        console.print(f"watch: lenbench status --out {store.root}{squeue}")
