"""Contextual PEs: the logits depend on content through the ``scores`` hook (CoPE, Transformer-XL).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.pe.absolute import sinusoid_table
from lenbench.pe.base import (
    PEContext,
    PositionalEncoding,
    RandomizedPositions,
    fp32_region,
    relative_distance,
    sample_positions,
)
from lenbench.pe.registry import PES

# --------------------------------------------------------------------------------------------------
# CoPE: Contextual Position Encoding (Golovneva et al. 2024, arXiv 2405.18719; docs/pe.md §14).
#
# Positions count gated tokens instead of tokens. With ``s_ij = q_i . k_j / sqrt(d_h)`` (COPE
# ``context_position.py``, facebookresearch/RAM):
#
# - gates ``g_ij = sigmoid(s_ij)`` on visible keys, 0 on masked ones;
# - position ``p_ij = sum_{t=j..i} g_it`` (reverse cumulative sum over keys), clamped to npos - 1;
# - ``z_i[p] = q_i . e[:, p]`` for integer p, linearly interpolated at the fractional ``p_ij``:
#   ``z(p) = (p - floor p) z_i[ceil p] + (1 - p + floor p) z_i[floor p]`` (gradient through the weight
#   only);
# - logit ``s_ij + z(p_ij)`` (default ``divide=False``: DAPE's CoPE baseline, XT, the CoPE paper's
#   appendix, COPE ``--cope-nodiv``), or ``s_ij + z(p_ij) / sqrt(d_h)`` with ``divide=True`` (COPE
#   code's own default, ``(q.k + z) / sqrt(d_h)``).
#
# ``e`` is ``[d_h, npos]``, zero-initialised, one per layer and shared by the layer's heads.


def interpolate(z_int: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``z(p) = w z[ceil p] + (1 - w) z[floor p]``, ``w = p - floor p``; ``z_int`` ``[..., npos]``,
    ``p`` ``[..., Nk]`` already clamped to ``[0, npos - 1]`` (COPE; docs/pe.md §14)."""
    floor = p.detach().floor()
    w = p - floor
    lo = z_int.gather(-1, floor.long())
    hi = z_int.gather(-1, p.detach().ceil().long())
    return hi * w + lo * (1 - w)


@PES.register("cope")
class CoPE(PositionalEncoding):
    """Contextual position encoding (docs/pe.md §14; see the module docstring for the formula).

    Causal (LM): positions count gates of keys ``j..i`` as in COPE; future gates are 0.
    Bidirectional (CHE encoder; ours, no source defines one, docs/pe.md §14 "causal only"): past
    keys (``j <= i``) use ``p_ij = sum_{t=j..i} g_it`` and the table ``e``; future keys (``j > i``)
    count forwards, ``p_ij = sum_{t=i..j} g_it``, with a second zero-initialised table, so the two
    sides stay distinguishable.

    Options: ``npos`` (64, DAPE's baseline), ``divide`` (False: the position term undivided, as DAPE's
    CoPE baseline adds it, the code whose numbers lenbench compares against; deviation from COPE's own
    code, whose default divides by ``sqrt(d_h)``: ``cope:divide=true``). Neither DeepMind code has CoPE.
    Parameters per layer: ``d_h * npos`` causal, ``2 * d_h * npos`` bidirectional.
    """

    name = "cope"
    description = (
        "contextual positions from cumulative sigmoid gates (Golovneva et al. 2024), npos 64; "
        "z undivided as DAPE's baseline (COPE's code divides by sqrt(d_h): divide=true)"
    )
    shared = False

    def __init__(self, ctx: PEContext, npos: int = 64, divide: bool = False, **options: Any) -> None:
        super().__init__(ctx, **options)
        if int(npos) < 2:
            raise LenbenchError(f"CoPE needs npos >= 2, got {npos}")
        self.npos = int(npos)
        self.divide = bool(divide)
        sides = 1 if ctx.causal else 2
        self.table = nn.Parameter(torch.zeros(sides, ctx.head_dim, self.npos))

    def gate_positions(self, s: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Contextual positions ``p`` ``[B, H, Nq, Nk]`` (unclamped) from the scaled logits ``s``.

        Keys must be sorted by position (the cumulative sums run along the key axis).
        """
        gates = torch.sigmoid(s)
        d = relative_distance(q_pos, k_pos)
        past = gates * (d >= 0).to(gates.dtype)
        p = past.flip(-1).cumsum(-1).flip(-1)
        if self.ctx.causal:
            return p
        future = (gates * (d <= 0).to(gates.dtype)).cumsum(-1)
        return torch.where(d >= 0, p, future)

    def scores(
        self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> torch.Tensor:
        with fp32_region(s.device):  # fp32 logits under autocast (issue 16)
            s, q = s.float(), q.float()
            p = self.gate_positions(s, q_pos, k_pos).clamp(max=self.npos - 1)
            z = interpolate(torch.matmul(q, self.table[0]), p)
            if not self.ctx.causal:
                z_future = interpolate(torch.matmul(q, self.table[1]), p)
                z = torch.where(relative_distance(q_pos, k_pos) >= 0, z, z_future)
            scale = self.ctx.head_dim**-0.5 if self.divide else 1.0
            return s + z * scale


__all__ = ["CoPE", "interpolate"]


# --------------------------------------------------------------------------------------------------
# Transformer-XL relative attention (Dai et al. 2019; docs/pe.md §15).
#
# ``logit_ij = [(q_i + u) . k_j + (q_i + v) . (W_R R_{i-j})] / sqrt(d_h)`` (TXL
# ``RelPartialLearnableMultiHeadAttn``), i.e. given the scaled logits ``s = q k^T / sqrt(d_h)``:
# ``s_ij + [u . k_j + (q_i + v) . P_{i-j}] / sqrt(d_h)`` with ``P_delta = W_R R_delta`` split per
# head. ``R_delta`` is the ``d_model``-wide ``[sin, cos]`` sinusoid (base 1e4) of the signed distance
# ``delta = i - j``; ``W_R`` is a bias-free ``Linear(d_model -> H d_h)``; ``u, v`` are ``[H, d_h]``
# with ``N(0, 0.02)`` init.
#
# The distance term is computed for the distinct distances of a query block and gathered to
# ``(i, j)``, which replaces TXL's ``_rel_shift`` and is exact for any ``Nq``, ``Nk``.


@PES.register("transformer-xl")
class TransformerXL(PositionalEncoding):
    """Transformer-XL relative PE with content (u) and position (v) biases (docs/pe.md §15).

    Causal (LM): distances ``i - j >= 0`` (future entries are masked afterwards).
    Bidirectional (CHE encoder): signed distances ``i - j`` in ``[-(N-1), N-1]``, RPE's
    ``add_negative_side`` form; ``R_{-delta}`` differs from ``R_delta`` in its sine half, so the two
    sides are distinguishable.

    One module per layer with its own ``u``, ``v`` and ``W_R``, as DAPE's ``xl_bias`` baseline does
    (the TXL run of the DAPE paper). The official TXL shares one ``u, v`` pair across layers
    (docs/pe.md §15, §18); the model builds a PE either once for all layers or once per layer, so
    sharing ``u, v`` alone is not offered. ``clamp_len > 0`` caps ``|i - j|`` (TXL ``clamp_len``;
    default off).
    Parameters per layer: ``2 H d_h + d_model * H d_h``.
    """

    name = "transformer-xl"
    description = "Transformer-XL relative attention (Dai et al. 2019): u, v biases, projected sinusoids"
    shared = False

    def __init__(self, ctx: PEContext, clamp_len: int = 0, **options: Any) -> None:
        super().__init__(ctx, **options)
        if ctx.dim % 2:
            raise LenbenchError(f"transformer-xl needs an even model width, got {ctx.dim}")
        if int(clamp_len) < 0:
            raise LenbenchError(f"transformer-xl clamp_len must be >= 0 (0 = off), got {clamp_len}")
        self.clamp_len = int(clamp_len)
        self.u = nn.Parameter(torch.randn(ctx.heads, ctx.head_dim) * 0.02)
        self.v = nn.Parameter(torch.randn(ctx.heads, ctx.head_dim) * 0.02)
        self.r_net = nn.Linear(ctx.dim, ctx.heads * ctx.head_dim, bias=False)

    def distances(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Integer ``i - j`` ``[Nq, Nk]``: clamped at 0 when causal, and to ``clamp_len`` if set."""
        d = q_pos.long()[:, None] - k_pos.long()[None, :]
        if self.ctx.causal:
            d = d.clamp(min=0)
        if self.clamp_len:
            d = d.clamp(-self.clamp_len, self.clamp_len)
        return d

    def scores(
        self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> torch.Tensor:
        d = self.distances(q_pos, k_pos)
        lo = int(d.min())
        rel = torch.arange(lo, int(d.max()) + 1, device=q.device)
        with fp32_region(s.device):  # fp32 logits under autocast (issue 16)
            s, q, k = s.float(), q.float(), k.float()
            proj = self.r_net(sinusoid_table(self.encoded(rel), self.ctx.dim))  # [M, H d_h]
            proj = proj.view(-1, self.ctx.heads, self.ctx.head_dim).transpose(0, 1)  # [H, M, d_h]
            bd = torch.matmul(q + self.v[:, None, :], proj.transpose(-1, -2))  # [B, H, Nq, M]
            bd = bd.gather(-1, (d - lo).expand(*bd.shape[:-1], -1))  # [B, H, Nq, Nk]
            uk = torch.matmul(k, self.u[:, :, None]).transpose(-1, -2)  # [B, H, 1, Nk]
            return s + (uk + bd) / math.sqrt(self.ctx.head_dim)

    def encoded(self, rel: torch.Tensor) -> torch.Tensor:
        """The position whose sinusoid ``R`` encodes relative offset ``rel``: ``rel`` itself here."""
        return rel


__all__ = ["RandomizedRelative", "TransformerXL"]


# --------------------------------------------------------------------------------------------------
# Randomized relative encoding (Ruoss et al., ACL 2023; RPE ``NOISY_RELATIVE``,
# ``compute_attention_with_noisy_relative_encodings``; docs/che.md §3.2, docs/pe.md §9).
#
# Transformer-XL attention (above) whose relative offsets are mapped to random signed positions:
# per layer and forward draw ``T - 1`` distinct distances uniformly from ``[1, L)``, sort them,
# ``r_1 < ... < r_{T-1}``, ``r_0 = 0``; offset ``d = j - i`` (key minus query, RPE's convention,
# docs/che.md §3.1) is encoded by the sinusoid at ``sign(d) r_{|d|}``:
# ``logit_ij = s_ij + [u . k_j + (q_i + v) . W_R R(sign(d) r_{|d|})] / sqrt(d_h)``.
# ``randomize_both_sides`` (RPE option, default False) draws the left side independently: RPE draws
# ``T`` magnitudes there and uses the ``T - 1`` smallest, and so do we.
#
# RPE's released code (HEAD e8c6474, RPE issue #2) shifts the signed positions by +L and gathers a
# sinusoid table of rows 0..L-1 only; JAX clamps the out-of-range gather, so every d >= 0 gets
# PE(L - 1) and d < 0 gets PE(L - r_{|d|}). The maintainers fixed it internally (a table spanning
# -L..L-1). We implement the intended form; ``rpe_bug=True`` reproduces the released one.


@PES.register("randomized-relative")
class RandomizedRelative(RandomizedPositions, TransformerXL):
    """Randomized relative PE (Ruoss et al. 2023, RPE ``NOISY_RELATIVE``; formula in the comment above).

    Bidirectional (CHE encoder): RPE's form, offsets ``d = j - i`` of both signs.
    Causal (LM; ours, RPE raises ``NotImplementedError`` for causal attention): the same formula on
    visible keys, ``d <= 0``, encoded at ``-r_{|d|}``; future keys use ``d = 0`` and are masked.
    Sampling policy of :class:`~lenbench.pe.base.RandomizedPositions`: ``max_position`` L (2048 for
    the encoder as RPE ``example.py``, ``4 * train_length`` for the LM), a draw per layer and
    forward, also in eval mode unless ``eval_random=False`` (RPE samples at test time), and for
    ``T > L`` (``T - 1`` distances do not fit in ``[1, L)``) ``overflow="arange"`` uses plain
    offsets, ``overflow="error"`` raises.
    Options also ``randomize_both_sides`` (False, RPE) and ``rpe_bug`` (False: the intended signed
    table; True: the released clamped gather, for parity runs).
    Init as RPE: ``u, v ~ N(0, 0.02)``, ``W_R`` Haiku's TruncatedNormal(1/sqrt(E), +-2 sigma).
    Parameters per layer: ``2 H d_h + E H d_h``.
    """

    name = "randomized-relative"
    description = (
        "RPE's randomized relative (NOISY_RELATIVE, Ruoss et al. 2023): TXL attention at sorted random "
        "distances from [1, L), L=2048 CHE / 4x train LM; intended signed table, not the released clamp bug"
    )
    shared = False

    def __init__(
        self, ctx: PEContext, randomize_both_sides: bool = False, rpe_bug: bool = False, **options: Any
    ) -> None:
        super().__init__(ctx, **options)
        if self.max_position < 2:
            raise LenbenchError(f"{self.name}: max_position must be >= 2, got {self.max_position}")
        self.randomize_both_sides = bool(randomize_both_sides)
        self.rpe_bug = bool(rpe_bug)
        std = ctx.dim**-0.5
        nn.init.trunc_normal_(self.r_net.weight, std=std, a=-2 * std, b=2 * std)
        # right[m] / left[m]: the magnitude encoding offset +m / -m (index 0 is 0); None: plain offsets.
        self.right: torch.Tensor | None = None
        self.left: torch.Tensor | None = None

    def positions(self, n: int, device: torch.device) -> torch.Tensor:
        """``arange(n)``; draws this forward's distances (class docstring) into ``right``/``left``."""
        self.right = self.left = None
        both = self.randomize_both_sides
        if self.draws(n + 1 if both else n):  # T - 1 (both sides: T) distinct values in [1, L)
            limit = self.max_position - 1
            zero = torch.zeros(1, dtype=torch.long, device=device)
            self.right = torch.cat([zero, sample_positions(n - 1, limit, device) + 1])
            self.left = self.right
            if both:
                self.left = torch.cat([zero, (sample_positions(n, limit, device) + 1)[: n - 1]])
        self.sample = self.right
        return torch.arange(n, device=device)

    def distances(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Integer offsets ``j - i`` ``[Nq, Nk]`` (RPE: key minus query), clamped at 0 when causal."""
        d = k_pos.long()[None, :] - q_pos.long()[:, None]
        return d.clamp(max=0) if self.ctx.causal else d

    def encoded(self, rel: torch.Tensor) -> torch.Tensor:
        """The sinusoid position of offset ``rel``: ``sign(rel) r_{|rel|}`` (left side from its own
        draw with ``randomize_both_sides``); ``rel`` when not drawing; with ``rpe_bug`` the released
        clamp, ``L - 1`` for ``rel >= 0`` and ``L - r_{|rel|}`` for ``rel < 0``."""
        if self.right is None or self.left is None:
            return rel
        if self.right.shape[0] <= int(rel.abs().max()):
            raise LenbenchError(f"{self.name}: call positions(n) before scores()")
        mag = rel.abs()
        signed = torch.where(rel >= 0, self.right[mag], -self.left[mag])
        if self.rpe_bug:
            return (signed + self.max_position).clamp(max=self.max_position - 1)
        return signed
