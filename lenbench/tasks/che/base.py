"""The CHE task interface (reference: docs/che.md §1, §2.1).

A task produces batches in which every sample has the same requested length N. Inputs are token
ids in ``[0, input_size)``; targets are class ids in ``[0, output_size)`` of length
``output_length(N)``. The model appends ``output_length(N)`` empty tokens (id ``input_size``) and
reads its predictions from the last positions (pointwise packing, docs/che.md §2.1).

``target(inputs)`` is the task's definition as a pure function of one input sequence;
``sample`` draws inputs from the task's distribution and must agree with ``target``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import torch

from lenbench.registry import Registry


class CheTask(abc.ABC):
    """One CHE task: a sampler, its pure target function, output length and accuracy mask."""

    name: ClassVar[str]
    level: ClassVar[str]  # "regular", "dcf" (deterministic context-free) or "cs" (context-sensitive)
    description: ClassVar[str]
    input_size: ClassVar[int]  # V_in: number of input token ids
    output_size: ClassVar[int]  # C: number of output classes

    @property
    def chance(self) -> float:
        """Accuracy of a uniform random guess, 1/C (docs/che.md summary table)."""
        return 1.0 / self.output_size

    def output_length(self, length: int) -> int:
        """T_out(N): how many outputs the model emits for requested length N (default 1)."""
        return 1

    @abc.abstractmethod
    def target(self, inputs: list[int]) -> list[int]:
        """The task's definition: the target sequence (length T_out) for one input sequence."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch`` samples of requested length N: (inputs [B, N_in] long, targets [B, T_out] long)."""

    def accuracy_mask(self, targets: torch.Tensor) -> torch.Tensor:
        """Bool mask [B, T_out] of target positions that count towards accuracy (default all)."""
        return torch.ones_like(targets, dtype=torch.bool)


def mask_through_terminator(targets: torch.Tensor, terminator: int = 2) -> torch.Tensor:
    """Bool mask [B, T]: positions 0..(first ``terminator`` in the row), inclusive (docs/che.md §1.5, §1.12).

    Valid targets always hold a terminator; a row without one is masked in full.
    """
    hit = targets == terminator
    first = torch.where(hit.any(dim=1), hit.int().argmax(dim=1), targets.shape[1] - 1)
    return torch.arange(targets.shape[1], device=targets.device)[None, :] <= first[:, None]


TASKS: Registry[type[CheTask]] = Registry("task", entry_point_group="lenbench.tasks")
