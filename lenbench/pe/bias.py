"""Static relative biases ``B_h(i, j)`` added to the scaled logits (docs/pe.md §11-12): ALiBi, Kerple.

T5, FIRE and randomized ALiBi follow ALiBi and Kerple below, each section with its sources.

Every bias is built in fp32 from explicit positions. Each class documents its causal form (LM)
and its bidirectional form (CHE encoder); in the causal form future entries are irrelevant
(masked), and the bias uses the clamped distance ``max(i - j, 0)`` there.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenbench.errors import LenbenchError
from lenbench.pe import fire_kernel
from lenbench.pe.base import (
    PEContext,
    PositionalEncoding,
    RandomizedPositions,
    ScoreMod,
    fp32_region,
    relative_distance,
    sample_positions,
)
from lenbench.pe.registry import PES


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.; ALB fairseq L742-752; docs/pe.md §11, §17).

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


def alibi_distance(d: torch.Tensor, causal: bool) -> torch.Tensor:
    """ALiBi's unscaled term for signed distance ``d = i - j``, to be multiplied by the slope.

    Causal: ``-max(d, 0)``. Bidirectional (RPE): ``-|d| + 0.5 [d > 0]``.
    """
    if causal:
        return -d.clamp(min=0)
    return -d.abs() + 0.5 * (d > 0).to(d.dtype)


@PES.register("alibi")
class ALiBi(PositionalEncoding):
    """ALiBi (Press et al. 2022; docs/pe.md §11).

    Causal: ``B_h(i,j) = -m_h (i - j)`` for j <= i.
    Bidirectional (RPE ``compute_alibi_encodings_biases``; docs/che.md §3.1):
    ``B_h(i,j) = m_h (-|i - j| + 0.5 [j < i])``, the +0.5 on past keys breaks left/right symmetry.
    Slopes from :func:`alibi_slopes`; nothing is learned.
    """

    name = "alibi"
    description = "linear distance penalty (Press et al. 2022); encoder: -m|i-j| + 0.5m on past keys"
    shared = True
    translation_invariant = True

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.register_buffer("slopes", alibi_slopes(ctx.heads), persistent=False)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self.slopes[:, None, None] * alibi_distance(relative_distance(q_pos, k_pos), self.ctx.causal)[None]

    def score_mod(self) -> ScoreMod | None:
        slopes = self.slopes.detach()
        causal = self.ctx.causal

        def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return score + slopes[h] * alibi_distance((q - kv).to(torch.float32), causal)

        return mod


class _KerpleBase(PositionalEncoding):
    """Shared machinery of the Kerple kernels: per-head parameters, in-place clamp, sides."""

    shared = False  # per layer, as DAPE builds it (docs/dape.md §1.4); KER shares one module
    translation_invariant = True

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
        """KER's constraint: in-place clamp of ``.data`` before every bias (docs/pe.md §12)."""
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

    def score_mod(self) -> ScoreMod | None:
        """The same kernel per element, with ``r1, r2`` captured detached after the clamp."""
        self.clamp_()
        r1, r2 = self.r1.detach().clone(), self.r2.detach().clone()
        causal, kernel = self.ctx.causal, self.kernel

        def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            d = (q - kv).to(torch.float32)
            past = kernel(d.clamp(min=0), r1[0, h], r2[0, h])
            if causal:
                return score + past
            future = kernel((-d).clamp(min=0), r1[1, h], r2[1, h])
            return score + torch.where(d >= 0, past, future)

        return mod


@PES.register("kerple")
class KerpleLog(_KerpleBase):
    """Kerple, logarithmic kernel (Chi et al. 2022; docs/pe.md §12; KER ``ParallelKerpleLog``).

    Causal: ``B_h(i,j) = -r1_h log(1 + r2_h (i - j))`` for j <= i.
    Bidirectional (ours, docs/pe.md §12 proposal): separate ``(r1, r2)`` for past keys (distance
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
        # On ``.data`` as KER does: no autograd version bump, so a forward that calls bias() once per
        # query block (explicit attention, DAPE) can still backpropagate; idempotent within a forward.
        self.r1.data.clamp_(min=0.01)
        self.r2.data.clamp_(min=0.01)

    def kernel(self, dist: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return -r1 * torch.log1p(r2 * dist)


@PES.register("kerple-power")
class KerplePower(_KerpleBase):
    """Kerple, power kernel (Chi et al. 2022; docs/pe.md §12; KER ``ParallelKerplePower``, ``kerple_power_ap_``).

    Causal: ``B_h(i,j) = -r1_h (i - j)^r2_h`` for j <= i.
    Bidirectional (ours, as :class:`KerpleLog`): separate ``(r1, r2)`` for past and future keys.
    KER names: ``bias_a`` = r1 (scale), init ``U(0,1)``, clamped >= 0.01; ``bias_p`` = r2
    (exponent), init ``2 U(0,1)``, clamped to [0.01, 2]; both in place before every forward.
    ``0^r2`` has a finite (masked) gradient in PyTorch (docs/pe.md §12). One module per layer.
    """

    name = "kerple-power"
    description = "Kerple power kernel -r1|i-j|^r2, 0<r2<=2 (Chi et al. 2022); encoder: separate past/future"

    def r1_init(self, sides: int, heads: int) -> torch.Tensor:
        return torch.rand(sides, heads)

    def r2_init(self, sides: int, heads: int) -> torch.Tensor:
        return 2.0 * torch.rand(sides, heads)

    def clamp_(self) -> None:
        # On ``.data`` (see KerpleLog.clamp_): the exponent is saved for backward by ``pow``.
        self.r1.data.clamp_(min=0.01)
        self.r2.data.clamp_(min=0.01, max=2.0)

    def kernel(self, dist: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return -r1 * dist.pow(r2)


# --------------------------------------------------------------------------------------------------
# T5 relative position bias (Raffel et al. 2020; docs/pe.md §10, §17, §18).
#
# ``B_h(i, j) = sqrt(d_head) T[bucket(i - j), h]`` with a learned table ``T`` of ``num_buckets x H``,
# initialised ``xavier_normal_`` (std ``sqrt(2 / (num_buckets + H))``), one table shared by all layers:
# the T5 baseline of DAPE's GPT-NeoX code, which the ppl and timing suites reproduce (``megatron/model/
# gpt2_model.py``: ``rpe_scale = math.sqrt(hidden_size_per_attention_head)`` passed as ``scale`` to
# ``ParallelRelativePositionBias``, ``init_method=init.xavier_normal_`` in ``megatron/mpu/layers.py``,
# whose ``forward`` returns ``bias * self.scale``; docs/dape.md §1.5, docs/pe.md §10). At d_head 64 and 12
# heads the initial bias has std 8 x 0.213 = 1.7 logits, and Adam moves it sqrt(d_head) times faster
# than an unscaled table. ``scale_by_head_dim=false,init=normal`` is lenbench's earlier form (unscaled,
# ``N(0, 0.02)``, docs/pe.md §10's recommendation), kept as options. DeepMind's CHE/RPE code defines no T5
# bias (docs/che.md §3), so the CHE suite uses these defaults too and says so in suites/che.yaml.
#
# Buckets of ``n = i - j`` (HF ``_relative_position_bucket``):
#
# - causal (LM): ``n <- max(n, 0)``, all ``num_buckets`` buckets;
# - bidirectional (CHE encoder): the buckets are halved, the second half is for future keys
#   (``n < 0``), and ``n <- |n|``.
#
# Then with ``e = buckets / 2`` (of the possibly halved count): ``bucket = n`` if ``n < e``, else
# ``min(e + floor(ln(n / e) / ln(max_distance / e) * (buckets - e)), buckets - 1)``. Distances from
# ``max_distance`` on share the last bucket. The bucket of ``|n|`` is read from a precomputed table of
# ``max_distance + 1`` entries, which avoids ``ln 0`` and float ``floor`` at exact powers (where HF's
# fp32 happens to round the right way), and serves ``score_mod`` as a captured integer vector.


T5_INITS = ("xavier_normal", "normal")


def t5_magnitude_buckets(num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of a non-negative distance ``n = 0..max_distance`` among ``num_buckets`` (one side).

    The log branch is evaluated in float64 with a 1e-9 nudge, so exact powers (e.g. ``n = 64`` with
    8 of 16 buckets exact: ``8 + 8 ln 8 / ln 16 = 14``) land on their mathematical bucket.
    """
    exact = num_buckets // 2
    out = []
    for n in range(max_distance + 1):
        if n < exact:
            out.append(n)
        else:
            scaled = math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)
            out.append(min(exact + math.floor(scaled + 1e-9), num_buckets - 1))
    return torch.tensor(out, dtype=torch.long)


def t5_bucket(rel: torch.Tensor, lut: torch.Tensor, half: int = 0) -> torch.Tensor:
    """Bucket index of ``rel = i - j`` (any integer tensor) given :func:`t5_magnitude_buckets` ``lut``.

    ``half = 0``: causal (``lut`` covers all buckets). ``half > 0``: bidirectional, ``lut`` covers
    the ``half`` past buckets and future keys (``rel < 0``) are shifted into the second half.
    """
    max_distance = lut.shape[0] - 1
    if not half:
        return lut[rel.clamp(0, max_distance)]
    return lut[rel.abs().clamp(max=max_distance)] + half * (rel < 0).long()


@PES.register("t5")
class T5Bias(PositionalEncoding):
    """T5's bucketed learned bias (Raffel et al. 2020; HF ``_relative_position_bucket``; docs/pe.md §10).

    ``B_h(i, j) = s T[bucket(i - j), h]``, ``T`` learned ``[num_buckets, H]``, one table for all layers,
    added to the scaled logits. Defaults follow DAPE's GPT-NeoX T5 baseline (``rpe``; ``gpt2_model.py``
    ``rpe_scale = math.sqrt(hidden_size_per_attention_head)``, ``mpu/layers.py``
    ``ParallelRelativePositionBias(init_method=init.xavier_normal_)``, ``forward``: ``bias * self.scale``):
    ``s = sqrt(d_head)`` (``scale_by_head_dim=True``) and ``init="xavier_normal"``, i.e.
    ``T ~ N(0, 2 / (num_buckets + H))``. ``scale_by_head_dim=False, init="normal"`` is the earlier
    lenbench form (``s = 1``, ``T ~ N(0, 0.02^2)``, docs/pe.md §10 recommendation).
    Causal (LM): ``n = max(i - j, 0)`` over all buckets. Bidirectional (CHE encoder; no DeepMind T5
    exists, docs/che.md §3): half the buckets for past keys (``n = i - j >= 0``), the other half (offset
    ``num_buckets / 2``) for future keys (``n = j - i``), as HF's ``bidirectional=True``. Per side with
    ``e`` = half its buckets: ``bucket = n`` for ``n < e``, else
    ``min(e + floor(ln(n / e) / ln(max_distance / e) (buckets - e)), buckets - 1)``
    (:func:`t5_magnitude_buckets`). Options ``num_buckets=32``, ``max_distance=128`` (NeoX
    ``rpe_num_buckets``, ``rpe_max_distance``). Parameters: ``num_buckets * H`` in all.
    """

    name = "t5"
    description = (
        "T5 bucketed learned bias (Raffel et al. 2020), 32 buckets / 128, shared table, x sqrt(d_head), "
        "xavier init (DAPE's NeoX); encoder: halves"
    )
    shared = True
    translation_invariant = True

    def __init__(
        self,
        ctx: PEContext,
        num_buckets: int = 32,
        max_distance: int = 128,
        scale_by_head_dim: bool = True,
        init: str = "xavier_normal",
        **options: Any,
    ) -> None:
        super().__init__(ctx, **options)
        self.num_buckets, self.max_distance = int(num_buckets), int(max_distance)
        side = self.num_buckets if ctx.causal else self.num_buckets // 2
        if side < 2 or self.num_buckets > self.max_distance:
            raise LenbenchError(
                f"t5 needs 2 <= buckets per side and num_buckets <= max_distance, got {num_buckets}, {max_distance}"
            )
        if init not in T5_INITS:
            raise LenbenchError(f"t5: init must be one of {', '.join(T5_INITS)}, got {init!r}")
        self.half = 0 if ctx.causal else side
        self.scale = math.sqrt(ctx.head_dim) if scale_by_head_dim else 1.0
        self.register_buffer("lut", t5_magnitude_buckets(side, self.max_distance), persistent=False)
        self.table = nn.Parameter(torch.empty(self.num_buckets, ctx.heads))
        if init == "xavier_normal":
            nn.init.xavier_normal_(self.table)  # std sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (H + num_buckets))
        else:
            nn.init.normal_(self.table, std=0.02)

    def bucket(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Bucket indices ``[Nq, Nk]`` of ``i - j``."""
        rel = q_pos.long()[:, None] - k_pos.long()[None, :]
        return t5_bucket(rel, self.lut.to(rel.device), self.half)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return (self.table.to(torch.float32)[self.bucket(q_pos, k_pos)] * self.scale).permute(2, 0, 1)

    def score_mod(self) -> ScoreMod | None:
        table, lut, half = (self.table.detach().to(torch.float32) * self.scale).clone(), self.lut, self.half

        def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return score + table[t5_bucket(q - kv, lut, half), h]

        return mod


__all__ = ["T5Bias", "t5_bucket", "t5_magnitude_buckets"]


# --------------------------------------------------------------------------------------------------
# FIRE: Functional Interpolation for Relative position Encoding (Li et al., ICLR 2024; docs/pe.md §13).
#
# Causal (LM), with ``i`` the 0-based query position and ``j <= i``:
# ``B(i, j) = f(psi(i - j) / (psi(max(i, L)) + eps))``, ``psi(x) = log(|c x| + 1)``, where
# ``f: R -> R^H`` is ``Linear(1, 32) -> ReLU -> Linear(32, H)`` shared by the heads, ``c`` a learned
# scalar (init 0.1), ``L = |L_mult * l0|`` with a learned multiplier ``L_mult`` (init 1) and a fixed
# ``l0``, ``eps = 1e-6`` (DAPE ``FIRE`` L451 and ARITH ``FIRE``, identical defaults; docs/pe.md §13).
# Normalising by the query position ("progressive interpolation") keeps the MLP input in [0, 1] at any
# length; for ``i <= L`` the normaliser is constant. Future entries use distance 0 (masked anyway).
#
# ``l0`` is the effective ``L0`` (after any halving). The class default is **512**, the class default
# of ARITH and of DAPE's standalone ``DAPE.py``. DAPE's NeoX code, which the ppl and timing suites
# reproduce, passes ``noise_seq_length`` as ``init_L`` and halves it (``positional_embeddings.py``
# ``FIRE``/``FIRE_C``: ``torch.tensor(init_L // 2)``; ``transformer.py``: ``FIRE(heads, mlp_width, 0.1,
# neox_args.noise_seq_length, ...)``); its 125M V1 configs set ``noise_seq_length: 128`` at
# ``seq-length: 512``, so ``L0 = 64`` there (published). No config for other training lengths is
# released: those suites keep the config's ratio, ``L0 = (T // 4) // 2`` (T/8: 16 at T = 128; a
# reconstruction), resolved per cell to a number by :func:`lenbench.pe.defaults.dape_neox_l0`.
# MLP: PyTorch default init; one FIRE per layer (DAPE).
#
# Bidirectional (CHE encoder): no source defines one (docs/pe.md §13, §19). Ours, after the docs/pe.md
# proposal of a signed input: ``x = sign(i - j) psi(|i - j|) / (psi(max(i, j, L)) + eps)``. For past keys
# it is the causal form; a future key is normalised by its own (later) position, so ``|x| <= 1``
# everywhere and left and right stay distinguishable.


# Elements of the widest intermediate ([rows, Nk, width] hidden activations) per chunk of query rows.
CHUNK_ELEMENTS = 1 << 24


def fire_psi(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """FIRE's log distance transform ``psi(x) = log(|c x| + 1)``."""
    return torch.log1p((c * x).abs())


def fire_input(
    q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, threshold: torch.Tensor, causal: bool, eps: float
) -> torch.Tensor:
    """FIRE's normalised distance ``x`` for fp32 query/key positions ``q``, ``k`` (broadcastable).

    Causal: ``psi(max(q - k, 0)) / (psi(max(q, L)) + eps)``; bidirectional:
    ``sign(q - k) psi(|q - k|) / (psi(max(q, k, L)) + eps)``; ``psi(x) = log(|c x| + 1)``.
    """
    d = q - k
    if causal:
        num, later = fire_psi(d.clamp(min=0), c), q
    else:
        num, later = d.sign() * fire_psi(d.abs(), c), torch.maximum(q, k)
    den = fire_psi(torch.maximum(later, threshold), c) + eps
    return num / den


def activation(z: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """ReLU (``negative_slope = 0``, FIRE) or LeakyReLU (DAPE's ``FIRE_C``)."""
    return F.leaky_relu(z, negative_slope) if negative_slope else F.relu(z)


@PES.register("fire")
class FIRE(PositionalEncoding):
    """FIRE bias (Li et al., ICLR 2024; DAPE ``FIRE`` L451, ARITH ``FIRE``; docs/pe.md §13).

    ``psi(x) = log(|c x| + 1)``, ``L = |L_mult * l0|``, ``f = Linear(1, 32) -> ReLU -> Linear(32, H)``.
    Causal (LM): ``B(i, j) = f(psi(i - j) / (psi(max(i, L)) + eps))`` for ``j <= i`` (future entries
    use distance 0 and are masked): for ``i <= L`` the normaliser is the constant ``psi(L)``, past it
    ``psi(i)`` (progressive interpolation, inputs stay in [0, 1] at any length).
    Bidirectional (CHE encoder; ours, no source defines one, docs/pe.md §13 proposal):
    ``B(i, j) = f(sign(i - j) psi(|i - j|) / (psi(max(i, j, L)) + eps))``, in [-1, 1], left and right
    distinguishable.

    Options: ``mlp_width=32``, ``init_c=0.1``, ``l0=512``, ``eps=1e-6`` (the class defaults of ARITH and
    DAPE's ``DAPE.py``; docs/pe.md §13). ``l0`` is the effective threshold ``L0``. The ppl and timing
    suites follow DAPE's NeoX runs instead: ``L0 = noise_seq_length // 2`` with the 125M configs'
    ``noise_seq_length: 128`` at training length 512, i.e. ``l0=64`` there, and ``T // 8`` at other
    training lengths T (the config's ratio; :func:`lenbench.pe.defaults.dape_neox_l0`), written into each
    cell's spec (``fire:l0=64``). CHE keeps 512: DeepMind's CHE code defines no FIRE, and with at most
    ~120 training tokens the normaliser is the constant ``psi(512)`` in training and at every CHE test
    length below 512 (``fire:l0=N`` changes it). ``c`` and ``L_mult`` (init 1) learn; ``l0`` is fixed.
    MLP: PyTorch default init. One FIRE per layer.
    Parameters per layer: ``32 + 32`` (first linear), ``32 H + H`` (second), ``c``, ``L_mult``.
    """

    name = "fire"
    description = (
        "FIRE (Li et al. 2024): MLP(psi(i-j)/psi(max(i,L))), psi=log(|cx|+1), L0=512 (class default; "
        "ppl/timing: DAPE's NeoX T/8, 64 at T=512); encoder: signed"
    )
    shared = False
    negative_slope: ClassVar[float] = 0.0  # ReLU; DAPE's FIRE inside DAPE-FIRE uses LeakyReLU(0.01)

    def __init__(
        self,
        ctx: PEContext,
        mlp_width: int = 32,
        init_c: float = 0.1,
        l0: float = 512.0,
        eps: float = 1e-6,
        **options: Any,
    ) -> None:
        super().__init__(ctx, **options)
        if int(mlp_width) < 1 or float(l0) <= 0:
            raise LenbenchError(f"fire needs mlp_width >= 1 and l0 > 0, got {mlp_width}, {l0}")
        self.c = nn.Parameter(torch.tensor([float(init_c)]))
        self.l_mult = nn.Parameter(torch.tensor([1.0]))
        self.l0, self.eps = float(l0), float(eps)
        self.fc1 = nn.Linear(1, int(mlp_width))
        self.fc2 = nn.Linear(int(mlp_width), ctx.heads)

    def threshold(self) -> torch.Tensor:
        """The learned threshold ``L = |L_mult * l0|`` (1 element)."""
        return (self.l_mult * self.l0).abs()

    def act(self, z: torch.Tensor) -> torch.Tensor:
        return activation(z, self.negative_slope)

    def features(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The MLP input ``x`` ``[Nq, Nk]`` in fp32."""
        q = q_pos.to(torch.float32)[:, None]
        k = k_pos.to(torch.float32)[None, :]
        return fire_input(q, k, self.c, self.threshold(), self.ctx.causal, self.eps)

    def tables(self, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``fire_input``'s numerator ``psi(n)`` over distances and denominator ``psi(max(p, L)) + eps``
        over positions, ``n, p = 0..top`` (fp32): all the C kernel needs at integer positions."""
        steps = torch.arange(top + 1, dtype=torch.float32)
        return fire_psi(steps, self.c), fire_psi(torch.maximum(steps, self.threshold()), self.c) + self.eps

    def kernel_applies(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
        """Whether the C kernel computes this bias (no gradient wanted, CPU, integer positions)."""
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        return fire_kernel.applies(q_pos, k_pos, wants_grad)

    def kernel_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, future_from: int | None = None) -> torch.Tensor:
        """The C kernel's bias from this FIRE's tables and layers (:func:`fire_kernel.fire_bias`)."""
        with torch.no_grad():
            tables = self.tables(max(int(q_pos.max()), int(k_pos.max())))
        return fire_kernel.fire_bias(q_pos, k_pos, tables, self.fc1, self.fc2, self.negative_slope, self.ctx.causal,
                                     future_from)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``[H, Nq, Nk]``, computed over chunks of query rows to bound the ``[rows, Nk, 32]`` hidden;
        without gradients on CPU at integer positions by the C kernel (:mod:`lenbench.pe.fire_kernel`)."""
        if self.kernel_applies(q_pos, k_pos):
            return self.kernel_bias(q_pos, k_pos)
        step = max(1, CHUNK_ELEMENTS // max(1, k_pos.shape[0] * self.fc1.out_features))
        rows = []
        with fp32_region(q_pos.device):  # the MLP in fp32 under autocast (issue 16)
            for start in range(0, q_pos.shape[0], step):
                x = self.features(q_pos[start : start + step], k_pos)
                rows.append(self.fc2(self.act(self.fc1(x[..., None]))))
        return torch.cat(rows).permute(2, 0, 1)

    def compiled_bias(self) -> bool:
        return fire_kernel.available()

    def causal_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, first: int) -> torch.Tensor:
        """The base class's masked bias; the C kernel writes the -inf itself (no second pass over ``[H, Nq, Nk]``)."""
        if self.kernel_applies(q_pos, k_pos):
            return self.kernel_bias(q_pos, k_pos, future_from=first)
        return super().causal_bias(q_pos, k_pos, first)

    def score_mod(self) -> ScoreMod | None:
        """The MLP unrolled over its hidden units (docs/pe.md §16.1), parameters captured detached as
        1-element or 1-D tensors (no 0-d captured scalars)."""
        c, threshold = self.c.detach().clone(), self.threshold().detach().clone()
        w1, b1 = self.fc1.weight.detach()[:, 0].clone(), self.fc1.bias.detach().clone()
        w2, b2 = self.fc2.weight.detach().clone(), self.fc2.bias.detach().clone()
        causal, eps, width, slope = self.ctx.causal, self.eps, self.fc1.out_features, self.negative_slope

        def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            x = fire_input(q.to(torch.float32), kv.to(torch.float32), c[0], threshold[0], causal, eps)
            out = b2[h]
            for u in range(width):
                out = out + w2[h, u] * activation(w1[u] * x + b1[u], slope)
            return score + out

        return mod


class LeakyFIRE(FIRE):
    """FIRE with LeakyReLU(0.01) in its MLP: the base bias inside DAPE-FIRE (DAPE ``FIRE_C`` L526-540;
    docs/dape.md §1.5). Not registered on its own."""

    name = "fire-leaky"
    negative_slope = 0.01


__all__ = ["FIRE", "LeakyFIRE", "activation", "fire_input", "fire_psi"]


# --------------------------------------------------------------------------------------------------
# Randomized ALiBi (Ruoss et al. 2023); the sampling policy is :class:`~lenbench.pe.base.RandomizedPositions`'s.


@PES.register("randomized-alibi")
class RandomizedALiBi(RandomizedPositions, ALiBi):
    """ALiBi on randomized positions or distances (Ruoss et al.; docs/pe.md §9, §16). With a signed distance
    ``r(i, j)`` it is ALiBi's formula (:func:`~lenbench.pe.bias.alibi_distance`):
    causal ``B_h = -m_h max(r, 0)``; bidirectional ``B_h = m_h (-|r| + 0.5 [r > 0])``.

    - ``randomize="distances"`` (default; RPE ``NOISY_ALIBI`` exactly, docs/che.md §3.2, with RPE's
      ``randomize_both_sides=False``): draw sorted distinct ``s_1 < ... < s_{n-1}`` from ``[1, L)``,
      ``s_0 = 0``, and ``r = sign(i - j) s_{|i-j|}``.
    - ``randomize="positions"`` (ours; docs/architecture.md, docs/pe.md §16): ``r = p_i - p_j`` with sorted
      positions ``p`` drawn from ``[0, L)``, as if the n tokens sat at those places of a longer text.

    Either way one draw per layer and forward. ``score_mod`` captures that draw, so it gives the
    same bias as :meth:`bias` for the forward that made it (the attention module calls
    :meth:`positions` first; it never picks FlexAttention by itself for a PE with random positions).
    """

    name = "randomized-alibi"
    description = (
        "ALiBi at RPE's sorted random distances from [1, L) (NOISY_ALIBI, Ruoss et al. 2023); "
        "randomize=positions: at random positions (ours)"
    )
    translation_invariant = False  # the bias of a forward depends on that forward's draw

    def __init__(self, ctx: PEContext, randomize: str = "distances", **options: Any) -> None:
        super().__init__(ctx, **options)
        if randomize not in ("positions", "distances"):
            raise LenbenchError(f"{self.name}: randomize must be 'positions' or 'distances', got {randomize!r}")
        self.mode = randomize

    def positions(self, n: int, device: torch.device) -> torch.Tensor:
        if self.mode == "positions":
            return super().positions(n, device)
        if self.draws(n):
            rest = sample_positions(n - 1, self.max_position - 1, device) + 1
            self.sample = torch.cat([torch.zeros(1, dtype=rest.dtype, device=device), rest])
        else:
            self.sample = torch.arange(n, device=device)
        return torch.arange(n, device=device)

    def signed_distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``r(i, j)`` ``[Nq, Nk]`` in fp32 (see class docstring)."""
        d = relative_distance(q_pos, k_pos)
        if self.mode == "positions":
            return d
        table = self.sample
        if table is None or table.shape[0] <= int(d.abs().max()):
            raise LenbenchError(f"{self.name}: call positions(n) before bias() (randomize=distances)")
        return d.sign() * table.to(torch.float32)[d.abs().long()]

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self.slopes[:, None, None] * alibi_distance(self.signed_distance(q_pos, k_pos), self.ctx.causal)[None]

    def score_mod(self) -> ScoreMod | None:
        if self.sample is None:
            return None
        slopes, sample = self.slopes.detach(), self.sample.detach().to(torch.float32)
        causal, by_position = self.ctx.causal, self.mode == "positions"
        last = sample.shape[0] - 1

        def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            if by_position:
                r = sample[q] - sample[kv]
            else:
                d = q - kv
                r = d.sign().to(torch.float32) * sample[d.abs().clamp(max=last)]
            return score + slopes[h] * alibi_distance(r, causal)

        return mod
