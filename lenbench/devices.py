"""Where a cell computes: CUDA when present (bf16 autocast by default), else the CPU in fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from lenbench.errors import LenbenchError

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    """A suite's ``train.precision`` must be one of :data:`PRECISIONS` (checked before any cell starts)."""
    if precision not in PRECISIONS:
        raise LenbenchError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def compute_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A context factory: bf16 autocast for ``bf16``, or ``auto`` on CUDA; fp32 (no autocast) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def device_and_autocast(precision: str) -> tuple[torch.device, Callable[[], Any]]:
    """:func:`compute_device` and its :func:`autocast_for` ``precision``."""
    device = compute_device()
    return device, autocast_for(precision, device)
