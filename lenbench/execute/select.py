"""Choosing an executor by name (``--executor``), its options checked: the top of :mod:`lenbench.execute`."""

from __future__ import annotations

from typing import Any

from lenbench.errors import LenbenchError
from lenbench.execute.cell import Executor
from lenbench.execute.inprocess import InProcess
from lenbench.execute.tracking import Tracking

EXECUTORS = ("inprocess", "local", "slurm")


def make_executor(
    name: str,
    workers: int | None = None,
    slurm: dict[str, Any] | None = None,
    tracking: Tracking | None = None,
) -> Executor:
    """The executor called ``name`` (``inprocess``, ``local`` or ``slurm``), its options checked.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) only ``inprocess`` is allowed, and it becomes
    the data-parallel executor.
    """
    from lenbench.train.parallel import detect

    if name not in EXECUTORS:
        raise LenbenchError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
    if workers is not None and name != "local":
        raise LenbenchError("--workers applies to --executor local only")
    if slurm and name != "slurm":
        raise LenbenchError(f"--{next(iter(slurm)).replace('_', '-')} applies to --executor slurm only")
    env = detect()
    if env is not None:
        if name != "inprocess":
            raise LenbenchError(f"under torchrun every rank runs the cell together; drop --executor {name}")
        from lenbench.execute.torchrun import DataParallelExecutor

        return DataParallelExecutor(env, tracking)
    if name == "local":
        from lenbench.execute.pool import LocalPool

        return LocalPool(workers, tracking)
    if name == "slurm":
        from lenbench.execute.slurm import SlurmArray

        return SlurmArray(**(slurm or {}), tracking=tracking)
    return InProcess(tracking)
