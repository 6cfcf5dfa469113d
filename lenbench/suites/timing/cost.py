"""What a timing run will cost, before it runs: arithmetic count x this machine's matrix rate.

A rough up-front figure for ``lenbench timing`` (and ``--dry-run``): each PE's call is estimated
as its arithmetic count divided by the floating-point rate this machine reaches on a dense matrix
product (:func:`probe_rate`, a fraction of a second), and a group as the protocol of
:func:`lenbench.bench.interleaved_rounds` spends it:

    warm-up  max(warmup x call, min_warmup)  +  one peak-memory call
  + rounds x max(call, min_repeat)            (rounds: repeats, or fewer under max_seconds)

plus, for CPU slices, the embedding-and-head measurement once per (size, length, mode). Call
arithmetic, per block and forward (x3 for forward + backward), at width ``d``, ``h`` heads,
``N`` tokens: ``24 N d^2`` for the projections and FFN, ``4 N^2 d`` for ``QK^T`` and ``PV``
(half of it on fused causal kernels, the ``fastest`` policy), and for DAPE PEs ``6 h D N^2``
for the MLP on every (query, key) pair (``2h -> D -> h``); the full model adds ``2 N V d`` for
the head. Real blocks run below the probed rate (layer norms, softmax, the DAPE MLP, memory
traffic): a 350M block's training step (README reference results: 324 ms at 512 tokens, 1743 ms at
2048, DAPE-Kerple, 2026-12-02) reached 115-128 GFLOP/s by this count on the 2-core EPYC whose
probe reads ~270 GFLOP/s when idle, so calls are estimated at ``EFFICIENCY`` = 0.45 of the probed
rate. It stays a rough figure (load moves the probe by 3x); the run prints the time it took beside it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lenbench import bench
from lenbench.suites.timing.config import TimingCellConfig
from lenbench.suites.timing.measure import DTYPES, dape_width, is_full

MIN_CALL_S = 1e-3  # dispatch overhead floor of one call
EFFICIENCY = 0.45  # achieved / probed rate of a real block (module docstring)


def probe_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """FLOP/s of a ``size``-cubed matrix product on ``device`` (best of a few, after one warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(4):
        bench.synchronize(device)
        start = time.perf_counter()
        a @ b
        bench.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / max(best, 1e-9)


def call_flops(cfg: TimingCellConfig) -> float:
    """Arithmetic count of one timed call of one PE (``cfg`` with its ``pe``)."""
    n, d, h, v = cfg.eval_len, cfg.dim, cfg.heads, cfg.vocab_size
    k = cfg.layers if is_full(cfg) else cfg.layers_timed
    causal_share = 0.5 if cfg.backend_policy == "fastest" else 1.0
    per_block = 24.0 * n * d * d + causal_share * 4.0 * n * n * d
    width = dape_width(cfg.pe) or 0
    per_block += causal_share * 6.0 * h * width * n * n
    total = k * per_block + (2.0 * n * v * d if is_full(cfg) else 0.0)
    return total * (3.0 if cfg.mode == "train" else 1.0)


def embed_head_flops(cfg: TimingCellConfig) -> float:
    """Arithmetic count of the embedding-and-head call (the vocabulary projection dominates)."""
    return 2.0 * cfg.eval_len * cfg.vocab_size * cfg.dim * (3.0 if cfg.mode == "train" else 1.0)


def _protocol_seconds(call_s: list[float], cfg: TimingCellConfig, memory: bool = True) -> float:
    """Seconds the interleaved protocol spends on contenders whose calls take ``call_s`` (``memory``:
    plus the one call each that measures its peak memory)."""
    warm = sum(max(cfg.warmup * c, cfg.min_warmup_ms / 1000) + (c if memory else 0.0) for c in call_s)
    round_s = sum(max(c, cfg.min_repeat_ms / 1000) for c in call_s)
    return warm + bench.planned_rounds(cfg.repeats, round_s, cfg.max_seconds) * round_s


def group_seconds(cfg: TimingCellConfig, rate: float, embed_head: bool = True) -> float:
    """Estimated seconds to time one group at ``rate`` FLOP/s (``embed_head``: include the
    embedding-and-head measurement of a slice)."""
    calls = [max(MIN_CALL_S, call_flops(cfg.for_pe(pe)) / rate) for pe in cfg.pes]
    seconds = _protocol_seconds(calls, cfg)
    if embed_head and not is_full(cfg):
        seconds += _protocol_seconds([max(MIN_CALL_S, embed_head_flops(cfg) / rate)], cfg, memory=False)
    return seconds


def run_seconds(configs: list[TimingCellConfig], rate: float) -> list[float]:
    """Estimated seconds of each group of a run, in order; the embedding and head is counted once
    per (size, length, mode), as the run shares it."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for cfg in configs:
        key = (cfg.dim, cfg.vocab_size, cfg.eval_len, cfg.mode, cfg.precision)
        out.append(group_seconds(cfg, rate, embed_head=key not in seen))
        seen.add(key)
    return out


def machine_rate(configs: list[TimingCellConfig]) -> float:
    """The rate a block is expected to reach on the device and precision the run's groups use:
    ``EFFICIENCY`` x the probed matrix rate (probed once)."""
    cfg = configs[0]
    return EFFICIENCY * probe_rate(torch.device(cfg.device), DTYPES[cfg.precision])


def fmt_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min`` or ``2.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
