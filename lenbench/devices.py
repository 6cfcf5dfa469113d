"""Where a cell computes: CUDA when present, else the CPU; and in which precision.

``train.precision``: ``fp32`` (no autocast), ``bf16`` (bf16 autocast; position terms stay fp32) or
``auto`` (bf16 on CUDA, fp32 on the CPU). On a device whose fast paths must prove themselves
(:mod:`lenbench.model.selfcheck`), bf16 runs only once its parity check passed there; otherwise the
cell computes in fp32 and records why. :func:`effective_precision` is what actually runs.
"""

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


def requested_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision that runs: :func:`requested_precision`, except that bf16 falls back to fp32 where
    its self-check failed on ``device`` (:func:`lenbench.model.selfcheck.allowed`)."""
    from lenbench.model import selfcheck

    wanted = requested_precision(precision, device)
    if wanted == "bf16" and not selfcheck.allowed("bf16", device):
        return "fp32"
    return wanted


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A context factory: bf16 autocast when :func:`effective_precision` is bf16, else nothing (fp32)."""
    if effective_precision(precision, device) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def device_and_autocast(precision: str) -> tuple[torch.device, Callable[[], Any]]:
    """:func:`compute_device` and its :func:`autocast_for` ``precision``."""
    device = compute_device()
    return device, autocast_for(precision, device)
