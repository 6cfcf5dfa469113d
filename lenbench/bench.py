"""Measurement primitives for the timing suite: interleaved rounds, paired ratios, peak memory, room.

Timing protocol (:func:`interleaved_rounds`; docs/timing.md says why each step is there):

1. A **warm-up round**, discarded: every contender (one PE's model, say) in a randomized order runs
   at least ``warmup_calls`` calls and at least ``min_warmup_s`` seconds. The typical call time it
   shows (the median of its calls after the first) sets the contender's **calls per repeat**,
   ``ceil(min_repeat_s / call time)``, so that one repeat lasts at least ``min_repeat_s``.
2. **Measured rounds**: each round runs one repeat of every contender, in a fresh random order per
   round (``random.Random(seed)``), never one contender's repeats back to back. A repeat's value is
   its mean seconds per call. ``repeats`` rounds are run, fewer only when they would take longer
   than ``budget_s`` (then ``budget_limited`` says so; never fewer than ``min_rounds``).
3. **Paired ratios** (:func:`ratio_stat`): a contender's time divided by the reference's time *in
   the same round*, so drift of the machine between rounds (load, clock) cancels; reported as
   the median over rounds with a bootstrap 95% interval of that median (:func:`bootstrap_median_ci`).

The clock is ``torch.utils.benchmark``'s timer, which synchronizes the accelerator before reading
``time.perf_counter``, so queued CUDA kernels are counted; a repeat is timed through
``timeit.Timer`` (garbage collection off while it runs) exactly as ``torch.utils.benchmark.Timer``
times its blocks. Tests pass a fake clock.

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
import random
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.benchmark.utils.timer import timer as synchronized_clock

MiB = 1 << 20
GiB = 1 << 30
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
MIN_ROUNDS = 3  # a budget never cuts the measured rounds below this
BOOTSTRAP_RESAMPLES = 10_000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_repeat(seconds_per_call: float, min_repeat_s: float) -> int:
    """Calls per repeat so that one repeat lasts at least ``min_repeat_s``."""
    return max(1, math.ceil(min_repeat_s / max(seconds_per_call, 1e-9)))


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (numpy's linear percentiles)."""
    q25, q75 = np.percentile(np.asarray(values, dtype=float), [25, 75])
    return float(q75 - q25)


# --------------------------------------------------------------------------- interleaved rounds


def _noop() -> None:
    return None


@dataclass
class Contender:
    """One thing timed in the rounds: its name, one call, and hooks run around each of its turns.

    ``reset`` runs after every repeat (e.g. drop gradients); ``enter``/``leave`` before and after
    each turn (e.g. move a model onto the device and park it again when the rest do not fit).
    """

    name: str
    call: Callable[[], Any]
    reset: Callable[[], None] = _noop
    enter: Callable[[], None] = _noop
    leave: Callable[[], None] = _noop


@dataclass
class Rounds:
    """What :func:`interleaved_rounds` measured: per contender, seconds per call in each measured
    round (round order), its calls per repeat and warm-up; the order of every round."""

    names: list[str]
    times_s: dict[str, list[float]]
    number: dict[str, int]
    warmup_calls: dict[str, int]
    warmup_s: dict[str, float]
    warmup_order: list[str]
    orders: list[list[str]]
    repeats: int  # rounds asked for
    budget_s: float | None
    round_s: float  # planned seconds of one measured round (sum of calls x call time)
    seed: int
    budget_limited: bool = False
    seconds: float = 0.0  # wall clock of the measured rounds (the given clock)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return len(self.orders)

    def median_ms(self, name: str) -> float:
        return 1000.0 * float(np.median(self.times_s[name]))

    def iqr_ms(self, name: str) -> float:
        return 1000.0 * iqr(self.times_s[name])

    def positions(self, name: str) -> list[int]:
        """The contender's place (0 = first) in each measured round."""
        return [order.index(name) for order in self.orders]


def planned_rounds(repeats: int, round_s: float, budget_s: float | None, min_rounds: int = MIN_ROUNDS) -> int:
    """``repeats``, or fewer (at least ``min(min_rounds, repeats)``) when ``repeats`` rounds of
    ``round_s`` seconds would exceed ``budget_s``."""
    if budget_s is None or repeats * round_s <= budget_s:
        return repeats
    return max(min(min_rounds, repeats), int(budget_s // max(round_s, 1e-12)))


def interleaved_rounds(
    contenders: Sequence[Contender],
    repeats: int,
    *,
    warmup_calls: int = 1,
    min_warmup_s: float = 0.0,
    min_repeat_s: float = 0.2,
    seed: int = 0,
    budget_s: float | None = None,
    min_rounds: int = MIN_ROUNDS,
    clock: Callable[[], float] = synchronized_clock,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Rounds:
    """Time ``contenders`` by the protocol of the module docstring; ``on_event`` hears each phase
    (``warmup``, ``warmed``, ``plan``, ``turn``, ``round``) as a small dict, e.g. to drive a progress bar."""
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique, got {names}")
    emit = on_event or (lambda event: None)
    rng = random.Random(seed)
    by_name = {c.name: c for c in contenders}

    warmup_order = rng.sample(names, len(names))
    number: dict[str, int] = {}
    warm_calls: dict[str, int] = {}
    warm_s: dict[str, float] = {}
    call_s: dict[str, float] = {}
    for name in warmup_order:
        c = by_name[name]
        emit({"phase": "warmup", "pe": name})
        c.enter()
        try:
            durations: list[float] = []
            while len(durations) < max(1, warmup_calls) or sum(durations) < min_warmup_s:
                start = clock()
                c.call()
                durations.append(clock() - start)
            c.reset()
        finally:
            c.leave()
        typical = float(np.median(durations[1:] if len(durations) > 1 else durations))
        call_s[name], warm_calls[name], warm_s[name] = typical, len(durations), sum(durations)
        number[name] = calls_per_repeat(typical, min_repeat_s)
        emit({"phase": "warmed", "pe": name, "seconds": typical})

    round_s = sum(number[n] * call_s[n] for n in names)
    rounds = planned_rounds(repeats, round_s, budget_s, min_rounds)
    emit({"phase": "plan", "rounds": rounds, "repeats": repeats, "round_s": round_s,
          "number": dict(number), "call_s": dict(call_s)})
    times: dict[str, list[float]] = {n: [] for n in names}
    orders: list[list[str]] = []
    began = clock()
    for r in range(rounds):
        order = rng.sample(names, len(names))
        for name in order:
            c = by_name[name]
            emit({"phase": "turn", "pe": name, "round": r + 1, "rounds": rounds})
            c.enter()
            try:
                timer = timeit.Timer(stmt=c.call, timer=clock)
                times[name].append(timer.timeit(number[name]) / number[name])
                c.reset()
            finally:
                c.leave()
        orders.append(order)
        emit({"phase": "round", "round": r + 1, "rounds": rounds, "seconds": clock() - began})
    return Rounds(names, times, number, warm_calls, warm_s, warmup_order, orders, repeats, budget_s, round_s, seed,
                  budget_limited=rounds < repeats, seconds=clock() - began)


# --------------------------------------------------------------------------- paired ratios


def paired_ratios(times: Sequence[float], reference: Sequence[float]) -> list[float]:
    """``times[r] / reference[r]`` for every round ``r`` measured for both (same length required)."""
    if len(times) != len(reference):
        raise ValueError(f"paired ratios need the same rounds, got {len(times)} and {len(reference)}")
    return [float(t) / float(ref) for t, ref in zip(times, reference, strict=True)]


def bootstrap_median_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (Efron & Tibshirani 1993, ch. 13): resample the
    values with replacement ``resamples`` times (``numpy.random.default_rng(seed)``: the same
    values always give the same interval), take each resample's median, and return the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those medians."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values to bootstrap")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class RatioStat:
    """Median of paired per-round ratios and its bootstrap 95% interval."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def contains_one(self) -> bool:
        return self.low <= 1.0 <= self.high

    @property
    def reach(self) -> float:
        """How far the interval reaches from 1 (an identical-work control's *noise floor*)."""
        return max(abs(self.low - 1.0), abs(self.high - 1.0))


def ratio_stat(times: Sequence[float], reference: Sequence[float]) -> RatioStat:
    """Paired ratios of two contenders of the same rounds -> median and bootstrap 95% interval."""
    ratios = paired_ratios(times, reference)
    low, high = bootstrap_median_ci(ratios)
    return RatioStat(float(np.median(ratios)), low, high, len(ratios))


# --------------------------------------------------------------------------- peak memory and room


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
