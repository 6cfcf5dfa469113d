"""Multi-head self-attention that picks, per PE, the fastest backend exact for it (docs/architecture.md).

Backends:

- ``sdpa``: no bias, default scores -> ``scaled_dot_product_attention`` (flash on GPU).
- ``sdpa_bias``: a static bias -> SDPA with the materialized fp32 ``[H, N, N]`` bias as float
  mask (the plain form; exact gradients).
- ``blocked_bias``: a static bias -> SDPA per block of :data:`BIAS_BLOCK` queries, each with the
  float mask of its own ``[H, block, keys]`` slice only; causal blocks skip future keys (half the
  work and memory at long N). For a translation-invariant bias (ALiBi, Kerple, T5 at ``arange``
  positions) the bias is evaluated once on the ``2N - 1`` distances, with -inf on future ones when
  causal, and each block's mask is a strided window of that row (``mask[h, a, j] = row[h, N - 1 -
  i_a + j]``), so no per-element kernel math runs per block. Other biases come from the PE's
  ``causal_bias`` per block (FIRE's C kernel writes the -inf itself). Exact gradients; CPU training
  and evaluation.
- ``small``: no bias or a static bias, on CPU at head dim 8 (and 16 up to 64 tokens), below
  :data:`SMALL_MAX_LENGTH` tokens -> the C kernel of :mod:`lenbench.model.small_attention`
  (exact, gradients to q, k, v and the bias; 0.4-0.5x the time of SDPA at CHE's shapes,
  ``python benchmarks/che_kernels.py``). When the PE leaves q and k as they are, the kernel reads
  them from the packed ``qkv`` projection and writes its gradient there in one buffer.
- ``flex``: a static bias with a ``score_mod`` -> compiled FlexAttention, used on CUDA (unless the
  PE's own parameters train: score_mod sees them detached) and for CPU evaluation under
  ``no_grad`` from :data:`FLEX_CPU_MIN_LENGTH` tokens on (torch 2.13 has no CPU backward,
  docs/pe.md §16.2); below that, compiling per length costs more than it saves. A PE whose bias
  comes from a compiled CPU kernel (FIRE, :mod:`lenbench.pe.fire_kernel`) keeps ``blocked_bias``.
- ``explicit``: a ``scores`` hook (DAPE, CoPE, Transformer-XL) -> logits computed per block of
  queries so memory stays ``O(B * block * N * width)``, never ``O(H * N^2)`` at once: the block is
  sized so the widest per-block tensor (DAPE's ``[B, block, N, hidden]`` MLP/conv activations, or
  ``[S; B]``) fits :data:`BLOCK_BUDGET`. Causal blocks skip future keys (keys past the block's last
  query), unless the PE sets ``reads_future_keys`` (a scores hook whose visible logits depend on
  future keys, e.g. DAPE V2 without zeroing): then every key is kept, so blocking stays exact.
- ``dape_fused``: DAPE v1 (a PE with ``fused_attention``) ->
  :mod:`lenbench.pe.dape_fused`: logits, MLP across heads and online softmax per tile, backward
  recomputing tiles, O(B H N) memory; CPU C kernel (fp32), Triton on CUDA. ``explicit`` stays the
  reference and the off switch (``backend="explicit"`` or ``LENBENCH_DAPE_KERNEL=0``).
- ``paper``: every PE through the one unfused path of DAPE's GPT-NeoX code (docs/dape.md §1.3), so a
  timing compares PEs on the same kernels (DAPE Table 1): the full ``S = baddbmm(Q, K^T, alpha =
  1/sqrt(d))`` over all N keys (no query blocks, no skipped future keys), the PE on it (rotation
  before, ``S + B``, or the ``scores`` hook on the whole ``S``), the causal mask as
  ``finfo(dtype).min``, softmax, ``x V``. Memory ``O(B * H * N^2)`` (and DAPE's
  ``[B, N, N, hidden]``). Chosen only when asked for.

All backends agree to float tolerance (tests/test_attention.py). Each layer remembers every backend
it ran (``backends_run``; :func:`backends_used` over a model), so a cell records what actually ran.
On CUDA the fast paths prove themselves first (:mod:`lenbench.model.selfcheck`): ``flex`` and
``dape_fused`` are chosen only once their parity check against ``explicit`` passed on that device.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenbench.model import selfcheck, small_attention
from lenbench.pe import dape_fused
from lenbench.pe.base import PositionalEncoding

BACKENDS = ("auto", "sdpa", "sdpa_bias", "blocked_bias", "small", "flex", "explicit", "dape_fused", "paper")

# Elements allowed in one block's widest intermediate (fp32: 4 bytes each), ~512 MiB.
BLOCK_BUDGET = 1 << 27


# Backends that add a position term (bias or scores hook) to the logits: under autocast they run in
# fp32 (q, k, v upcast, autocast off), so the bias, DAPE's MLP and the logits are never rounded to
# bf16/fp16 (issue 16; docs/dape.md §1.4). FlexAttention keeps its inputs: its score_mod runs on the
# kernel's fp32 scores.
FP32_BACKENDS = ("sdpa_bias", "blocked_bias", "small", "explicit", "dape_fused")

# Queries per block of the ``blocked_bias`` backend: 64 was fastest of 32..1024 for Kerple at
# N=4096 on a 2-core CPU (`python benchmarks/attention.py --block B`, benchmarks/README.md).
BIAS_BLOCK = 64

# CPU evaluation of a static bias uses compiled FlexAttention from this length on: compiling costs
# seconds per new length; at 2048 and 4096 Flex beat query blocks for every static bias
# (benchmarks/README.md).
FLEX_CPU_MIN_LENGTH = 1024

# The small-head CPU kernel serves sequences shorter than this (from here FlexAttention takes CPU
# evaluation; at head dim 8 it was 0.4-0.8x SDPA's time from 41 to 1024 tokens).
SMALL_MAX_LENGTH = 1024


def small_fits(head_dim: int, n: int) -> bool:
    """Shapes where the small-head kernel beat SDPA, forward and backward, on a 2-core CPU
    (benchmarks/README.md): head dim 8 below :data:`SMALL_MAX_LENGTH`, head dim 16 up to 64 tokens."""
    return n < SMALL_MAX_LENGTH and (head_dim == 8 or (head_dim == 16 and n <= 64))


@lru_cache(maxsize=1)
def _compiled_flex() -> Any:
    """One compiled FlexAttention; every (length, score_mod) pair compiles once.

    Dynamo's default recompile limit (8) would silently fall back to the slow eager kernel after
    eight evaluation lengths, so the limit is raised for this function's cache.
    """
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import flex_attention

    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, max(256, getattr(dynamo_config, key)))
    for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, max(4096, getattr(dynamo_config, key)))
    return torch.compile(flex_attention, dynamic=False)


def flex_available(device: torch.device) -> bool:
    """FlexAttention needs torch >= 2.5; on CPU the compiled kernel also needs a C++ compiler."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


class Attention(nn.Module):
    """``softmax(q k^T / sqrt(d) + PE terms) v`` with q, k, v, out projections (no bias)."""

    def __init__(self, dim: int, heads: int, pe: PositionalEncoding, causal: bool, backend: str = "auto") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.causal = causal
        self.pe = pe
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.last_backend = ""
        self.backends_run: set[str] = set()  # every backend a forward used (reset_backends clears it)

    def choose_backend(self, device: torch.device, n: int = 0) -> str:
        """The backend a forward over ``n`` tokens uses (see module docstring).

        CUDA: compiled FlexAttention where the PE has an exact ``score_mod`` and its parameters do
        not train here, else SDPA with the materialized bias. CPU: the small-head kernel where
        :func:`small_fits`, else query blocks (``blocked_bias``), except that evaluation uses
        compiled FlexAttention from :data:`FLEX_CPU_MIN_LENGTH` tokens on, unless the PE builds its
        bias with a compiled kernel (FIRE at N=4096: blocks 1.7-2.1x no-bias SDPA, Flex 2.2-2.8x;
        benchmarks/attention.py).
        """
        pe = type(self.pe)
        if pe.has_hook("scores"):
            return "dape_fused" if self.fused_dape(device) else "explicit"
        if self.backend == "small":
            return "small"
        if self.backend == "auto" and device.type == "cpu" and self.small_ok(n):
            return "small"
        if not pe.has_hook("bias"):
            return "sdpa"
        if self.backend != "auto":
            return self.backend
        exact_positions = not pe.has_hook("positions")
        # score_mod captures parameters detached: a PE whose parameters train here needs the materialized bias.
        trains_pe = torch.is_grad_enabled() and any(p.requires_grad for p in self.pe.parameters())
        if device.type == "cuda":
            if (exact_positions and not trains_pe and flex_available(device) and self.pe.score_mod() is not None
                    and selfcheck.allowed("flex", device)):
                return "flex"
            return "sdpa_bias"
        if torch.compiler.is_compiling():
            return "sdpa_bias"  # one graph for every length: no Python loop over query blocks to specialize
        evaluating = not torch.is_grad_enabled()
        fused_wins = evaluating and n >= FLEX_CPU_MIN_LENGTH and not self.pe.compiled_bias()
        if (fused_wins and exact_positions and flex_available(device) and self.pe.score_mod() is not None
                and selfcheck.allowed("flex", device)):
            return "flex"
        return "blocked_bias"

    def fused_dape(self, device: torch.device) -> bool:
        """DAPE v1 (a PE with ``fused_attention``) takes the fused kernel unless the backend is forced to
        ``explicit`` or its kernel is off or missing on ``device``: it beat ``explicit`` from CHE's
        shapes (batch 128, N=40) to N=4096 (benchmarks/README.md)."""
        wanted = self.backend in ("auto", "dape_fused")
        return (wanted and hasattr(self.pe, "fused_attention") and dape_fused.usable(device)
                and selfcheck.allowed("dape_fused", device))

    def small_ok(self, n: int) -> bool:
        """The small-head kernel serves this forward: shape fits, not compiling, kernel compiled."""
        return (
            small_fits(self.head_dim, n) and not torch.compiler.is_compiling() and small_attention.available()
        )

    def forward(self, x: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """``[B, N, E] -> [B, N, E]``, or ``[B, last, E]``: only the last ``last`` queries (encoder only).

        With ``last`` every token is still a key and value; a static bias then goes through
        ``sdpa_bias`` (or ``small``) on its ``[H, last, N]`` slice (small: the final layer's few read rows).
        """
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim)
        q0, k0, v = qkv.permute(2, 0, 3, 1, 4)
        pos = self.pe.positions(n, x.device)
        q, k = self.pe.rotate(q0, k0, pos, pos)
        untouched = q is q0 and k is k0  # the PE left q and k as projected (no rotation)
        backend = self.backend if self.backend in ("explicit", "paper") else self.choose_backend(x.device, n)
        if last is not None:
            if self.causal:
                raise ValueError("reading only the last positions is for the bidirectional encoder")
            q = q[:, :, n - last :]
            if backend in ("blocked_bias", "flex"):
                backend = "sdpa_bias"
        nq = q.shape[-2]
        pe_terms = type(self.pe).has_hook("bias") or type(self.pe).has_hook("scores")
        if pe_terms and backend in FP32_BACKENDS and q.dtype in (torch.float16, torch.bfloat16):
            # Position terms in fp32 under autocast (issue 16): bf16's spacing at a logit of ~8 is
            # 0.03, far above Kerple's 0.002 per position at distance 1000.
            with torch.autocast(x.device.type, enabled=False):
                y = self.attend(backend, q.float(), k.float(), v.float(), qkv.float(), pos, nq, untouched)
            y = y.to(v.dtype)
        else:
            y = self.attend(backend, q, k, v, qkv, pos, nq, untouched)
        return self.out(y.transpose(1, 2).reshape(b, nq, self.dim))

    def attend(
        self,
        backend: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        qkv: torch.Tensor,
        pos: torch.Tensor,
        nq: int,
        untouched: bool,
    ) -> torch.Tensor:
        """``[B, H, nq, d]``: attention of the (last ``nq``) queries by ``backend``."""
        if backend == "dape_fused" and not self.pe.fused_ok(q):
            backend = "explicit"  # e.g. fp16 on CPU, or inside a torch.compile trace
        if backend == "small" and not small_attention.supports(q, k):
            backend = "sdpa_bias" if type(self.pe).has_hook("bias") else "sdpa"
        self.last_backend = backend
        self.backends_run.add(backend)
        if backend == "small":
            bias = self.small_bias(pos, nq)
            scale = 1.0 / math.sqrt(self.head_dim)
            if untouched:  # read q, k, v straight from the packed projection; one gradient buffer
                y = small_attention.small_attention_packed(qkv, bias, scale, nq)
            else:
                y = small_attention.small_attention(q, k, v, bias, scale)
        elif backend == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        elif backend == "sdpa_bias":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.materialized_mask(pos, q.dtype, nq))
        elif backend == "blocked_bias":
            y = self.blocked_bias(q, k, v, pos)
        elif backend == "flex":
            y = self.flex(q, k, v)
        elif backend == "dape_fused":
            y = self.pe.fused_attention(q, k, v, pos, self.causal)
        elif backend == "paper":
            y = self.paper(q, k, v, pos)
        else:
            y = self.explicit(q, k, v, pos)
        return y

    def small_bias(self, pos: torch.Tensor, queries: int) -> torch.Tensor | None:
        """``[H, queries, N]`` fp32 bias (with -inf on future keys when causal) for the small kernel,
        or None when there is neither a bias nor a causal mask."""
        n = pos.shape[0]
        if type(self.pe).has_hook("bias"):
            return self.bias_block(pos, self.toeplitz_row(pos), n - queries, n, n)
        if not self.causal:
            return None
        future = torch.ones(queries, n, dtype=torch.bool, device=pos.device).triu(1 + n - queries)
        return torch.zeros(queries, n, device=pos.device).masked_fill(future, float("-inf"))[None]

    def materialized_mask(self, pos: torch.Tensor, dtype: torch.dtype, queries: int | None = None) -> torch.Tensor:
        """``[1, H, Nq, N]`` float mask for the last ``queries`` (default all N) positions as queries.

        The PE bias plus -inf on future keys when causal.
        """
        n = pos.shape[0]
        first = n - (n if queries is None else queries)
        return self.bias_block(pos, None, first, n, n).to(dtype)[None]

    def distance_row(self, pos: torch.Tensor) -> torch.Tensor:
        """``[H, 2N - 1]``: the bias at distance ``i - j = N - 1 - t`` in column ``t`` (past side first).

        Valid for a translation-invariant bias at ``arange`` positions; future distances are -inf
        when causal (that is the causal mask).
        """
        n = pos.shape[0]
        keys = torch.arange(2 * n - 1, device=pos.device, dtype=pos.dtype)  # i - j = n-1 .. -(n-1)
        row = self.pe.bias(pos[n - 1 :], keys)[:, 0]  # one call: in-place parameter clamps run once
        if self.causal:
            row = row.masked_fill(keys >= n, float("-inf"))
        return row

    def toeplitz_row(self, pos: torch.Tensor) -> torch.Tensor | None:
        """The distance row (:meth:`distance_row`) when the bias is translation invariant at these positions."""
        toeplitz = type(self.pe).translation_invariant and not type(self.pe).has_hook("positions")
        return self.distance_row(pos) if toeplitz else None

    def bias_block(
        self, pos: torch.Tensor, row: torch.Tensor | None, start: int, stop: int, keys: int
    ) -> torch.Tensor:
        """``[H, stop - start, keys]``: the bias of queries ``start..stop-1`` over keys ``0..keys-1``,
        -inf on future keys when causal; a strided window of the distance ``row`` when given."""
        n = pos.shape[0]
        if row is not None:
            # windows[h, u, j] = row[h, n - stop + u + j]; query i = stop - 1 - u.
            return row[:, n - stop : 2 * n - 1 - start - (n - keys)].unfold(-1, keys, 1).flip(1)
        if self.causal:
            return self.pe.causal_bias(pos[start:stop], pos[:keys], start)
        return self.pe.bias(pos[start:stop], pos[:keys])

    def blocked_bias(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """SDPA over blocks of :data:`BIAS_BLOCK` queries with each block's slice of the bias."""
        n = q.shape[-2]
        row = self.toeplitz_row(pos)
        outs = []
        for start in range(0, n, BIAS_BLOCK):
            stop = min(n, start + BIAS_BLOCK)
            keys = stop if self.causal else n
            mask = self.bias_block(pos, row, start, stop, keys)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys], attn_mask=mask.to(q.dtype)[None]
                )
            )
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import create_block_mask

        n = q.shape[-2]
        block_mask = None
        if self.causal:
            block_mask = create_block_mask(
                lambda b, h, qi, ki: qi >= ki, None, None, n, n, device=q.device.type
            )
        fn = _compiled_flex() if q.device.type == "cuda" or not torch.is_grad_enabled() else None
        if fn is None:
            from torch.nn.attention.flex_attention import flex_attention as fn
        return fn(q, k, v, score_mod=self.pe.score_mod(), block_mask=block_mask)

    def block_size(self, batch: int, n_keys: int) -> int:
        """Queries per block so that the widest per-block tensor fits :data:`BLOCK_BUDGET`.

        Width per ``(b, i, j)``: the PE's ``hidden`` channels plus ``[S; B]`` (2h), at least h; this
        bounds DAPE's ``[B, block, N, hidden]`` activations, CoPE's ``[B, H, block, N]`` int64
        indices and Transformer-XL's ``[B, H, block, <= 2N]`` distance logits.
        """
        width = max(self.heads, int(getattr(self.pe, "hidden", 0)) + 2 * self.heads)
        return max(1, min(n_keys, BLOCK_BUDGET // max(1, batch * n_keys * width)))

    def explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Reference attention over query blocks; the PE's ``scores`` (or ``bias``) hook applies."""
        b, _, nq, _ = q.shape
        n = k.shape[-2]
        first = n - nq  # q holds the last nq queries (all of them unless the encoder reads only those)
        scale = 1.0 / math.sqrt(self.head_dim)
        has_scores = type(self.pe).has_hook("scores")
        has_bias = type(self.pe).has_hook("bias")
        step = self.block_size(b, n)
        skip_future = self.causal and not getattr(self.pe, "reads_future_keys", False)
        outs = []
        for start in range(first, n, step):
            stop = min(n, start + step)
            kv_end = stop if skip_future else n
            qb = q[:, :, start - first : stop - first]
            s = torch.matmul(qb, k[:, :, :kv_end].transpose(-1, -2)) * scale
            q_pos, k_pos = pos[start:stop], pos[:kv_end]
            if has_scores:
                s = self.pe.scores(s, qb, k[:, :, :kv_end], q_pos, k_pos)
            elif has_bias:
                s = s + self.pe.bias(q_pos, k_pos).to(s.dtype)
            if self.causal:
                rows = torch.arange(start, stop, device=q.device)[:, None]
                cols = torch.arange(kv_end, device=q.device)[None, :]
                s = s.masked_fill(cols > rows, float("-inf"))
            outs.append(torch.matmul(torch.softmax(s, dim=-1), v[:, :, :kv_end]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def paper(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """DAPE's NeoX attention (docs/dape.md §1.3), unblocked: ``S = baddbmm(0, Q, K^T, beta=0,
        alpha=1/sqrt(d))``; ``S + B`` or ``scores(S)`` on all keys; future keys set to
        ``finfo(dtype).min``; ``softmax(S) V``."""
        b, h, nq, d = q.shape
        n = k.shape[-2]
        first = n - nq
        s = torch.baddbmm(
            torch.empty(b * h, nq, n, dtype=q.dtype, device=q.device),
            q.reshape(b * h, nq, d),
            k.reshape(b * h, n, d).transpose(1, 2),
            beta=0.0,
            alpha=1.0 / math.sqrt(d),
        ).view(b, h, nq, n)
        q_pos = pos[first:]
        if type(self.pe).has_hook("scores"):
            s = self.pe.scores(s, q, k, q_pos, pos)
        elif type(self.pe).has_hook("bias"):
            s = s + self.pe.bias(q_pos, pos).to(s.dtype)
        if self.causal:
            future = torch.ones(nq, n, dtype=torch.bool, device=q.device).triu(1 + first)
            s = s.masked_fill(future, torch.finfo(s.dtype).min)
        return torch.matmul(torch.softmax(s, dim=-1), v)


selfcheck.use_attention(Attention)


def backends_used(model: nn.Module) -> list[str]:
    """Every attention backend the model's layers ran since the last :func:`reset_backends`, sorted."""
    return sorted({b for m in model.modules() if isinstance(m, Attention) for b in m.backends_run})


def reset_backends(model: nn.Module) -> None:
    """Forget which backends the model's attention layers ran."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.backends_run.clear()
