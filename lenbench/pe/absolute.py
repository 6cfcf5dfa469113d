"""Absolute positional encodings, added once to the token embeddings (pe_zoo.md §2-4).

The model multiplies token embeddings by sqrt(E) before the PE is added (che.md §2.3), then
applies embedding dropout only when a PE embeds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.pe.base import PEContext, PositionalEncoding
from lenbench.pe.registry import PES


@PES.register("nope")
class NoPE(PositionalEncoding):
    """No positional signal (pe_zoo.md §2). In the bidirectional CHE encoder the model is a bag of
    tokens and cannot solve order-dependent tasks: a legitimate outcome, not a bug. Causal: order
    comes only from the mask."""

    name = "nope"
    description = "no positional encoding (order only from the causal mask)"
    shared = True


def sinusoid_table(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``PE[p] = [sin(p w_0..w_{E/2-1}), cos(p w_0..w_{E/2-1})]``, ``w_i = base^(-2i/E)``.

    Halves concatenated, not interleaved (RPE ``sinusoid_position_encoding``; pe_zoo.md §3);
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
    ``PE(p) = [sin(p w_i), cos(p w_i)]``, ``w_i = 10000^(-2i/d)`` (pe_zoo.md §3; RPE layout).
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
    """Learned absolute table, ``x_p = E[tok_p] sqrt(d) + P[p]``, ``P ~ N(0, 0.02)`` (pe_zoo.md §4).

    Sized to the longest evaluation length (policy 1 of pe_zoo.md §4): rows past the training
    length keep their initial values, the honest "learned absolute fails" baseline. A longer
    sequence is refused with a clear error instead of clamping.
    """

    name = "learned"
    description = "learned absolute table N(0,0.02), sized to the longest evaluation length"
    shared = True

    def __init__(self, ctx: PEContext, max_length: int | None = None, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.table = nn.Embedding(int(max_length or ctx.max_length), ctx.dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows = self.table.num_embeddings
        if int(pos.max()) >= rows:
            raise LenbenchError(
                f"learned PE table has {rows} rows but position {int(pos.max())} was requested; "
                "raise max_length (e.g. --pe learned:max_length=N)"
            )
        return x + self.table(pos).to(x.dtype)


__all__ = ["Learned", "NoPE", "Sinusoidal", "sinusoid_table"]
