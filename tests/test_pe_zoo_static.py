"""The static part of the PE zoo against hand-computed values (pe_zoo.md §6, §7, §9, §10, §12, §13, §17).

T5 buckets, Kerple-power, FIRE, YaRN / PI / NTK, randomized PEs, score_mod = materialized bias,
backend agreement, a 4x-longer-than-trained forward and parameter counts for every new PE.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from lenbench.errors import LenbenchError
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import PEContext, parse_pe_spec
from lenbench.pe.absolute import RandomizedLearned, RandomizedSinusoidal, sinusoid_table
from lenbench.pe.bias import FIRE, KerplePower, RandomizedALiBi, T5Bias, alibi_slopes
from lenbench.pe.dape import DAPEFIRE
from lenbench.pe.registry import resolve_pes
from lenbench.pe.rotary import RandomizedRoPE, RoPE, RoPENTK, RoPEPI, YaRN

NEW_PES = [
    "randomized-sinusoidal",
    "randomized-learned",
    "randomized-rope",
    "randomized-alibi",
    "randomized-alibi:randomize=distances",
    "yarn",
    "rope-pi",
    "rope-ntk",
    "t5",
    "kerple-power",
    "fire",
    "dape-fire",
]
SCORE_MOD_PES = ["t5", "kerple-power", "fire", "randomized-alibi", "randomized-alibi:randomize=distances"]
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


def test_t5_bias_reads_the_shared_table() -> None:
    pe = T5Bias(ctx(heads=2, causal=False))
    assert T5Bias.shared and tuple(pe.table.shape) == (32, 2)
    with torch.no_grad():
        pe.table.copy_(torch.arange(64, dtype=torch.float32).view(32, 2))
    b = pe.bias(torch.arange(12), torch.arange(12))
    assert b[1, 11, 0].item() == 2 * 8 + 1  # n = 11 -> bucket 8 + floor(8 ln(11/8) / ln 16) = 8, head 1
    assert b[0, 0, 11].item() == 2 * 24  # n = -11 -> bucket 16 + 8
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


# --- RoPE scaling -----------------------------------------------------------------------------------


def inv_freq_at(pe: RoPE, n: int) -> tuple[torch.Tensor, float]:
    angles, scale = pe.angles(torch.tensor([1]), n)
    return angles[0], scale


@pytest.mark.parametrize(
    "length, s, k_low, k_high, mscale",
    [(512, 16, 3, 16, 1.2773), (128, 64, 0, 11, 1.4159), (2048, 4, 8, 21, 1.1386)],  # pe_zoo.md §17
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
    inv, scale = inv_freq_at(pe, 16 * 512)  # s = 16: base' = 1e4 * 16^(64/62) = 174969.6 (pe_zoo.md §17)
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
    pe = RandomizedALiBi(ctx(causal=True), max_position=100)
    pos = torch.tensor([2, 9, 30])
    b = pe.bias(pos, pos)
    assert b[0, 2, 1].item() == pytest.approx(-m * 21) and b[0, 1, 0].item() == pytest.approx(-m * 7)
    enc = RandomizedALiBi(ctx(causal=False), randomize="distances", max_position=100)
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


# --- whole-model checks -------------------------------------------------------------------------------


def make_pair(spec: str, causal: bool) -> tuple[Attention, Attention]:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=causal, train_length=8, max_length=64)
    pe = build_pes(cfg, parse_pe_spec(spec))[0]
    fast = Attention(32, 4, pe, causal, backend="auto")
    ref = Attention(32, 4, pe, causal, backend="explicit")
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", NEW_PES)
def test_backends_agree(spec: str, causal: bool) -> None:
    torch.manual_seed(0)
    fast, ref = make_pair(spec, causal)
    x = torch.randn(2, 19, 32)  # 19 > 2 x train length: the scaled RoPEs are active

    def run(attn: Attention) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(1)  # the same random positions for both backends
        for p in attn.parameters():
            p.grad = None
        y = attn(x)
        y.square().sum().backward()
        return y, [p.grad.clone() for p in attn.parameters() if p.grad is not None]

    (y_fast, g_fast), (y_ref, g_ref) = run(fast), run(ref)
    assert ref.last_backend == "explicit"
    assert torch.allclose(y_fast, y_ref, atol=1e-5), (spec, fast.last_backend)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_every_new_pe_runs_4x_past_its_training_length(causal: bool) -> None:
    for spec in NEW_PES:
        cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=2, heads=4, causal=causal, prenorm=causal,
                          train_length=8, max_length=32)
        model = Transformer(cfg, parse_pe_spec(spec)).eval()
        with torch.no_grad():
            out = model(torch.randint(0, 5, (2, 32)))
        assert out.shape == (2, 32, 3) and torch.isfinite(out).all(), spec


def test_parameter_counts_follow_the_formulas() -> None:
    layers, heads, dim = 2, 4, 32

    def count(spec: str, causal: bool) -> int:
        cfg = ModelConfig(vocab_size=5, out_size=3, dim=dim, layers=layers, heads=heads, causal=causal, max_length=64)
        return Transformer(cfg, parse_pe_spec(spec)).num_parameters()

    fire = 1 * 32 + 32 + 32 * heads + heads + 1 + 1  # Linear(1,32), Linear(32,H), c, L multiplier
    dape = 2 * heads * 32 + 32 + 32 * heads + heads  # Linear(2H, 32), Linear(32, H)
    for causal in (True, False):
        base = count("nope", causal)
        sides = 1 if causal else 2
        assert count("fire", causal) - base == layers * fire  # one FIRE per layer
        assert count("dape-fire", causal) - base == layers * (fire + dape)
        assert count("t5", causal) - base == 32 * heads  # one table shared by all layers
        assert count("kerple-power", causal) - base == layers * 2 * sides * heads
        assert count("randomized-learned:max_position=100", causal) - base == 100 * dim
        for spec in ("randomized-sinusoidal", "randomized-rope", "randomized-alibi", "yarn", "rope-pi", "rope-ntk"):
            assert count(spec, causal) == base, spec
