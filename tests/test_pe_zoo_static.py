"""The static part of the PE zoo against hand-computed values (docs/pe.md §6, §7, §9, §10, §12, §13, §17).

T5 buckets, Kerple-power, FIRE, YaRN / PI / NTK, randomized PEs, score_mod = materialized bias,
and, for every registered PE: backend agreement, a 4x-longer-than-trained forward and parameter counts.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from lenbench.errors import LenbenchError
from lenbench.model import attention as attention_module
from lenbench.model import small_attention
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import PES, PEContext, parse_pe_spec
from lenbench.pe.absolute import RandomizedLearned, RandomizedSinusoidal, sinusoid_table
from lenbench.pe.bias import FIRE, KerplePower, RandomizedALiBi, T5Bias, alibi_slopes
from lenbench.pe.dape import DAPEFIRE
from lenbench.pe.registry import resolve_pes
from lenbench.pe.rotary import RandomizedRoPE, RoPE, RoPENTK, RoPEPI, YaRN

SCORE_MOD_PES = [
    "alibi",
    "kerple",
    "t5",
    "kerple-power",
    "fire",
    "randomized-alibi",
    "randomized-alibi:randomize=positions",
]
CPU = torch.device("cpu")


def ctx(
    heads: int = 4, dim: int = 32, causal: bool = True, train_length: int = 16, max_length: int = 64
) -> PEContext:
    return PEContext(dim=dim, heads=heads, causal=causal, train_length=train_length, max_length=max_length)


def build(spec: str, context: PEContext):
    from lenbench.pe import pe_class

    parsed = parse_pe_spec(spec)
    return pe_class(parsed)(context, **parsed.options)


# --- T5 ---------------------------------------------------------------------------------------

# n = i - j (query minus key); negative n is a future key. Hand-computed from the bucket formula
# (e = 16 causal / 8 bidirectional): e + floor(ln(n/e) / ln(128/e) * e), capped at the last bucket.
T5_CAUSAL = {0: 0, 1: 1, 7: 7, 8: 8, 64: 26, 127: 31, 128: 31, 1000: 31}
T5_BIDIRECTIONAL = {0: 0, 1: 1, 7: 7, 8: 8, 64: 14, 127: 15, 128: 15, 1000: 15}
T5_FUTURE = {1: 17, 7: 23, 8: 24, 64: 30, 127: 31, 128: 31, 1000: 31}  # bidirectional, n = -distance


@pytest.mark.parametrize("distance", [0, 1, 7, 8, 64, 127, 128, 1000])
def test_t5_buckets_both_directions(distance: int) -> None:
    causal, enc = T5Bias(ctx(causal=True)), T5Bias(ctx(causal=False))
    here, back, ahead = torch.tensor([2000]), torch.tensor([2000 - distance]), torch.tensor([2000 + distance])
    assert causal.bucket(here, back).item() == T5_CAUSAL[distance]
    assert causal.bucket(here, ahead).item() == 0  # causal: future keys clamp to distance 0
    assert enc.bucket(here, back).item() == T5_BIDIRECTIONAL[distance]
    assert enc.bucket(here, ahead).item() == (0 if distance == 0 else T5_FUTURE[distance])


# docs/pe.md §17, the rest of the table: n = i - j; negative n is a future key (bidirectional only).
T5_TABLE_CAUSAL = {16: 16, 17: 16, 20: 17, 23: 18, 24: 19, 31: 21, 32: 21, 45: 23, 46: 24, 63: 26, 90: 29, 91: 29}
T5_TABLE_BIDIRECTIONAL = {11: 8, 12: 9, 15: 9, 16: 10, 31: 11, 32: 12, 63: 13, -1: 17, -8: 24, -128: 31, -1000: 31}


def test_t5_buckets_match_the_reference_table() -> None:
    causal, enc = T5Bias(ctx(causal=True)), T5Bias(ctx(causal=False))
    here = torch.tensor([3000])
    for n in range(16):
        assert causal.bucket(here, here - n).item() == n
    for n, bucket in T5_TABLE_CAUSAL.items():
        assert causal.bucket(here, here - n).item() == bucket, n
    for n, bucket in T5_TABLE_BIDIRECTIONAL.items():
        assert enc.bucket(here, here - n).item() == bucket, n


def test_t5_bias_reads_the_shared_table() -> None:
    """``B = sqrt(d_head) T[bucket]`` (DAPE's NeoX scale; head dim 32 / 2 = 16 here, so x4)."""
    pe = T5Bias(ctx(heads=2, causal=False))
    assert T5Bias.shared and tuple(pe.table.shape) == (32, 2)
    with torch.no_grad():
        pe.table.copy_(torch.arange(64, dtype=torch.float32).view(32, 2))
    b = pe.bias(torch.arange(12), torch.arange(12))
    assert b[1, 11, 0].item() == 4 * (2 * 8 + 1)  # n = 11 -> bucket 8 + floor(8 ln(11/8) / ln 16) = 8, head 1
    assert b[0, 0, 11].item() == 4 * (2 * 24)  # n = -11 -> bucket 16 + 8
    unscaled = T5Bias(ctx(heads=2, causal=False), scale_by_head_dim=False)
    with torch.no_grad():
        unscaled.table.copy_(pe.table)
    assert unscaled.bias(torch.arange(12), torch.arange(12))[1, 11, 0].item() == 2 * 8 + 1
    with pytest.raises(LenbenchError):
        T5Bias(ctx(), num_buckets=64, max_distance=32)


# --- Kerple power ---------------------------------------------------------------------------------


def test_kerple_power_values_and_clamps() -> None:
    pe = KerplePower(ctx(heads=3, causal=True))
    with torch.no_grad():
        pe.r1.copy_(torch.tensor([[1.5, -3.0, 0.5]]))
        pe.r2.copy_(torch.tensor([[0.5, 3.0, -1.0]]))
    b = pe.bias(torch.arange(5), torch.arange(5))
    assert pe.r1[0].tolist() == pytest.approx([1.5, 0.01, 0.5])  # r1 >= 0.01
    assert pe.r2[0].tolist() == pytest.approx([0.5, 2.0, 0.01])  # 0.01 <= r2 <= 2
    assert b[0, 4, 0].item() == pytest.approx(-1.5 * 2.0)  # -1.5 * 4^0.5
    assert b[1, 3, 0].item() == pytest.approx(-0.01 * 9.0)  # -0.01 * 3^2
    assert b[2, 4, 1].item() == pytest.approx(-0.5 * 3**0.01)
    assert torch.all(b[:, torch.arange(5), torch.arange(5)] == 0)
    pe.r2.grad = None
    pe.bias(torch.arange(5), torch.arange(5)).sum().backward()  # 0^r2 at the diagonal: finite gradient
    assert torch.isfinite(pe.r2.grad).all() and torch.isfinite(pe.r1.grad).all()


def test_kerple_power_bidirectional_sides() -> None:
    pe = KerplePower(ctx(heads=1, dim=8, causal=False))
    with torch.no_grad():
        pe.r1.copy_(torch.tensor([[1.0], [2.0]]))
        pe.r2.copy_(torch.tensor([[1.0], [0.5]]))
    b = pe.bias(torch.arange(5), torch.arange(5))
    assert b[0, 4, 0].item() == pytest.approx(-4.0)  # past: -1 * 4^1
    assert b[0, 0, 4].item() == pytest.approx(-4.0 * 0.5 * 2)  # future: -2 * 4^0.5


# --- FIRE -----------------------------------------------------------------------------------------


def test_fire_normalisation_below_and_above_the_threshold() -> None:
    pe = FIRE(ctx(causal=True), l0=4)  # c = 0.1, L = |1 * 4|
    x = pe.features(torch.arange(12), torch.arange(12))
    eps = 1e-6
    assert x[2, 0].item() == pytest.approx(math.log(1.2) / (math.log(1.4) + eps))  # i = 2 < L: psi(L)
    assert x[4, 1].item() == pytest.approx(math.log(1.3) / (math.log(1.4) + eps))  # i = L
    assert x[10, 3].item() == pytest.approx(math.log(1.7) / (math.log(2.0) + eps))  # i = 10 > L: psi(i)
    assert x[10, 0].item() == pytest.approx(1.0, abs=1e-5) and x[3, 3].item() == 0.0
    assert x[2, 7].item() == 0.0  # causal: future keys at distance 0 (masked later)
    with torch.no_grad():
        pe.l_mult.fill_(-2.5)  # L = |-2.5 * 4| = 10
        pe.c.fill_(0.2)
    x = pe.features(torch.arange(12), torch.arange(12))
    assert x[10, 3].item() == pytest.approx(math.log(2.4) / (math.log(3.0) + eps))
    assert x[6, 0].item() == pytest.approx(math.log(2.2) / (math.log(3.0) + eps))
    assert x[11, 0].item() == pytest.approx(math.log(3.2) / (math.log(3.2) + eps))
    long = FIRE(ctx(causal=True), l0=4).features(torch.arange(3000), torch.arange(3000))
    assert long.min().item() >= 0.0 and long.max().item() <= 1.0  # interpolated into [0, 1]


def test_fire_bidirectional_is_signed_and_bounded() -> None:
    pe = FIRE(ctx(causal=False), l0=4)
    x = pe.features(torch.arange(8), torch.arange(8))
    assert x[3, 1].item() == pytest.approx(math.log(1.2) / (math.log(1.4) + 1e-6))
    assert x[1, 3].item() == pytest.approx(-math.log(1.2) / (math.log(1.4) + 1e-6))
    assert x[0, 6].item() == pytest.approx(-math.log(1.6) / (math.log(1.6) + 1e-6))  # normalised by j = 6
    assert x.abs().max().item() <= 1.0


def test_fire_bias_through_a_hand_set_mlp() -> None:
    pe = FIRE(ctx(heads=2, causal=True), mlp_width=1, l0=4)
    with torch.no_grad():
        pe.fc1.weight.fill_(1.0)
        pe.fc1.bias.fill_(-0.1)
        pe.fc2.weight.copy_(torch.tensor([[1.0], [2.0]]))
        pe.fc2.bias.copy_(torch.tensor([0.0, 0.5]))
    b = pe.bias(torch.arange(11), torch.arange(11))
    x = math.log(1.7) / (math.log(2.0) + 1e-6)  # (i, j) = (10, 3)
    assert b[0, 10, 3].item() == pytest.approx(x - 0.1)
    assert b[1, 10, 3].item() == pytest.approx(2 * (x - 0.1) + 0.5)
    assert b[1, 3, 3].item() == pytest.approx(0.5)  # relu(0 - 0.1) = 0


def test_dape_fire_uses_a_leaky_fire_base() -> None:
    pe = DAPEFIRE(ctx(heads=2))
    assert isinstance(pe.base, FIRE) and pe.base.negative_slope == 0.01 and FIRE.negative_slope == 0.0
    z = torch.tensor([-1.0, 2.0])
    assert pe.base.act(z).tolist() == pytest.approx([-0.01, 2.0])


def test_dape_fire_passes_l0_to_its_fire() -> None:
    from lenbench.pe.dape import DAPEV2FIRE

    assert DAPEFIRE(ctx(heads=2)).base.l0 == 512.0  # FIRE's default
    assert DAPEFIRE(ctx(heads=2), l0=64).base.l0 == 64.0  # DAPE's NeoX LM runs
    assert DAPEV2FIRE(ctx(heads=2), l0=256).base.l0 == 256.0
    with pytest.raises(LenbenchError):
        DAPEFIRE(ctx(heads=2), l0=0)


# --- RoPE scaling -----------------------------------------------------------------------------------


def inv_freq_at(pe: RoPE, n: int) -> tuple[torch.Tensor, float]:
    angles, scale = pe.angles(torch.tensor([1]), n)
    return angles[0], scale


@pytest.mark.parametrize(
    "length, s, k_low, k_high, mscale",
    [(512, 16, 3, 16, 1.2773), (128, 64, 0, 11, 1.4159), (2048, 4, 8, 21, 1.1386)],  # docs/pe.md §17
)
def test_yarn_frequencies_and_mscale(length: int, s: int, k_low: int, k_high: int, mscale: float) -> None:
    yarn = YaRN(ctx(heads=1, dim=64, train_length=length))
    inv, scale = inv_freq_at(yarn, s * length)
    theta = torch.tensor([10000.0 ** (-2 * k / 64) for k in range(32)])
    gamma = torch.tensor([min(max((k - k_low) / (k_high - k_low), 0.0), 1.0) for k in range(32)])
    expected = theta * (1 - gamma) + theta / s * gamma
    assert torch.allclose(inv, expected, rtol=1e-5)
    assert scale == pytest.approx(mscale, abs=1e-4)
    ratio = inv / theta
    assert torch.allclose(ratio[: k_low + 1], torch.ones(k_low + 1))
    assert torch.allclose(ratio[k_high:], torch.full((32 - k_high,), 1 / s))
    # cos and sin both scaled: at position 0 the rotation is the identity times m, so q.k scales by m^2
    q = torch.randn(1, 1, 1, 64)
    qr, kr = yarn.rotate(q, q, torch.tensor([0]), torch.tensor([0]))
    qr_long, kr_long = yarn.rotate(q.expand(1, 1, s * length, 64), q.expand(1, 1, s * length, 64),
                                   torch.arange(s * length), torch.arange(s * length))
    assert torch.allclose(qr, q) and torch.allclose(qr_long[..., :1, :], mscale * q, rtol=1e-3)
    assert (qr_long[..., 0, :] * kr_long[..., 0, :]).sum().item() == pytest.approx(
        mscale**2 * (q * q).sum().item(), rel=1e-3
    )
    # at every position both cos and sin carry m: the rotation is m times a rotation (norm m |q|), and
    # q.k is m^2 times the plain rotary dot product at YaRN's frequencies (only q_pos - k_pos matters)
    assert torch.allclose(qr_long.norm(dim=-1), mscale * q.norm(dim=-1).expand(1, 1, s * length), rtol=1e-4)
    plain = RoPE(ctx(heads=1, dim=64, train_length=length))
    plain.inv_freq = inv
    q1, k1 = plain.rotate(q.expand(1, 1, s * length, 64), q.expand(1, 1, s * length, 64), torch.arange(s * length),
                          torch.arange(s * length))
    dots, plain_dots = (qr_long[0, 0, 100] * kr_long[0, 0, 37]).sum(), (q1[0, 0, 100] * k1[0, 0, 37]).sum()
    assert dots.item() == pytest.approx(mscale**2 * plain_dots.item(), rel=1e-4, abs=1e-4)


def test_yarn_ramp_blends_pairs_1_to_3_at_l128() -> None:
    inv, _ = inv_freq_at(YaRN(ctx(heads=1, dim=64, train_length=128)), 64 * 128)
    theta = torch.tensor([10000.0 ** (-2 * k / 64) for k in range(4)])
    assert (inv[:4] / theta).tolist() == pytest.approx([1.0, 0.91, 0.82, 0.73], abs=0.005)


@pytest.mark.parametrize("cls", [YaRN, RoPEPI, RoPENTK])
def test_scaled_rope_is_exactly_rope_up_to_the_training_length(cls: type[RoPE]) -> None:
    torch.manual_seed(0)
    scaled, rope = cls(ctx(heads=2, dim=32, train_length=16)), RoPE(ctx(heads=2, dim=32, train_length=16))
    for n in (5, 16):
        q, k = torch.randn(2, 2, n, 16), torch.randn(2, 2, n, 16)
        pos = torch.arange(n)
        for a, b in zip(scaled.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos), strict=True):
            assert torch.equal(a, b)
    q = torch.randn(1, 2, 40, 16)
    assert not torch.allclose(scaled.rotate(q, q, torch.arange(40), torch.arange(40))[0],
                              rope.rotate(q, q, torch.arange(40), torch.arange(40))[0])


def test_rope_pi_divides_positions_by_s() -> None:
    pe = RoPEPI(PEContext(dim=2, heads=1, causal=True, train_length=4, max_length=8))
    x = torch.tensor([[[[1.0, 0.0]]]]).expand(1, 1, 8, 2)
    out, _ = pe.rotate(x, x, torch.arange(8), torch.arange(8))  # n = 8 -> s = 2; theta_0 = 1
    assert torch.allclose(out[0, 0, 4], torch.tensor([math.cos(2.0), math.sin(2.0)]), atol=1e-6)
    inv, _ = inv_freq_at(RoPEPI(ctx(heads=1, dim=64, train_length=512)), 8192)
    assert inv[5].item() == pytest.approx(10000.0 ** (-10 / 64) / 16, rel=1e-6)


def test_rope_ntk_base() -> None:
    pe = RoPENTK(ctx(heads=1, dim=64, train_length=512))
    inv, scale = inv_freq_at(pe, 16 * 512)  # s = 16: base' = 1e4 * 16^(64/62) = 174969.6 (docs/pe.md §17)
    assert scale == 1.0
    for k in (1, 10, 31):
        assert inv[k].item() == pytest.approx(174969.6 ** (-2 * k / 64), rel=1e-5)
    with pytest.raises(LenbenchError):
        RoPENTK(PEContext(dim=2, heads=1, causal=True, train_length=4, max_length=8))


# --- randomized -------------------------------------------------------------------------------------


def test_randomized_positions_sorted_distinct_in_range_and_resampled() -> None:
    pe = RandomizedSinusoidal(ctx(causal=False), max_position=50)
    draws = [pe.positions(30, CPU) for _ in range(20)]
    for pos in draws:
        assert pos.shape == (30,) and pos.dtype == torch.long
        assert torch.all(pos[1:] > pos[:-1])  # sorted and distinct
        assert pos.min().item() >= 0 and pos.max().item() < 50
    assert not torch.equal(draws[0], draws[1])  # a fresh draw per call (forward)
    assert max(int(p.max()) for p in draws) >= 45 and any(int(p[0]) > 0 for p in draws)
    pe.eval()
    assert not torch.equal(pe.positions(30, CPU), torch.arange(30))  # RPE samples at test time too
    x = torch.zeros(1, 30, 32)
    pos = pe.positions(30, CPU)
    assert torch.allclose(pe.embed(x, pos)[0], sinusoid_table(pos, 32))


def test_randomized_policies() -> None:
    assert RandomizedRoPE(ctx(causal=True, train_length=16)).max_position == 64  # 4 x train length (LM)
    assert RandomizedRoPE(ctx(causal=False)).max_position == 2048  # CHE
    pe = RandomizedRoPE(ctx(causal=True), max_position=20)
    assert torch.equal(pe.positions(21, CPU), torch.arange(21))  # n > L: fall back to 0..n-1
    with pytest.raises(LenbenchError, match="max_position"):
        RandomizedRoPE(ctx(), max_position=20, overflow="error").positions(21, CPU)
    with pytest.raises(LenbenchError):
        RandomizedRoPE(ctx(), overflow="clamp")
    fixed = RandomizedRoPE(ctx(), max_position=20, eval_random=False).eval()
    assert torch.equal(fixed.positions(10, CPU), torch.arange(10))
    learned = RandomizedLearned(ctx(dim=8), max_position=20)
    assert learned.table.num_embeddings == 20
    learned.embed(torch.zeros(1, 20, 8), learned.positions(20, CPU))
    with pytest.raises(LenbenchError, match="max_position"):
        learned.embed(torch.zeros(1, 21, 8), learned.positions(21, CPU))
    # The CHE profile's pe_defaults reach the randomized PEs only (FIRE and DAPE widths stay theirs).
    specs = resolve_pes("randomized-rope,fire,dape-fire", {"max_position": 2048, "hidden": 64})
    assert [s.options for s in specs] == [{"max_position": 2048}, {}, {"hidden": 64}]


def test_randomized_rope_rotates_by_the_sampled_positions() -> None:
    torch.manual_seed(0)
    pe, rope = RandomizedRoPE(ctx(), max_position=100), RoPE(ctx())
    q = torch.randn(1, 4, 10, 8)
    pos = pe.positions(10, CPU)
    assert torch.equal(pe.rotate(q, q, pos, pos)[0], rope.rotate(q, q, pos, pos)[0])


def test_randomized_alibi_by_hand() -> None:
    m = alibi_slopes(4)[0].item()  # 1/4
    pe = RandomizedALiBi(ctx(causal=True), randomize="positions", max_position=100)
    pos = torch.tensor([2, 9, 30])
    b = pe.bias(pos, pos)
    assert b[0, 2, 1].item() == pytest.approx(-m * 21) and b[0, 1, 0].item() == pytest.approx(-m * 7)
    enc = RandomizedALiBi(ctx(causal=False), max_position=100)  # randomize="distances", RPE's, by default
    enc.sample = torch.tensor([0, 3, 7, 20])  # s_0 = 0 < s_1 < s_2 < s_3 (as positions(4) would draw)
    b = enc.bias(torch.arange(4), torch.arange(4))
    assert b[0, 3, 0].item() == pytest.approx(m * (-20 + 0.5))
    assert b[0, 0, 2].item() == pytest.approx(m * -7)
    assert b[0, 2, 1].item() == pytest.approx(m * (-3 + 0.5))
    for _ in range(5):
        assert torch.equal(enc.positions(30, CPU), torch.arange(30))
        s = enc.sample
        assert s[0].item() == 0 and torch.all(s[1:] > s[:-1]) and s[1].item() >= 1 and s[-1].item() < 100


# --- score_mod == materialized bias ------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", SCORE_MOD_PES)
def test_score_mod_matches_materialized_bias(spec: str, causal: bool) -> None:
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    n, heads = 40, 4
    pe = build(spec + (":l0=16" if spec == "fire" else ""), ctx(heads=heads, causal=causal))
    pos = pe.positions(n, CPU)
    bias = pe.bias(pos, pos)
    mod = pe.score_mod()
    assert mod is not None
    h, q, kv = torch.arange(heads)[:, None, None], torch.arange(n)[None, :, None], torch.arange(n)[None, None, :]
    assert torch.allclose(mod(torch.zeros(()), torch.zeros((), dtype=torch.long), h, q, kv), bias, atol=1e-6)
    # and inside FlexAttention (eager, CPU, no_grad) against SDPA with the materialized mask
    qkv = [torch.randn(1, heads, n, 8) for _ in range(3)]
    mask, block_mask = bias, None
    if causal:
        mask = bias.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        block_mask = flex.create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device="cpu")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_attention(*qkv, score_mod=mod, block_mask=block_mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(*qkv, attn_mask=mask[None]), atol=1e-5)


# --- whole-model checks, every registered PE ------------------------------------------------------
#
# The lists below are PES.names(): a PE registered later is covered by these tests without an edit
# (the parameter-count table asserts it has an entry).

ALL_PES = PES.names()


def textbook_attention(att: Attention, x: torch.Tensor) -> torch.Tensor:
    """Unblocked reference: full ``[B, H, N, N]`` logits ``qk^T/sqrt(d)``, then the PE's rotate and
    its scores hook or bias, the causal mask and a plain softmax (docs/architecture.md, hooks)."""
    b, n, _ = x.shape
    q, k, v = att.qkv(x).view(b, n, 3, att.heads, att.head_dim).permute(2, 0, 3, 1, 4)
    pe = att.pe
    pos = pe.positions(n, x.device)
    q, k = pe.rotate(q, k, pos, pos)
    s = q @ k.transpose(-1, -2) / math.sqrt(att.head_dim)
    if type(pe).has_hook("scores"):
        s = pe.scores(s, q, k, pos, pos)
    elif type(pe).has_hook("bias"):
        s = s + pe.bias(pos, pos)
    if att.causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.softmax(s, -1) @ v
    return att.out(y.transpose(1, 2).reshape(b, n, att.dim))


def backends_of(pe_type: type) -> list[str]:
    """The backends that apply to a PE: every bias backend for a static bias, blocked explicit
    attention for a scores hook, SDPA otherwise (compiled Flex is covered by the score_mod test)."""
    if pe_type.has_hook("scores"):
        return ["explicit"]
    small = ["small"] if small_attention.available() else []
    if pe_type.has_hook("bias"):
        return ["auto", "sdpa_bias", "blocked_bias", *small, "explicit"]
    return ["auto", *small, "explicit"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", ALL_PES)
def test_backends_agree(monkeypatch: pytest.MonkeyPatch, spec: str, causal: bool) -> None:
    """Every backend of every PE against the textbook reference: outputs to 1e-5, gradients to 1e-4,
    with query blocks of 5 (the last one short) in the blocked backends."""
    n, heads = 19, 4  # 19 > 2 x train length 8: the scaled RoPEs are active
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=heads, causal=causal, train_length=8,
                      max_length=64)
    torch.manual_seed(0)
    pe = build_pes(cfg, parse_pe_spec(spec))[0]
    with torch.no_grad():  # CoPE's zero-initialised tables would hide its position term
        for p in pe.parameters():
            if not p.any():
                p.normal_(std=0.5)
    monkeypatch.setattr(attention_module, "BIAS_BLOCK", 5)
    width = max(heads, int(getattr(pe, "hidden", 0)) + 2 * heads)
    monkeypatch.setattr(attention_module, "BLOCK_BUDGET", 2 * n * width * 5)
    x = torch.randn(2, n, 32)

    def run(attn: Attention, reference: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(1)  # the same random positions for every backend
        attn.zero_grad()
        y = textbook_attention(attn, x) if reference else attn(x)
        y.square().sum().backward()  # before the next forward: Kerple clamps its parameters in place
        return y.detach(), {k: p.grad.clone() for k, p in attn.named_parameters() if p.grad is not None}

    ref = Attention(32, heads, pe, causal, backend="explicit")
    y_ref, g_ref = run(ref, reference=True)
    for backend in backends_of(type(pe)):
        att = Attention(32, heads, pe, causal, backend=backend)
        att.load_state_dict(ref.state_dict())
        y, g = run(att)
        assert backend == "auto" or att.last_backend == backend
        assert torch.allclose(y, y_ref, atol=1e-5), (spec, backend, att.last_backend)
        assert g.keys() == g_ref.keys()
        for key, grad in g.items():
            assert torch.allclose(grad, g_ref[key], atol=1e-4), (spec, backend, key)


def test_backends_test_can_fail() -> None:
    """The textbook reference differs from attention that drops the PE term (the check has teeth)."""
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=True, train_length=8)
    torch.manual_seed(0)
    pe = build_pes(cfg, parse_pe_spec("kerple"))[0]
    att = Attention(32, 4, pe, True)
    x = torch.randn(2, 19, 32)
    plain = F.scaled_dot_product_attention(
        *att.qkv(x).view(2, 19, 3, 4, 8).permute(2, 0, 3, 1, 4), is_causal=True
    )
    assert not torch.allclose(att.out(plain.transpose(1, 2).reshape(2, 19, 32)), textbook_attention(att, x), atol=1e-3)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", ALL_PES)
def test_every_pe_runs_4x_past_its_training_length(spec: str, causal: bool) -> None:
    """One training step at length 8 (gradients reach the PE), then evaluation at 32 = 4 x 8."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=2, heads=4, causal=causal, prenorm=causal,
                      train_length=8, max_length=32)
    model = Transformer(cfg, parse_pe_spec(spec))
    model(torch.randint(0, 5, (2, 8))).square().mean().backward()
    pe_params = [p for blk in model.blocks for p in blk.attn.pe.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pe_params), spec
    with torch.no_grad():
        out = model.eval()(torch.randint(0, 5, (2, 32)))
    assert out.shape == (2, 32, 3) and torch.isfinite(out).all(), spec


def pe_parameter_formulas(causal: bool, layers: int, heads: int, dim: int, train_length: int) -> dict[str, int]:
    """Parameters each registered PE adds to a model, from its formula (docstrings; docs/pe.md, docs/dape.md)."""
    h, dh, sides = heads, dim // heads, 1 if causal else 2
    kerple = 2 * sides * h  # r1, r2 per head (and per side in the encoder)
    fire = 1 * 32 + 32 + 32 * h + h + 1 + 1  # Linear(1, 32), Linear(32, H), c, L multiplier
    mlp = 2 * h * 32 + 32 + 32 * h + h  # DAPE: Linear(2H, 32), Linear(32, H)
    conv = 2 * h * 32 * 3 + 32 + 32 * h * 3 + h  # DAPE V2: Conv(2H -> 32, 1x3), Conv(32 -> H, 1x3)
    randomized_l = 4 * train_length if causal else 2048
    per_layer = {
        "nope": 0, "sinusoidal": 0, "rope": 0, "rope-pi": 0, "rope-ntk": 0, "yarn": 0,
        "randomized-sinusoidal": 0, "randomized-rope": 0, "alibi": 0, "randomized-alibi": 0,
        "kerple": kerple, "kerple-power": kerple, "fire": fire,
        "cope": sides * dh * 64, "transformer-xl": 2 * h * dh + dim * h * dh,
        "randomized-relative": 2 * h * dh + dim * h * dh,
        "dape": mlp + kerple, "dape-kerple": mlp + kerple, "dape-alibi": mlp, "dape-fire": mlp + fire,
        "dape-v2-kerple": conv + kerple, "dape-v2-alibi": conv, "dape-v2-fire": conv + fire,
    }
    shared = {"learned": 64 * dim, "randomized-learned": randomized_l * dim, "t5": 32 * h}  # one for all layers
    return {**{k: layers * v for k, v in per_layer.items()}, **shared}


@pytest.mark.parametrize("causal", [True, False])
def test_parameter_counts_follow_the_formulas(causal: bool) -> None:
    layers, heads, dim, train_length = 2, 4, 32, 16

    def count(spec: str) -> int:
        cfg = ModelConfig(vocab_size=5, out_size=3, dim=dim, layers=layers, heads=heads, causal=causal,
                          train_length=train_length, max_length=64)
        return Transformer(cfg, parse_pe_spec(spec)).num_parameters()

    formulas = pe_parameter_formulas(causal, layers, heads, dim, train_length)
    assert sorted(formulas) == sorted(ALL_PES)  # every registered PE has a formula
    base = count("nope")
    for spec, expected in formulas.items():
        assert count(spec) - base == expected, spec
    assert count("randomized-learned:max_position=100") - base == 100 * dim
    add_residual = heads * 16 + 16 + 16 * heads + heads  # Linear(H, 16), Linear(16, H)
    kerple = 2 * (1 if causal else 2) * heads
    assert count("dape-kerple:variant=add_residual,hidden=16") - base == layers * (add_residual + kerple)
    assert count("dape-v2-alibi:kernel=5,hidden=7") - base == layers * (2 * heads * 7 * 5 + 7 + 7 * heads * 5 + heads)
