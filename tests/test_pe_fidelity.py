"""Issue 16, items 5 and 6: position terms in fp32 under bf16 autocast; the randomized relative PE
(RPE ``NOISY_RELATIVE``) against its formula; the source-following defaults of CoPE, randomized ALiBi,
learned tables and FIRE."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lenbench.errors import LenbenchError
from lenbench.model import attention as attention_module
from lenbench.model import small_attention
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer
from lenbench.pe import PES, PEContext, parse_pe_spec
from lenbench.pe.absolute import Learned, RandomizedLearned
from lenbench.pe.bias import FIRE, RandomizedALiBi
from lenbench.pe.contextual import CoPE, RandomizedRelative
from lenbench.pe.dape import DAPEKerple

CPU = torch.device("cpu")
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def ctx(heads: int = 4, dim: int = 32, causal: bool = False, train_length: int = 16) -> PEContext:
    return PEContext(dim=dim, heads=heads, causal=causal, train_length=train_length, max_length=64)


def set_(param: torch.Tensor, values: Any) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=param.dtype).view_as(param))


# --- item 5: fp32 position terms under autocast -----------------------------------------------------


def spy_masks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.dtype, torch.Tensor]]:
    """Record (q dtype, float mask) of every SDPA call with a mask, and of the small kernel's bias."""
    seen: list[tuple[torch.dtype, torch.Tensor]] = []
    sdpa = F.scaled_dot_product_attention

    def spy_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, **kw: Any) -> Any:
        if attn_mask is not None:
            seen.append((q.dtype, attn_mask.detach()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    packed, plain = small_attention.small_attention_packed, small_attention.small_attention

    def spy_packed(qkv: torch.Tensor, bias: torch.Tensor, *a: Any) -> Any:
        seen.append((qkv.dtype, bias.detach()))
        return packed(qkv, bias, *a)

    def spy_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *a: Any) -> Any:
        seen.append((q.dtype, bias.detach()))
        return plain(q, k, v, bias, *a)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(small_attention, "small_attention_packed", spy_packed)
    monkeypatch.setattr(small_attention, "small_attention", spy_plain)
    return seen


BIAS_BACKENDS = ["sdpa_bias", "blocked_bias", *(["small"] if small_attention.available() else [])]


@pytest.mark.parametrize("backend", BIAS_BACKENDS)
@pytest.mark.parametrize("spec", ["kerple", "alibi", "fire"])
def test_static_bias_stays_fp32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch, spec: str, backend: str) -> None:
    """The logits' bias reaches SDPA / the small kernel in fp32 with fp32 q, equal to the fp32 bias,
    so Kerple's ~0.001-0.002 step between keys at distance ~1000 survives (bf16 rounds it away).
    FIRE at 300 tokens here (its MLP at distance ~1000: the next test)."""
    torch.manual_seed(0)
    n = 300 if spec == "fire" else 1000
    pe = PES.get(spec)(ctx(heads=2, dim=16))
    att = Attention(16, 2, pe, causal=False, backend=backend)
    seen = spy_masks(monkeypatch)
    with torch.autocast(**BF16):
        y = att(torch.randn(1, n, 16))
    assert y.dtype == torch.bfloat16 and att.last_backend == backend  # the projections stay in bf16
    ref = pe.bias(torch.arange(n), torch.arange(n))  # fp32, no autocast
    rows = [m.reshape(2, -1, n) for _, m in seen]
    got = torch.cat(rows, dim=1)
    assert all(dt == torch.float32 for dt, _ in seen) and got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=0, atol=1e-6)
    step = ref[:, n - 1, 0] - ref[:, n - 1, 1]  # neighbouring keys at distances 999 and 998
    assert torch.allclose(got[:, n - 1, 0] - got[:, n - 1, 1], step, atol=1e-6)
    if spec == "kerple":
        assert (step.abs() > 5e-4).all()
        lost = ref.bfloat16().float()  # what a bf16 mask would hold
        assert not torch.allclose(lost[:, n - 1, 0] - lost[:, n - 1, 1], step, atol=1e-4)


def test_fire_mlp_in_fp32_under_autocast() -> None:
    """FIRE's MLP (the Python path, with gradients) gives the fp32 bias under bf16 autocast."""
    torch.manual_seed(0)
    pe = FIRE(ctx(heads=2, dim=16), l0=64.0)
    pos, last = torch.arange(1100), torch.arange(1090, 1100)  # the last queries: distances up to 1099
    ref = pe.bias(last, pos)
    with torch.autocast(**BF16):
        got = pe.bias(last, pos)
    assert got.dtype == torch.float32 and got.requires_grad
    assert torch.allclose(got, ref, rtol=0, atol=1e-6)


def test_dape_scores_fp32_under_autocast() -> None:
    """DAPE's [S; B], f and S + B + f in fp32: bf16 scores in, fp32 logits equal to the fp32 path out."""
    torch.manual_seed(0)
    pe = DAPEKerple(ctx(heads=2, dim=16))
    n = 1000
    pos, q_pos = torch.arange(n), torch.arange(n - 4, n)
    s = torch.randn(1, 2, 4, n).bfloat16()
    q = torch.randn(1, 2, 4, 8).bfloat16()
    ref = pe.scores(s.float(), q.float(), q.float(), q_pos, pos)
    with torch.autocast(**BF16):
        got = pe.scores(s, q, q, q_pos, pos)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=0, atol=1e-5)


def test_explicit_backend_forms_dape_logits_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the attention module under autocast, DAPE's scores hook sees fp32 s, q, k and returns
    fp32 logits equal to the hook run without autocast on the same inputs."""
    torch.manual_seed(0)
    pe = DAPEKerple(ctx(heads=2, dim=16))
    att = Attention(16, 2, pe, causal=False, backend="explicit")  # the scores hook's path (fused: its own test)
    calls: list[tuple[torch.Tensor, ...]] = []
    scores = pe.scores

    def spy(s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        out = scores(s, q, k, qp, kp)
        calls.append((s.detach(), q.detach(), k.detach(), qp, kp, out.detach()))
        return out

    monkeypatch.setattr(pe, "scores", spy)
    with torch.autocast(**BF16), torch.no_grad():
        att(torch.randn(1, 300, 16))
    assert calls and att.last_backend == "explicit"
    for s, q, k, qp, kp, out in calls:
        assert s.dtype == q.dtype == k.dtype == out.dtype == torch.float32
        assert torch.allclose(out, scores(s, q, k, qp, kp), rtol=0, atol=1e-5)


# --- item 6: randomized relative (RPE NOISY_RELATIVE) -----------------------------------------------


def rpe_logit(q: list, k: list, u: list, v: list, w: list, p: float) -> float:
    """One head, d_model = d_h = 2: ``[(q + u) . k + (q + v) . W_R R(p)] / sqrt(2)``, ``R(p) = [sin p, cos p]``."""
    r = [math.sin(p), math.cos(p)]
    proj = [w[0][0] * r[0] + w[0][1] * r[1], w[1][0] * r[0] + w[1][1] * r[1]]
    ac = (q[0] + u[0]) * k[0] + (q[1] + u[1]) * k[1]
    bd = (q[0] + v[0]) * proj[0] + (q[1] + v[1]) * proj[1]
    return (ac + bd) / math.sqrt(2)


def by_hand_pe(**options: Any) -> tuple[RandomizedRelative, list, list, list, list, list]:
    pe = RandomizedRelative(ctx(heads=1, dim=2), max_position=100, **options)
    u, v, w = [0.1, -0.2], [0.3, 0.4], [[1.0, 2.0], [0.0, -1.0]]
    set_(pe.u, [u])
    set_(pe.v, [v])
    set_(pe.r_net.weight, w)
    q = [[0.5, -1.0], [1.0, 0.5], [-0.5, 2.0]]
    k = [[2.0, -1.0], [1.0, 1.0], [0.0, -1.5]]
    return pe, q, k, u, v, w


def logits_of(pe: RandomizedRelative, q: list, k: list) -> torch.Tensor:
    qt, kt = torch.tensor(q).view(1, 1, 3, 2), torch.tensor(k).view(1, 1, 3, 2)
    s = qt @ kt.transpose(-1, -2) / math.sqrt(2)
    pos = torch.arange(3)
    return pe.scores(s, qt, kt, pos, pos)[0, 0]


@pytest.mark.parametrize("mode", ["intended", "both_sides", "rpe_bug"])
def test_randomized_relative_by_hand(mode: str) -> None:
    """Offset d = j - i is encoded at sign(d) r_|d| (RPE: key minus query); r = (0, 3, 7) fixed by hand.
    Both sides: the left side reads its own draw (0, 5, 9). RPE's released bug: L - 1 for d >= 0,
    L - r_|d| for d < 0 (L = 100)."""
    pe, q, k, u, v, w = by_hand_pe(randomize_both_sides=mode == "both_sides", rpe_bug=mode == "rpe_bug")
    pe.positions(3, CPU)
    pe.right = torch.tensor([0, 3, 7])
    pe.left = torch.tensor([0, 5, 9]) if mode == "both_sides" else pe.right
    out = logits_of(pe, q, k)
    right, left = [0, 3, 7], ([0, 5, 9] if mode == "both_sides" else [0, 3, 7])
    for i in range(3):
        for j in range(3):
            d = j - i
            p = float(right[d] if d >= 0 else -left[-d])
            if mode == "rpe_bug":
                p = 99.0 if d >= 0 else 100.0 - right[-d]
            assert out[i, j].item() == pytest.approx(rpe_logit(q[i], k[j], u, v, w, p), abs=1e-5), (i, j)
    if mode == "intended":  # worked on paper: i = 2, j = 0, p = -7: (-2.6 - 1.9795290) / sqrt(2)
        assert out[2, 0].item() == pytest.approx(-3.2382160, abs=1e-5)


def test_randomized_relative_unrandomized_is_plain_relative_attention() -> None:
    """eval_random=False in eval mode: p = d = j - i, RPE's deterministic RELATIVE."""
    pe, q, k, u, v, w = by_hand_pe(eval_random=False)
    pe.eval()
    assert torch.equal(pe.positions(3, CPU), torch.arange(3)) and pe.right is None
    out = logits_of(pe, q, k)
    for i in range(3):
        for j in range(3):
            assert out[i, j].item() == pytest.approx(rpe_logit(q[i], k[j], u, v, w, float(j - i)), abs=1e-5)


def test_randomized_relative_draws() -> None:
    """Sorted distinct distances in [1, L) with r_0 = 0, a fresh draw per call, also in eval mode;
    both sides: an independent left draw; T > L: plain offsets or (overflow=error) a LenbenchError."""
    torch.manual_seed(0)
    pe = RandomizedRelative(ctx(), max_position=40)
    assert RandomizedRelative(ctx()).max_position == 2048  # RPE example.py, the CHE encoder
    assert RandomizedRelative(ctx(causal=True, train_length=16)).max_position == 64  # LM: 4 x train
    draws = []
    for _ in range(10):
        assert torch.equal(pe.positions(30, CPU), torch.arange(30))
        r = pe.right
        assert r is not None and pe.left is r and r.shape == (30,) and r[0].item() == 0
        assert torch.all(r[1:] > r[:-1]) and r[1].item() >= 1 and r[-1].item() < 40
        draws.append(r)
    assert not torch.equal(draws[0], draws[1])
    pe.eval()
    pe.positions(30, CPU)
    assert pe.right is not None  # RPE samples at test time too
    both = RandomizedRelative(ctx(), max_position=40, randomize_both_sides=True)
    both.positions(30, CPU)
    assert both.left is not None and both.right is not None and not torch.equal(both.left, both.right)
    assert both.left[0].item() == 0 and torch.all(both.left[1:] > both.left[:-1])
    pe.positions(41, CPU)
    assert pe.right is None  # 40 distances do not fit in [1, 40): plain offsets (overflow=arange)
    with pytest.raises(LenbenchError, match="max_position"):
        RandomizedRelative(ctx(), max_position=40, overflow="error").positions(41, CPU)


def test_randomized_relative_per_layer_init_and_causal_form() -> None:
    """One draw per layer and forward; W_R Haiku TruncatedNormal(1/sqrt(E)); u, v ~ N(0, 0.02);
    causal: visible offsets d <= 0 only (future ones clamp to 0 and are masked)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=64, layers=2, heads=8, causal=False, train_length=8,
                      max_length=64)
    model = Transformer(cfg, parse_pe_spec("randomized-relative"))
    model(torch.randint(0, 5, (2, 12)))
    first, second = (blk.attn.pe for blk in model.blocks)
    assert first is not second and not torch.equal(first.right, second.right)
    w = first.r_net.weight
    assert w.abs().max().item() <= 2 / 8 + 1e-6 and w.std().item() == pytest.approx(0.88 / 8, rel=0.15)
    assert first.u.std().item() == pytest.approx(0.02, rel=0.4)
    causal = RandomizedRelative(ctx(causal=True))
    d = causal.distances(torch.arange(4), torch.arange(4))
    assert d.max().item() == 0 and d[3, 0].item() == -3


# --- item 6: defaults that follow the sources --------------------------------------------------------


def test_source_following_defaults() -> None:
    """randomized-alibi draws RPE's distances; CoPE adds its position term undivided (DAPE's baseline);
    learned tables: Haiku TruncatedNormal(std 1, +-2) in the CHE encoder, N(0, 0.02) in the LM; FIRE l0 512."""
    torch.manual_seed(0)
    assert RandomizedALiBi(ctx()).mode == "distances"
    assert CoPE(ctx()).divide is False
    enc = Learned(PEContext(dim=64, heads=8, causal=False, train_length=40, max_length=500)).table.weight
    assert enc.std().item() == pytest.approx(0.88, rel=0.05) and enc.abs().max().item() <= 2.0
    lm = Learned(PEContext(dim=64, heads=8, causal=True, train_length=40, max_length=500)).table.weight
    assert lm.std().item() == pytest.approx(0.02, rel=0.05)
    noisy = RandomizedLearned(ctx(dim=64)).table.weight
    assert noisy.shape == (2048, 64) and noisy.std().item() == pytest.approx(0.88, rel=0.05)
    assert FIRE(ctx()).l0 == 512.0
    for name in ("cope", "randomized-alibi", "learned", "fire", "randomized-relative"):
        assert PES.get(name).description
    assert "undivided" in CoPE.description and "distances" in RandomizedALiBi.description
