"""A torchrun launch's ranks and the collectives data-parallel training needs (below the suites).

:func:`detect` reads torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`process_group`
joins the process group (NCCL on CUDA, gloo on CPU) and yields its :class:`DataParallel`, which the
executor hands to each cell (``RunContext.parallel``; no module global). The suite passes it to the training loop
(:func:`lenbench.train.train`'s ``parallel``), which then wraps the model in
``DistributedDataParallel``, gives each rank its own data stream (seeded by seed and rank) and
averages the loss over ranks (so a NaN on any rank fails the cell on all of them). The suite samples
``batch_size // world_size`` sequences per rank and step (:func:`split_batch`), in ``accumulation``
micro-batches of ``micro_batch_size`` when that is smaller, so the global batch is the configured
one on any number of ranks. The executor that runs cells this way is :mod:`lenbench.execute.torchrun`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import nn

from lenbench.errors import LenbenchError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int


def detect() -> DistEnv | None:
    """torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise LenbenchError(f"malformed torchrun environment: {exc}") from exc
    return env if env.world_size > 1 else None


@dataclass(frozen=True)
class BatchSplit:
    """One optimizer step's global batch on one rank: ``accumulation`` passes of ``micro`` sequences."""

    per_rank: int
    micro: int
    accumulation: int


def split_batch(batch_size: int, micro_batch_size: int | None, world_size: int) -> BatchSplit:
    """Global batch B over W ranks, at most M sequences per forward: each rank takes B / W sequences
    per step as (B / W) / m passes of m = min(M, B / W) (gradient accumulation). B = 256, W = 1,
    M = 32: 8 passes of 32; W = 8: 1 pass of 32; W = 2: 4 passes of 32. M None: one pass of B / W."""
    if batch_size < 1:
        raise LenbenchError(f"batch size must be >= 1, got {batch_size}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise LenbenchError(f"micro batch size must be >= 1, got {micro_batch_size}")
    if batch_size % world_size:
        raise LenbenchError(f"batch size {batch_size} is not divisible by {world_size} ranks")
    per_rank = batch_size // world_size
    micro = per_rank if micro_batch_size is None else min(micro_batch_size, per_rank)
    if per_rank % micro:
        raise LenbenchError(
            f"micro batch size {micro} does not divide the {per_rank} sequences per rank "
            f"(batch size {batch_size} over {world_size} rank(s))"
        )
    return BatchSplit(per_rank, micro, per_rank // micro)


def rank_split(batch_size: int, micro_batch_size: int | None, par: DataParallel | None) -> BatchSplit:
    """:func:`split_batch` over the ranks of ``par`` (one rank when None: no torchrun)."""
    return split_batch(batch_size, micro_batch_size, 1 if par is None else par.world_size)


class DataParallel:
    """The collectives the training loop needs, over the default process group."""

    def __init__(self, env: DistEnv) -> None:
        self.rank, self.world_size, self.local_rank = env.rank, env.world_size, env.local_rank
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank)

    def rank_seed(self, seed: int) -> int:
        """A seed of its own for this rank's data and dropout, derived from the cell's seed."""
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` around ``model`` (its parameters stay the model's own)."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.cuda else None)

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over ranks."""
        t = value.detach().float().reshape(1).clone()
        torch.distributed.all_reduce(t)
        return float(t) / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def own(self, ranks: list[Any] | None, fallback: Any) -> Any:
        """This rank's entry of a per-rank list written by the same number of ranks, else ``fallback``."""
        if ranks is not None and len(ranks) == self.world_size:
            return ranks[self.rank]
        return fallback if self.rank == 0 else None


@contextlib.contextmanager
def process_group(env: DistEnv) -> Iterator[DataParallel]:
    """Join the process group (NCCL on CUDA, gloo on CPU), yield its context, leave it after."""
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(hours=2))  # evaluation of long lengths runs between steps
    try:
        yield DataParallel(env)
    finally:
        dist.destroy_process_group()
