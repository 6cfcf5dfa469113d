"""Absolute positional encodings, added once to the token embeddings (docs/pe.md §2-4).

Their randomized variants (Ruoss et al. 2023) are at the end; the sampling policy is
:class:`~lenbench.pe.base.RandomizedPositions`'s.

The model multiplies token embeddings by sqrt(E) before the PE is added (docs/che.md §2.3), then
applies embedding dropout only when a PE embeds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.pe.base import PEContext, PositionalEncoding, RandomizedPositions
from lenbench.pe.registry import PES


@PES.register("nope")
class NoPE(PositionalEncoding):
    """No positional signal (docs/pe.md §2). In the bidirectional CHE encoder the model is a bag of
    tokens and cannot solve order-dependent tasks: a legitimate outcome, not a bug. Causal: order
    comes only from the mask."""

    name = "nope"
    description = "no positional encoding (order only from the causal mask; none in the encoder)"
    shared = True


def sinusoid_table(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``PE[p] = [sin(p w_0..w_{E/2-1}), cos(p w_0..w_{E/2-1})]``, ``w_i = base^(-2i/E)``.

    Halves concatenated, not interleaved (RPE ``sinusoid_position_encoding``; docs/pe.md §3);
    angles in fp32. Returns ``[N, dim]``.
    """
    if dim % 2:
        raise LenbenchError(f"sinusoidal encodings need an even width, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim // 2, dtype=torch.float32, device=pos.device) * 2.0 / dim)
    angles = pos.to(torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@PES.register("sinusoidal")
class Sinusoidal(PositionalEncoding):
    """Vaswani et al. 2017 sinusoids, ``x_p = E[tok_p] sqrt(d) + PE(p)`` with
    ``PE(p) = [sin(p w_i), cos(p w_i)]``, ``w_i = 10000^(-2i/d)`` (docs/pe.md §3; RPE layout).
    Bidirectional and causal forms are identical."""

    name = "sinusoidal"
    description = "absolute sin/cos (Vaswani et al. 2017), base 1e4, [sin; cos] layout"
    shared = True

    def __init__(self, ctx: PEContext, base: float = 10000.0, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.base = float(base)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + sinusoid_table(pos, x.shape[-1], self.base).to(x.dtype)


@PES.register("learned")
class Learned(PositionalEncoding):
    """Learned absolute table, ``x_p = E[tok_p] sqrt(d) + P[p]`` (docs/pe.md §4), initialised by
    :func:`learned_table`: TruncatedNormal(std 1, +-2 sigma) in the CHE encoder (Haiku ``hk.Embed``'s
    default, which RPE's LEARNT uses), ``N(0, 0.02)`` in the causal LM (GPT-2).

    Sized to the longest evaluation length (policy 1 of docs/pe.md §4): rows past the training
    length keep their initial values, the honest "learned absolute fails" baseline. A longer
    sequence is refused with a clear error instead of clamping.
    """

    name = "learned"
    description = "learned absolute table, init TruncNormal(1) encoder (RPE/Haiku), N(0,0.02) LM (GPT-2)"
    shared = True

    def __init__(self, ctx: PEContext, max_length: int | None = None, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.table = learned_table(int(max_length or ctx.max_length), ctx.dim, ctx.causal)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return add_learned(x, self.table, pos, self.name, "max_length")


def learned_table(rows: int, dim: int, causal: bool) -> nn.Embedding:
    """A ``rows x dim`` position table: causal (LM) ``N(0, 0.02)`` as GPT-2 (docs/pe.md §4, §18);
    bidirectional (CHE encoder) TruncatedNormal(std 1) cut at +-2 sigma, Haiku ``hk.Embed``'s default
    initializer, which RPE's LEARNT and NOISY_LEARNT use (they pass no ``w_init``; docs/che.md §2.3)."""
    table = nn.Embedding(rows, dim)
    if causal:
        nn.init.normal_(table.weight, std=0.02)
    else:
        nn.init.trunc_normal_(table.weight, std=1.0, a=-2.0, b=2.0)
    return table


def add_learned(x: torch.Tensor, table: nn.Embedding, pos: torch.Tensor, name: str, option: str) -> torch.Tensor:
    """``x + table[pos]``; a position past the table is refused (no clamping) naming the option to raise."""
    rows = table.num_embeddings
    if int(pos.max()) >= rows:
        raise LenbenchError(
            f"{name} PE table has {rows} rows but position {int(pos.max())} was requested; "
            f"raise {option} (e.g. --pe {name}:{option}=N)"
        )
    return x + table(pos).to(x.dtype)


__all__ = ["Learned", "NoPE", "Sinusoidal", "add_learned", "learned_table", "sinusoid_table"]


# --------------------------------------------------------------------------------------------------
# Randomized absolute PEs (Ruoss et al. 2023); the sampling policy is :class:`~lenbench.pe.base.RandomizedPositions`'s.


@PES.register("randomized-sinusoidal")
class RandomizedSinusoidal(RandomizedPositions, Sinusoidal):
    """Sinusoids at sorted random positions (RPE ``NOISY_SIN_COS``): ``x_t = E[tok_t] sqrt(d) + PE(p_t)``
    with ``p_0 < ... < p_{n-1}`` drawn from ``[0, L)`` once per forward; ``PE`` is
    :func:`~lenbench.pe.absolute.sinusoid_table`. Same form causal and bidirectional."""

    name = "randomized-sinusoidal"
    description = "sin/cos at sorted random positions from [0, L) (Ruoss et al. 2023), L=2048 CHE / 4x train LM"


@PES.register("randomized-learned")
class RandomizedLearned(RandomizedPositions):
    """A learned table of L rows read at sorted random positions (RPE ``NOISY_LEARNT``), so every row
    is trained. Init as ``learned`` (:func:`learned_table`: TruncatedNormal(1) encoder, as RPE's
    NOISY_LEARNT; ``N(0, 0.02)`` LM). A sequence longer than L is
    refused with a :class:`LenbenchError` (the table has no row for it), whatever ``overflow`` says."""

    name = "randomized-learned"
    description = "learned table of L rows read at sorted random positions (Ruoss et al. 2023); init as learned"
    shared = True

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.table = learned_table(self.max_position, ctx.dim, ctx.causal)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return add_learned(x, self.table, pos, self.name, "max_position")
