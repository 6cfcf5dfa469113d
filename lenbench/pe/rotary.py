"""Rotary position embeddings (docs/pe.md §5).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lenbench.errors import LenbenchError
from lenbench.pe.base import PEContext, PositionalEncoding, RandomizedPositions
from lenbench.pe.registry import PES


def rope_inv_freq(rot_dim: int, base: float = 10000.0) -> torch.Tensor:
    """``theta_k = base^(-2k/d_r)`` for k = 0..d_r/2-1 (RoFormer; docs/pe.md §5)."""
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
    ``theta_k = base^(-2k/d_r)``, so ``q_m . k_n`` depends only on m - n (docs/pe.md §5).

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


# --------------------------------------------------------------------------------------------------
# RoPE context extension applied zero-shot: PI, NTK-aware, YaRN (docs/pe.md §6-7).
#
# All three change RoPE's inverse frequencies by a factor ``s`` that is **dynamic**:
# ``s = max(1, n / L)`` for a sequence of n tokens and ``L = ctx.train_length`` (docs/pe.md §6, §18;
# YARN ``LlamaDynamicYaRNScaledRotaryEmbedding``). For ``n <= L`` (s = 1) they *are* RoPE, bit for
# bit: the scaled path is skipped. Angles in fp32; half-split pairs, base and ``rotary_pct`` as
# :class:`~lenbench.pe.rotary.RoPE`. Bidirectional and causal forms are the same rotation.


class ScaledRoPE(RoPE):
    """RoPE whose frequencies (and cos/sin scale) change with ``s = max(1, n / train_length)``."""

    def factor(self, n: int) -> float:
        """The dynamic extension factor ``s`` for a length-``n`` sequence."""
        return max(1.0, n / self.ctx.train_length)

    def scaled(self, s: float) -> tuple[torch.Tensor, float]:
        """Inverse frequencies ``[d_r/2]`` and cos/sin scale for factor ``s > 1``."""
        raise NotImplementedError

    def angles(self, pos: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
        s = self.factor(n)
        if s <= 1.0:
            return super().angles(pos, n)
        inv_freq, scale = self.scaled(s)
        return pos.to(torch.float32)[:, None] * inv_freq.to(pos.device)[None, :], scale


@PES.register("rope-pi")
class RoPEPI(ScaledRoPE):
    """Position interpolation (Chen et al. 2023, arXiv 2306.15595; HF ``linear``): positions
    ``p -> p / s``, i.e. ``theta_k / s``. Zero-shot it compresses local resolution (docs/pe.md §6)."""

    name = "rope-pi"
    description = "RoPE with position interpolation p/s, s = max(1, n/L_train) (Chen et al. 2023)"

    def scaled(self, s: float) -> tuple[torch.Tensor, float]:
        return self.inv_freq / s, 1.0


@PES.register("rope-ntk")
class RoPENTK(ScaledRoPE):
    """NTK-aware scaling (bloc97; HF ``_compute_ntk_parameters``, YARN ``LlamaNTKScaledRotaryEmbedding``):
    ``base' = base * s^(d_r / (d_r - 2))``, then ``theta_k = base'^(-2k/d_r)`` (docs/pe.md §6).
    Needs ``d_r > 2``."""

    name = "rope-ntk"
    description = "RoPE with NTK-aware base base*s^(d/(d-2)), s = max(1, n/L_train)"

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        if self.rot_dim <= 2:
            raise LenbenchError(f"rope-ntk needs a rotary dimension > 2, got {self.rot_dim}")

    def scaled(self, s: float) -> tuple[torch.Tensor, float]:
        base = self.base * s ** (self.rot_dim / (self.rot_dim - 2))
        return rope_inv_freq(self.rot_dim, base), 1.0


def yarn_inv_freq(
    rot_dim: int,
    base: float,
    s: float,
    length: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN's blended frequencies (YARN ``yarn()``, HF ``_compute_yarn_parameters``; docs/pe.md §7).

    ``k(r) = d_r ln(L / (2 pi r)) / (2 ln base)``; ``k_low = floor(k(beta_fast))``, ``k_high =
    ceil(k(beta_slow))`` (no rounding when ``truncate`` is False), clamped to ``[0, d_r - 1]``.
    Ramp over pair index: ``gamma_k = clamp((k - k_low) / (k_high - k_low), 0, 1)`` (+0.001 on the
    upper end when equal), ``w_k = 1 - gamma_k``, ``inv_freq_k = w_k theta_k + (1 - w_k) theta_k / s``.
    """

    def correction(rotations: float) -> float:
        return rot_dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction(beta_fast), correction(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    if low == high:
        high += 0.001
    gamma = ((torch.arange(rot_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    theta = rope_inv_freq(rot_dim, base)
    keep = 1.0 - gamma
    return theta * keep + theta / s * (1.0 - keep)


def yarn_mscale(s: float) -> float:
    """YaRN's attention temperature ``m = 0.1 ln s + 1`` (1 for s <= 1); the logits scale by ``m^2``."""
    return 0.1 * math.log(s) + 1.0 if s > 1 else 1.0


@PES.register("yarn")
class YaRN(ScaledRoPE):
    """YaRN (Peng et al. 2023, arXiv 2309.00071), dynamic zero-shot form (docs/pe.md §7, §18).

    ``s = max(1, n / L_train)``; frequencies from :func:`yarn_inv_freq` with ``beta_fast = 32``,
    ``beta_slow = 1``, ``truncate``; cos and sin are **both** multiplied by ``m = 0.1 ln s + 1``
    (:func:`yarn_mscale`), so q.k scales by ``m^2``. Exactly RoPE for ``n <= L_train``.
    """

    name = "yarn"
    description = "YaRN (Peng et al. 2023), dynamic s = max(1, n/L_train), ramp 32/1, mscale on cos and sin"

    def __init__(
        self,
        ctx: PEContext,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        truncate: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(ctx, **options)
        if not float(beta_fast) > float(beta_slow) > 0:
            raise LenbenchError(f"yarn needs beta_fast > beta_slow > 0, got {beta_fast}, {beta_slow}")
        self.beta_fast, self.beta_slow, self.truncate = float(beta_fast), float(beta_slow), bool(truncate)

    def scaled(self, s: float) -> tuple[torch.Tensor, float]:
        inv_freq = yarn_inv_freq(
            self.rot_dim, self.base, s, self.ctx.train_length, self.beta_fast, self.beta_slow, self.truncate
        )
        return inv_freq, yarn_mscale(s)


__all__ = ["RoPENTK", "RoPEPI", "ScaledRoPE", "YaRN", "yarn_inv_freq", "yarn_mscale"]


# --------------------------------------------------------------------------------------------------
# Randomized RoPE (Ruoss et al. 2023); the sampling policy is :class:`~lenbench.pe.base.RandomizedPositions`'s.


@PES.register("randomized-rope")
class RandomizedRoPE(RandomizedPositions, RoPE):
    """RoPE at sorted random positions (RPE ``NOISY_ROTARY``): q and k of one layer are rotated by
    ``p_t * theta_k`` with the **same** draw, a fresh draw per layer and forward. Same form causal and
    bidirectional. DAPE's LM baseline uses L = 4x the training length (the causal default)."""

    name = "randomized-rope"
    description = "RoPE at sorted random positions from [0, L) (Ruoss et al. 2023), L=2048 CHE / 4x train LM"
