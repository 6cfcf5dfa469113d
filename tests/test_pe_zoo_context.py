"""Contextual PEs (``scores`` hook): DAPE V1/V2, CoPE, Transformer-XL against hand-computed values
(docs/dape.md §1-2, docs/pe.md §14-15), causality of every registered PE, and query-blocked attention."""

from __future__ import annotations

import math

import pytest
import torch

from lenbench.errors import LenbenchError
from lenbench.model import attention as attention_module
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import PES, PEContext, parse_pe_spec, validate_spec
from lenbench.pe.contextual import CoPE, TransformerXL
from lenbench.pe.dape import DAPEKerple, DAPEV2Kerple

NEW_PES = ["cope", "transformer-xl", "dape-v2-kerple", "dape-v2-alibi", "dape-v2-fire"]
SCORES_PES = [
    *NEW_PES,
    "dape",
    "dape-alibi",
    "dape-fire",
    "dape-kerple:variant=concat",
    "dape-kerple:variant=add_residual",
]


def lrelu(x: float) -> float:
    return x if x > 0 else 0.01 * x


def ctx(heads: int, dim: int, causal: bool = True) -> PEContext:
    return PEContext(dim=dim, heads=heads, causal=causal, train_length=16, max_length=64)


def set_(param: torch.Tensor, values: list) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=param.dtype).view_as(param))


# --- DAPE V1 (docs/dape.md §1.2, §1.4) -------------------------------------------------------------


def one_head_dape(variant: str) -> DAPEKerple:
    """1 head, D = 2, Kerple r1 = r2 = 1 so B(i, j) = -log(1 + (i - j)) on past keys, 0 elsewhere."""
    pe = DAPEKerple(ctx(1, 2), variant=variant, hidden=2)
    set_(pe.base.r1, [[1.0]])
    set_(pe.base.r2, [[1.0]])
    set_(pe.fc1.weight, [[1.0, 2.0], [-1.0, 0.5]] if variant != "add_residual" else [[1.0], [-1.0]])
    set_(pe.fc1.bias, [0.1, -0.2])
    set_(pe.fc2.weight, [[0.5, -1.0]])
    set_(pe.fc2.bias, [0.3])
    return pe


S_HAND = [[0.5, 3.0], [-1.0, 2.0]]  # S[0, 1] is a future entry


def hand_bias(i: int, j: int) -> float:
    return -math.log(1 + (i - j)) if j <= i else 0.0


@pytest.mark.parametrize("variant", ["concat_residual", "concat", "add_residual"])
def test_dape_v1_variants_by_hand(variant: str) -> None:
    pe = one_head_dape(variant)
    s = torch.tensor(S_HAND).view(1, 1, 2, 2)
    pos = torch.arange(2)
    out = pe.scores(s, s, s, pos, pos)[0, 0]
    for i in range(2):
        for j in range(2):
            sv, bv = S_HAND[i][j], hand_bias(i, j)
            if variant == "add_residual":  # S + B + f(S + B), f: 1 -> 2 -> 1
                x = sv + bv
                f = 0.5 * lrelu(x + 0.1) - lrelu(-x - 0.2) + 0.3
            else:  # f([S; B]), W1 = [[1, 2], [-1, 0.5]]
                f = 0.5 * lrelu(sv + 2 * bv + 0.1) - lrelu(-sv + 0.5 * bv - 0.2) + 0.3
            expected = sv + f if variant == "concat" else sv + bv + f
            assert out[i, j].item() == pytest.approx(expected, abs=1e-6), (variant, i, j)
    if variant == "concat_residual":  # one entry worked on paper: -1 - ln 2 + f = -1.858005
        assert out[1, 0].item() == pytest.approx(-1.8580051, abs=1e-6)


def test_dape_variants_differ() -> None:
    s = torch.tensor(S_HAND).view(1, 1, 2, 2)
    pos = torch.arange(2)
    res, cat, add = (one_head_dape(v).scores(s, s, s, pos, pos) for v in ("concat_residual", "concat", "add_residual"))
    b = torch.tensor([[hand_bias(i, j) for j in range(2)] for i in range(2)])
    assert torch.allclose(res - b, cat, atol=1e-6)  # the residual B is the only difference
    assert not torch.allclose(res, add, atol=1e-3)
    with pytest.raises(LenbenchError, match="variant"):
        DAPEKerple(ctx(1, 2), variant="concatenate")


@pytest.mark.parametrize("name", ["dape", "dape-alibi", "dape-fire", *NEW_PES])
def test_per_layer_instances_with_own_weights(name: str) -> None:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=3, heads=4, causal=True)
    pes = build_pes(cfg, parse_pe_spec(name))
    assert len({id(p) for p in pes}) == 3
    params = [dict(p.named_parameters()) for p in pes]
    for key in params[0]:
        assert len({params[layer][key].data_ptr() for layer in range(3)}) == 3, key


# --- DAPE V2 (docs/dape.md §2) ---------------------------------------------------------------------


def padded(row: list[float], j: int) -> float:
    return row[j] if 0 <= j < len(row) else 0.0


def test_dape_v2_conv_by_hand() -> None:
    """h = 1, D = 1, k = 3: one row, convolution over keys with zero padding and zeroed future."""
    pe = DAPEV2Kerple(ctx(1, 2), kernel=3, hidden=1)
    set_(pe.base.r1, [[1.0]])
    set_(pe.base.r2, [[1.0]])
    a, c, e = [0.5, -1.0, 2.0], [1.0, 0.25, -0.5], [1.5, -0.5, 0.25]
    set_(pe.conv1.weight, [a, c])
    set_(pe.conv1.bias, [0.1])
    set_(pe.conv2.weight, [e])
    set_(pe.conv2.bias, [-0.3])
    n = 4
    torch.manual_seed(0)
    s = torch.randn(1, 1, n, n)
    pos = torch.arange(n)
    out = pe.scores(s, s, s, pos, pos)[0, 0]
    for i in range(n):
        zs = [s[0, 0, i, j].item() if j <= i else 0.0 for j in range(n)]  # future zeroed
        zb = [hand_bias(i, j) if j <= i else 0.0 for j in range(n)]
        # hidden activations over the keys plus k//2 = 1 zero-extended column (DAPE V2 section of dape.py)
        hidden = [lrelu(0.1 + sum(a[t] * padded(zs, j + t - 1) + c[t] * padded(zb, j + t - 1) for t in range(3)))
                  for j in range(n + 1)]
        for j in range(i + 1):
            f = -0.3 + sum(e[t] * padded(hidden, j + t - 1) for t in range(3))
            expected = s[0, 0, i, j].item() + hand_bias(i, j) + f
            assert out[i, j].item() == pytest.approx(expected, abs=1e-5), (i, j)


@pytest.mark.parametrize("causal", [True, False])
def test_dape_v2_kernel_1_equals_v1_on_visible_entries(causal: bool) -> None:
    torch.manual_seed(0)
    v1 = DAPEKerple(ctx(4, 32, causal), hidden=8)
    v2 = DAPEV2Kerple(ctx(4, 32, causal), kernel=1, hidden=8)
    v2.base.load_state_dict(v1.base.state_dict())
    with torch.no_grad():
        v2.conv1.weight.copy_(v1.fc1.weight[:, :, None, None])
        v2.conv1.bias.copy_(v1.fc1.bias)
        v2.conv2.weight.copy_(v1.fc2.weight[:, :, None, None])
        v2.conv2.bias.copy_(v1.fc2.bias)
    s, pos = torch.randn(2, 4, 7, 7), torch.arange(7)
    a, b = v1.scores(s, s, s, pos, pos), v2.scores(s, s, s, pos, pos)
    visible = torch.ones(7, 7, dtype=torch.bool).tril() if causal else torch.ones(7, 7, dtype=torch.bool)
    assert torch.allclose(a[..., visible], b[..., visible], atol=1e-5)
    if causal:  # the zeroed future inputs change only masked entries
        assert not torch.allclose(a[..., ~visible], b[..., ~visible], atol=1e-3)


def test_dape_v2_options_checked() -> None:
    with pytest.raises(LenbenchError, match="odd"):
        DAPEV2Kerple(ctx(4, 32), kernel=2)
    with pytest.raises(LenbenchError, match="odd"):
        validate_spec(parse_pe_spec("dape-v2-alibi:kernel=4"))
    validate_spec(parse_pe_spec("dape-v2-kerple:kernel=5,hidden=8,zero_future=false"))
    with pytest.raises(LenbenchError, match="unknown option"):
        validate_spec(parse_pe_spec("dape-v2-kerple:variant=concat"))


# --- causality of every registered PE ----------------------------------------------------------


def future_leak(spec: str, n: int = 12, cut: int = 6) -> float:
    """Max change of the logits at positions < cut when the tokens at positions >= cut change."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=7, out_size=5, dim=32, layers=2, heads=4, dropout=0.0, causal=True,
                      train_length=n, max_length=64)
    model = Transformer(cfg, parse_pe_spec(spec)).eval()
    ids = torch.randint(0, 7, (2, n))
    other = ids.clone()
    other[:, cut:] = (ids[:, cut:] + 1 + torch.randint(0, 6, (2, n - cut))) % 7
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(ids)
        torch.manual_seed(1)
        b = model(other)
    assert not torch.allclose(a[:, cut:], b[:, cut:], atol=1e-6)  # the change is visible downstream
    return (a[:, :cut] - b[:, :cut]).abs().max().item()


def future_logit_leak(spec: str) -> float:
    """Max change of a causal PE's visible logits (j <= i) when only the future entries of S change."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=True, train_length=16)
    pe = build_pes(cfg, parse_pe_spec(spec))[0]
    n = 9
    s, q, k = torch.randn(2, 4, n, n), torch.randn(2, 4, n, 8), torch.randn(2, 4, n, 8)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    pos = torch.arange(n)
    a = pe.scores(s, q, k, pos, pos)
    b = pe.scores(s + 5.0 * torch.randn_like(s) * future, q, k, pos, pos)
    return (a - b)[..., ~future].abs().max().item()


@pytest.mark.parametrize("name", SCORES_PES)
def test_visible_logits_ignore_future_entries(name: str) -> None:
    """The PE-level causality check: the scores hook's past logits do not read future logits."""
    assert future_logit_leak(name) < 1e-6


@pytest.mark.parametrize("name", ["dape-v2-kerple", "dape-v2-alibi", "dape-v2-fire"])
def test_visible_logits_read_the_future_without_zeroing(name: str) -> None:
    assert future_logit_leak(f"{name}:zero_future=false") > 1e-3


@pytest.mark.parametrize("name", SCORES_PES)
def test_prefix_gives_the_same_logits(name: str) -> None:
    """A causal model's logits at t < N do not depend on whether later tokens exist at all."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=7, out_size=5, dim=32, layers=2, heads=4, dropout=0.0, causal=True)
    model = Transformer(cfg, parse_pe_spec(name)).eval()
    ids = torch.randint(0, 7, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids)[:, :7], model(ids[:, :7]), atol=1e-5)


@pytest.mark.parametrize("name", PES.names())
def test_every_registered_pe_is_causal(name: str) -> None:
    assert future_leak(name) < 1e-5


@pytest.mark.parametrize("name", ["dape-v2-kerple", "dape-v2-alibi", "dape-v2-fire"])
def test_dape_v2_without_zeroing_leaks_the_future(name: str) -> None:
    assert future_leak(f"{name}:zero_future=false") > 1e-3


def test_dape_v2_without_zeroing_leaks_even_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention_module, "BLOCK_BUDGET", 1)  # one query per block
    assert future_leak("dape-v2-kerple:zero_future=false") > 1e-3
    assert future_leak("dape-v2-kerple") < 1e-5


# --- CoPE (docs/pe.md §14) ---------------------------------------------------------------------


def logit(g: float) -> float:
    return math.log(g / (1 - g))


def test_cope_positions_from_gate_cumsum() -> None:
    pe = CoPE(ctx(1, 2), npos=4, divide=True)
    gates = [[0.5, 0.9, 0.9], [0.75, 0.5, 0.9], [0.5, 0.25, 0.75]]  # entries j > i are future
    s = torch.tensor([[logit(g) for g in row] for row in gates]).view(1, 1, 3, 3)
    pos = torch.arange(3)
    p = pe.gate_positions(s, pos, pos)[0, 0]
    # p_ij = sum_{t=j..i} g_it; future keys get 0
    expected = [[0.5, 0, 0], [1.25, 0.5, 0], [1.5, 1.0, 0.75]]
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)
    # z_i[p] = q_i . e[:, p]; e rows = head dims; q_2 = (1, 2) -> z_2 = [2, 1, 0, 4]
    set_(pe.table, [[[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, -1.0, 0.5]]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]]).view(1, 1, 3, 2)
    out = pe.scores(s, q, q, pos, pos)[0, 0]
    # z(1.5) = (z[1] + z[2]) / 2 = 0.5; z(1.0) = z[1] = 1; z(0.75) = 0.75 z[1] + 0.25 z[0] = 1.25
    for j, z in enumerate([0.5, 1.0, 1.25]):
        assert out[2, j].item() == pytest.approx(s[0, 0, 2, j].item() + z / math.sqrt(2), abs=1e-6)
    nodiv = CoPE(ctx(1, 2), npos=4, divide=False)
    nodiv.load_state_dict(pe.state_dict())
    assert nodiv.scores(s, q, q, pos, pos)[0, 0, 2, 0].item() == pytest.approx(s[0, 0, 2, 0].item() + 0.5, abs=1e-6)


def test_cope_clamps_at_npos_and_bidirectional_counts_forward() -> None:
    pe = CoPE(ctx(1, 2), npos=4, divide=True)
    s = torch.full((1, 1, 6, 6), 30.0)  # every gate ~ 1: p_50 = 6 -> clamped to npos - 1 = 3
    set_(pe.table, [[[0.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]])
    q = torch.ones(1, 1, 6, 2)
    pos = torch.arange(6)
    assert pe.gate_positions(s, pos, pos)[0, 0, 5, 0].item() == pytest.approx(6.0, abs=1e-5)
    assert pe.scores(s, q, q, pos, pos)[0, 0, 5, 0].item() == pytest.approx(30 + 7 / math.sqrt(2), abs=1e-4)
    enc = CoPE(ctx(1, 2, causal=False), npos=4)
    gates = [[0.5, 0.25, 0.75], [0.75, 0.5, 0.25], [0.1, 0.2, 0.3]]
    s = torch.tensor([[logit(g) for g in row] for row in gates]).view(1, 1, 3, 3)
    p = enc.gate_positions(s, pos[:3], pos[:3])[0, 0]
    # past keys count backwards from i, future keys forwards: p_ij = sum_{t=i..j} g_it
    expected = [[0.5, 0.75, 1.5], [1.25, 0.5, 0.75], [0.6, 0.5, 0.3]]
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)
    assert enc.table.shape == (2, 2, 4)


# --- Transformer-XL (docs/pe.md §15) -------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_xl_by_hand(causal: bool) -> None:
    pe = TransformerXL(ctx(1, 2, causal))
    set_(pe.u, [[0.1, -0.2]])
    set_(pe.v, [[0.3, 0.4]])
    set_(pe.r_net.weight, [[1.0, 2.0], [0.0, -1.0]])
    q = torch.tensor([[0.5, -1.0], [1.0, 0.5]]).view(1, 1, 2, 2)
    k = torch.tensor([[2.0, -1.0], [1.0, 1.0]]).view(1, 1, 2, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(2)
    pos = torch.arange(2)
    out = pe.scores(s, q, k, pos, pos)[0, 0]
    qs, ks = q[0, 0].tolist(), k[0, 0].tolist()

    def expected(i: int, j: int) -> float:
        delta = i - j if not causal else max(i - j, 0)
        r = [math.sin(delta), math.cos(delta)]  # d_model = 2: inv_freq = 1, [sin; cos]
        p = [r[0] + 2 * r[1], -r[1]]  # W_R R
        ac = (qs[i][0] + 0.1) * ks[j][0] + (qs[i][1] - 0.2) * ks[j][1]
        bd = (qs[i][0] + 0.3) * p[0] + (qs[i][1] + 0.4) * p[1]
        return (ac + bd) / math.sqrt(2)

    assert out[1, 0].item() == pytest.approx(2.7665031, abs=1e-6)  # worked on paper
    for i, j in [(0, 0), (1, 0), (1, 1)] + ([] if causal else [(0, 1)]):
        assert out[i, j].item() == pytest.approx(expected(i, j), abs=1e-6), (i, j)


def test_transformer_xl_clamp_len() -> None:
    pe = TransformerXL(ctx(2, 8), clamp_len=3)
    pos = torch.arange(8)
    d = pe.distances(pos, pos)
    assert d.max().item() == 3 and d.min().item() == 0
    q = torch.randn(1, 2, 8, 4)
    s = torch.zeros(1, 2, 8, 8)
    out = pe.scores(s, q, q, pos, pos)
    # distances 3 and 7 read the same projected sinusoid: only the per-key u.k term differs
    uk = (q[0] @ pe.u[:, :, None]).squeeze(-1) / 2.0  # [H, N] / sqrt(d_h = 4)
    assert torch.allclose(out[0, :, 7, 0] - uk[:, 0], out[0, :, 7, 4] - uk[:, 4], atol=1e-5)


# --- every new PE: backends, blocks, length, parameters -----------------------------------------


def reference_attention(att: Attention, x: torch.Tensor) -> torch.Tensor:
    """Unblocked textbook attention: full [B, H, N, N] logits through the PE's scores hook."""
    b, n, _ = x.shape
    q, k, v = att.qkv(x).view(b, n, 3, att.heads, att.head_dim).permute(2, 0, 3, 1, 4)
    pos = torch.arange(n)
    s = att.pe.scores(q @ k.transpose(-1, -2) / math.sqrt(att.head_dim), q, k, pos, pos)
    if att.causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.softmax(s, -1) @ v
    return att.out(y.transpose(1, 2).reshape(b, n, att.dim))


def attention_for(spec: str, causal: bool) -> Attention:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=causal, max_length=64)
    pe = build_pes(cfg, parse_pe_spec(spec))[0]
    with torch.no_grad():  # non-zero CoPE tables, so the position term matters
        for p in pe.parameters():
            if not p.any():
                p.normal_(std=0.5)
    return Attention(32, 4, pe, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", SCORES_PES)
def test_backends_agree(spec: str, causal: bool) -> None:
    att = attention_for(spec, causal)
    x = torch.randn(2, 19, 32)
    y = att(x)
    # DAPE v1 runs on its fused kernel where built (tests/test_dape_fused.py); every other scores PE explicit
    expected = {"explicit", "dape_fused"} if hasattr(att.pe, "fused_attention") else {"explicit"}
    assert att.last_backend in expected and att.choose_backend(x.device) in expected
    assert torch.allclose(y, reference_attention(att, x), atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spec", SCORES_PES)
def test_blocked_equals_unblocked(monkeypatch: pytest.MonkeyPatch, spec: str, causal: bool) -> None:
    att = attention_for(spec, causal)
    x = torch.randn(2, 23, 32)
    whole = att(x)
    assert att.block_size(2, 23) == 23
    whole.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in att.named_parameters()}
    att.zero_grad()
    width = max(4, int(getattr(att.pe, "hidden", 0)) + 2 * 4)
    monkeypatch.setattr(attention_module, "BLOCK_BUDGET", 2 * 23 * width * 5)
    assert att.block_size(2, 23) == 5  # blocks of 5 queries: 5, 5, 5, 5, 3
    blocked = att(x)
    assert torch.allclose(blocked, whole, atol=1e-5)
    blocked.square().sum().backward()
    for key, p in att.named_parameters():
        assert torch.allclose(p.grad, grads[key], atol=1e-5), key


def test_block_bounds_dape_hidden_at_8192_with_16_heads() -> None:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=1024, layers=1, heads=16, causal=True, max_length=8192)
    for spec in ("dape:hidden=32", "dape-v2-kerple:hidden=32", "cope", "transformer-xl"):
        att = Attention(1024, 16, build_pes(cfg, parse_pe_spec(spec))[0], causal=True)
        block = att.block_size(1, 8192)
        assert 1 <= block < 8192
        hidden = max(16, getattr(att.pe, "hidden", 0))
        assert block * 8192 * hidden <= attention_module.BLOCK_BUDGET  # [b, blk, N, hidden] bounded
        assert 16 * 8192 * 8192 > attention_module.BLOCK_BUDGET  # while [h, N, N] would not fit


# The 4x-the-training-length run of every registered PE is in test_pe_zoo_static.py.


def pe_parameters(spec: str, causal: bool, heads: int = 4, dim: int = 32) -> int:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=dim, layers=2, heads=heads, causal=causal)
    pes = build_pes(cfg, parse_pe_spec(spec))
    counts = {sum(p.numel() for p in pe.parameters()) for pe in pes}
    assert len(counts) == 1
    model = Transformer(cfg, parse_pe_spec(spec))
    total_pe = sum(p.numel() for blk in model.blocks for p in blk.attn.pe.parameters())
    assert total_pe == 2 * counts.pop()
    return total_pe // 2


@pytest.mark.parametrize("causal", [True, False])
def test_parameter_counts(causal: bool) -> None:
    h, dim, dh = 4, 32, 8
    sides = 1 if causal else 2
    kerple = 2 * h * sides
    assert pe_parameters("cope", causal) == sides * dh * 64
    assert pe_parameters("cope:npos=10", causal) == sides * dh * 10
    assert pe_parameters("transformer-xl", causal) == 2 * h * dh + dim * h * dh
    for k, hidden in [(3, 32), (5, 7), (1, 4)]:
        conv = 2 * h * hidden * k + hidden + hidden * h * k + h
        assert pe_parameters(f"dape-v2-alibi:kernel={k},hidden={hidden}", causal) == conv
        assert pe_parameters(f"dape-v2-kerple:kernel={k},hidden={hidden}", causal) == conv + kerple
        fire = 2 * hidden + hidden * h + h + 2  # FIRE's Linear(1, hidden), Linear(hidden, h), c, L_mult (FIRE_C)
        assert pe_parameters(f"dape-v2-fire:kernel={k},hidden={hidden}", causal) == conv + fire
    mlp = 2 * h * 32 + 32 + 32 * h + h
    assert pe_parameters("dape", causal) == mlp + kerple
    assert pe_parameters("dape-alibi", causal) == mlp
    assert pe_parameters("dape-kerple:variant=add_residual,hidden=16", causal) == h * 16 + 16 + 16 * h + h + kerple
