"""Static relative biases ``B_h(i, j)`` added to the scaled logits (pe_zoo.md §10-13).

Every bias is built in fp32 from explicit positions. Each class documents its causal form (LM)
and its bidirectional form (CHE encoder); in the causal form future entries are irrelevant
(masked), and the bias uses the clamped distance ``max(i - j, 0)`` there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lenbench.pe.base import PEContext, PositionalEncoding, ScoreMod, relative_distance
from lenbench.pe.registry import PES


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.; ALB fairseq L742-752; pe_zoo.md §11, §17).

    Power of two H: ``m_h = 2^(-8h/H)``, h = 1..H. Otherwise, with P = 2^floor(log2 H): the P
    power-of-two slopes, then the even-indexed entries of the 2P list, first H - P of them.
    12 heads: 2^-1..2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads), dtype=torch.float32)
    p = 2 ** math.floor(math.log2(heads))
    extra = power_of_two(2 * p)[0::2][: heads - p]
    return torch.tensor(power_of_two(p) + extra, dtype=torch.float32)


@PES.register("alibi")
class ALiBi(PositionalEncoding):
    """ALiBi (Press et al. 2022; pe_zoo.md §11).

    Causal: ``B_h(i,j) = -m_h (i - j)`` for j <= i.
    Bidirectional (RPE ``compute_alibi_encodings_biases``; che.md §3.1):
    ``B_h(i,j) = m_h (-|i - j| + 0.5 [j < i])``, the +0.5 on past keys breaks left/right symmetry.
    Slopes from :func:`alibi_slopes`; nothing is learned.
    """

    name = "alibi"
    description = "linear distance penalty (Press et al. 2022); encoder: -m|i-j| + 0.5m on past keys"
    shared = True

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.register_buffer("slopes", alibi_slopes(ctx.heads), persistent=False)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        d = relative_distance(q_pos, k_pos)
        if self.ctx.causal:
            dist = -d.clamp(min=0)
        else:
            dist = -d.abs() + 0.5 * (d > 0).to(d.dtype)
        return self.slopes[:, None, None] * dist[None]

    def score_mod(self) -> ScoreMod | None:
        slopes = self.slopes.detach()
        causal = self.ctx.causal

        def mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor):
            d = (q - kv).to(torch.float32)
            if causal:
                dist = -d.clamp(min=0)
            else:
                dist = -d.abs() + 0.5 * (d > 0).to(torch.float32)
            return score + slopes[h] * dist

        return mod


class _KerpleBase(PositionalEncoding):
    """Shared machinery of the Kerple kernels: per-head parameters, in-place clamp, sides."""

    shared = False  # per layer, as DAPE builds it (dape.md §1.4); KER shares one module

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        sides = 1 if ctx.causal else 2
        # Row 0: past keys (j <= i); row 1 (encoder only): future keys (j > i).
        self.r1 = nn.Parameter(self.r1_init(sides, ctx.heads))
        self.r2 = nn.Parameter(self.r2_init(sides, ctx.heads))

    def r1_init(self, sides: int, heads: int) -> torch.Tensor:
        raise NotImplementedError

    def r2_init(self, sides: int, heads: int) -> torch.Tensor:
        raise NotImplementedError

    def clamp_(self) -> None:
        """KER's constraint: in-place clamp of ``.data`` before every forward (pe_zoo.md §12)."""
        raise NotImplementedError

    def kernel(self, dist: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        self.clamp_()
        d = relative_distance(q_pos, k_pos)
        past = self.kernel(d.clamp(min=0)[None], self.r1[0][:, None, None], self.r2[0][:, None, None])
        if self.ctx.causal:
            return past
        future = self.kernel((-d).clamp(min=0)[None], self.r1[1][:, None, None], self.r2[1][:, None, None])
        return torch.where(d[None] >= 0, past, future)


@PES.register("kerple")
class KerpleLog(_KerpleBase):
    """Kerple, logarithmic kernel (Chi et al. 2022; pe_zoo.md §12; KER ``ParallelKerpleLog``).

    Causal: ``B_h(i,j) = -r1_h log(1 + r2_h (i - j))`` for j <= i.
    Bidirectional (ours, pe_zoo.md §12 proposal): separate ``(r1, r2)`` for past keys (distance
    i - j) and future keys (distance j - i), like T5's split halves.
    Init ``r1 ~ 2 U(0,1)``, ``r2 ~ U(0,1)``; both clamped in place to >= 0.01 before every forward.
    One module per layer (DAPE's choice).
    """

    name = "kerple"
    description = "Kerple log kernel -r1 log(1 + r2|i-j|) (Chi et al. 2022); encoder: separate past/future"

    def r1_init(self, sides: int, heads: int) -> torch.Tensor:
        return 2.0 * torch.rand(sides, heads)

    def r2_init(self, sides: int, heads: int) -> torch.Tensor:
        return torch.rand(sides, heads)

    def clamp_(self) -> None:
        with torch.no_grad():
            self.r1.clamp_(min=0.01)
            self.r2.clamp_(min=0.01)

    def kernel(self, dist: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return -r1 * torch.log1p(r2 * dist)

    def score_mod(self) -> ScoreMod | None:
        self.clamp_()
        r1, r2 = self.r1.detach().clone(), self.r2.detach().clone()
        causal = self.ctx.causal

        def mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor):
            d = (q - kv).to(torch.float32)
            past = -r1[0, h] * torch.log1p(r2[0, h] * d.clamp(min=0))
            if causal:
                return score + past
            future = -r1[1, h] * torch.log1p(r2[1, h] * (-d).clamp(min=0))
            return score + torch.where(d >= 0, past, future)

        return mod
