"""Rotary position embeddings (pe_zoo.md §5)."""

from __future__ import annotations

from typing import Any

import torch

from lenbench.pe.base import PEContext, PositionalEncoding
from lenbench.pe.registry import PES


def rope_inv_freq(rot_dim: int, base: float = 10000.0) -> torch.Tensor:
    """``theta_k = base^(-2k/d_r)`` for k = 0..d_r/2-1 (RoFormer; pe_zoo.md §5)."""
    return base ** (-torch.arange(0, rot_dim // 2, dtype=torch.float32) * 2.0 / rot_dim)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Rotate pairs ``(x_k, x_{k+d_r/2})`` (half-split, GPT-NeoX) by ``angles`` ``[N, d_r/2]``.

    ``x' = x cos(a) + rotate_half(x) sin(a)``, with cos and sin both multiplied by ``scale``
    (YaRN's mscale). Dimensions past d_r = 2 * angles.shape[-1] pass through. fp32 trig.
    """
    half = angles.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    cos = (angles.cos() * scale).to(x.dtype)
    sin = (angles.sin() * scale).to(x.dtype)
    x1, x2 = rot[..., :half], rot[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


@PES.register("rope")
class RoPE(PositionalEncoding):
    """RoPE (Su et al.): pair k of q and k at position p is rotated by ``p * theta_k``,
    ``theta_k = base^(-2k/d_r)``, so ``q_m . k_n`` depends only on m - n (pe_zoo.md §5).

    Half-split pairing, full head dimension (``rotary_pct=1``), base 1e4, angles in fp32. The
    bidirectional and causal forms are the same rotation.
    """

    name = "rope"
    description = "rotary embeddings (Su et al.), base 1e4, full head dim, half-split pairs"
    shared = True

    def __init__(self, ctx: PEContext, base: float = 10000.0, rotary_pct: float = 1.0, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.base = float(base)
        self.rot_dim = int(ctx.head_dim * float(rotary_pct)) // 2 * 2
        self.register_buffer("inv_freq", rope_inv_freq(self.rot_dim, self.base), persistent=False)

    def angles(self, pos: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
        """Rotation angles ``[N, d_r/2]`` and the cos/sin scale for a length-``n`` sequence."""
        return pos.to(torch.float32)[:, None] * self.inv_freq[None, :], 1.0

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[-2]
        qa, qs = self.angles(q_pos, n)
        ka, ks = self.angles(k_pos, n)
        return apply_rotary(q, qa, qs), apply_rotary(k, ka, ks)
