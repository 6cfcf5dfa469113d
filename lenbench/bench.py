"""Measurement primitives for the timing suite: time a callable, measure its peak memory, check room.

Timing: untimed warm-up calls, then ``repeats`` measurements, each of ``number`` calls, yielding
their mean; the result is the median and the interquartile range over the repeats, in ms. The clock
is ``torch.utils.benchmark``'s timer, which synchronizes the accelerator before reading
``time.perf_counter``, so queued CUDA kernels are counted; it drives ``timeit.Timer`` exactly as
``torch.utils.benchmark.Timer`` does, minus the two untimed calls ``Timer.timeit`` adds before each
measurement (they would triple the cost of second-long CPU cells; warm-up happens once, up front).

Peak memory of one call, above what was held just before it:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes
  allocated before the call (tensor memory from PyTorch's allocator, exact).
- CPU (Linux): the process's peak resident set (``VmHWM``) over the call minus its resident set
  before it. Freed heap pages are first returned to the OS (``malloc_trim``) and the peak is reset
  by writing ``5`` to ``/proc/self/clear_refs``, so the delta counts the pages the call touched:
  its tensors, plus a little allocator and interpreter noise. Elsewhere it is not measured (None).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.benchmark.utils.timer import timer as synchronized_clock

MiB = 1 << 20
GiB = 1 << 30
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range (ms) over repeats; each repeat is the mean of ``number`` calls."""

    median_ms: float
    iqr_ms: float
    times_ms: list[float]
    number: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], Any], calls: int, device: torch.device, min_seconds: float = 0.0) -> float:
    """Run ``fn`` untimed at least ``max(1, calls)`` times and for at least ``min_seconds`` (the
    first calls of a fresh thread pool or compiled kernel are slow); returns the last call's seconds."""
    done, total, last = 0, 0.0, 0.0
    while done < max(1, calls) or total < min_seconds:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        last = time.perf_counter() - start
        done, total = done + 1, total + last
    return last


def calls_per_repeat(seconds_per_call: float, min_block_s: float) -> int:
    """Calls per measurement so that one measurement lasts at least ``min_block_s``."""
    return max(1, math.ceil(min_block_s / max(seconds_per_call, 1e-9)))


def summarize(times_s: list[float], number: int) -> Timing:
    """Median and IQR (numpy's linear percentiles) of per-call seconds, in ms."""
    ms = [1000.0 * t for t in times_s]
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return Timing(float(q50), float(q75 - q25), ms, number)


def measure(fn: Callable[[], Any], repeats: int, number: int) -> Timing:
    """Time ``fn`` (already warmed up): ``repeats`` measurements of ``number`` calls each."""
    clock = timeit.Timer(stmt=fn, timer=synchronized_clock)
    return summarize([clock.timeit(number) / number for _ in range(repeats)], number)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> tuple[float | None, str]:
    """Peak memory (MiB) one call of ``fn`` adds over what was held before it, and the method used."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MiB, "cuda_max_allocated"
    _malloc_trim()
    base = _status_kib("VmRSS")
    if base is None or not _reset_peak_rss():
        fn()
        return None, "unavailable"
    fn()
    peak = _status_kib("VmHWM")
    if peak is None:
        return None, "unavailable"
    return max(0, peak - base) / 1024.0, "rss_peak_delta"


def _cgroup_room() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation could still get: free device memory (plus this process's cached,
    unused blocks) on CUDA; on CPU ``MemAvailable``, capped by the cgroup limit. None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        avail = None
    room = _cgroup_room()
    candidates = [v for v in (avail, room) if v is not None]
    return min(candidates) if candidates else None


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: CUDA OOM, a failed CPU allocation, or Python's MemoryError."""
    if isinstance(exc, (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def release_memory(device: torch.device) -> None:
    """Collect garbage and return cached blocks (after an OOM or between large cells)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        _malloc_trim()
