"""Where a cell computes: CUDA when present (bf16 autocast by default), else the CPU in fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def device_and_autocast(precision: str) -> tuple[torch.device, Callable[[], Any]]:
    """CUDA when available; autocast bf16 on CUDA for ``auto``/``bf16``, fp32 on CPU unless ``bf16``."""
    if precision not in PRECISIONS:
        from lenbench.errors import LenbenchError

        raise LenbenchError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    def autocast() -> Any:
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    return device, autocast
