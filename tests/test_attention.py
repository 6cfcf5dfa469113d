"""Every attention backend agrees with the explicit reference for every PE, causal and not."""

from __future__ import annotations

import math

import pytest
import torch

from lenbench.model import attention as attention_module
from lenbench.model import small_attention
from lenbench.model.attention import SMALL_MAX_LENGTH, Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import PES, dape_fused, fire_kernel, parse_pe_spec

FOUNDATION_PES = ["nope", "sinusoidal", "learned", "rope", "alibi", "kerple", "dape", "dape-alibi"]


def make_pair(name: str, causal: bool, dim: int = 32) -> tuple[Attention, Attention]:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=dim, layers=1, heads=4, causal=causal, max_length=64)
    pe = build_pes(cfg, parse_pe_spec(name))[0]
    fast = Attention(dim, 4, pe, causal, backend="auto")
    ref = Attention(dim, 4, pe, causal, backend="explicit")
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", FOUNDATION_PES)
def test_backends_agree(name: str, causal: bool) -> None:
    torch.manual_seed(0)
    fast, ref = make_pair(name, causal)
    x = torch.randn(2, 19, 32)
    y_fast, y_ref = fast(x), ref(x)
    assert ref.last_backend == "explicit"
    assert torch.allclose(y_fast, y_ref, atol=1e-5), (name, fast.last_backend)
    # gradients agree too (SDPA with a float bias gives exact gradients to the PE parameters)
    y_fast.square().sum().backward()
    grads_fast = [p.grad.clone() for p in fast.parameters() if p.grad is not None]
    for p in fast.parameters():
        p.grad = None
    ref(x).square().sum().backward()
    grads_ref = [p.grad for p in ref.parameters() if p.grad is not None]
    for a, b in zip(grads_fast, grads_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_backend_choice() -> None:
    """CPU: the small-head kernel at head dim 8 (when it compiled), SDPA / query blocks for wider heads."""
    cpu = torch.device("cpu")
    small = small_attention.available()
    assert make_pair("rope", True)[0].choose_backend(cpu, 40) == ("small" if small else "sdpa")
    assert make_pair("alibi", True)[0].choose_backend(cpu, 40) == ("small" if small else "blocked_bias")
    fused = "dape_fused" if dape_fused.usable(cpu) else "explicit"  # DAPE v1's fused kernel where it is built
    assert make_pair("dape", True)[0].choose_backend(cpu, 40) == fused
    assert make_pair("rope", True, dim=128)[0].choose_backend(cpu, 40) == "sdpa"  # head dim 32
    assert make_pair("alibi", True, dim=128)[0].choose_backend(cpu, 40) == "blocked_bias"
    assert make_pair("alibi", True, dim=64)[0].choose_backend(cpu, 64) == ("small" if small else "blocked_bias")
    assert make_pair("alibi", True, dim=64)[0].choose_backend(cpu, 65) == "blocked_bias"  # head dim 16: short only
    assert make_pair("alibi", True)[0].choose_backend(cpu, SMALL_MAX_LENGTH) == "blocked_bias"


@pytest.mark.parametrize("causal", [True, False])
def test_query_blocks_match_one_block(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    torch.manual_seed(0)
    _, ref = make_pair("dape", causal)
    x = torch.randn(2, 23, 32)
    whole = ref(x)
    width = ref.pe.hidden + 2 * 4  # widest per-(i, j) intermediate: DAPE hidden + [S; B]
    monkeypatch.setattr(attention_module, "BLOCK_BUDGET", 2 * 23 * width * 5)  # 5-query blocks
    assert ref.block_size(2, 23) == 5
    assert torch.allclose(ref(x), whole, atol=1e-6)


@pytest.mark.parametrize("name", ["alibi", "kerple"])
def test_flex_attention_matches_materialized_under_no_grad(name: str) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    fast, ref = make_pair(name, True)
    flex = Attention(32, 4, fast.pe, True, backend="flex")
    flex.load_state_dict(fast.state_dict())
    x = torch.randn(1, 128, 32)
    with torch.no_grad():
        assert torch.allclose(flex(x), ref(x), atol=1e-5)
    assert flex.last_backend == "flex"


def test_every_registered_pe_builds_a_model() -> None:
    for name in PES.names():
        cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=2, heads=4, max_length=64)
        model = Transformer(cfg, parse_pe_spec(name))
        assert model(torch.randint(0, 5, (2, 9))).shape == (2, 9, 3)


def test_model_init_leaves_pe_modules_at_their_own_init() -> None:
    """DAPE's MLP keeps PyTorch's default Linear init (docs/dape.md §1.4), not the model's N(0, 0.02)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8, out_size=8, dim=32, heads=4, layers=2, init="gpt2")
    model = Transformer(cfg, parse_pe_spec("dape"))
    fc1 = model.blocks[0].attn.pe.fc1
    bound = 1 / math.sqrt(fc1.in_features)  # kaiming-uniform(a=sqrt(5)) bound of nn.Linear
    assert fc1.bias.abs().max() > 0 and fc1.weight.abs().max() <= bound
    assert fc1.weight.std() > 0.1  # uniform(-1/sqrt(8), 1/sqrt(8)) has std ~0.20; N(0, 0.02) would not
    assert model.blocks[0].attn.qkv.weight.std() < 0.03


def test_cpu_evaluation_backend_depends_on_length() -> None:
    """CPU: query blocks for training and short evaluation; evaluation goes to FlexAttention from
    FLEX_CPU_MIN_LENGTH on (when a compiler exists); CUDA picks flex/materialized."""
    from lenbench.model.attention import FLEX_CPU_MIN_LENGTH, flex_available

    cpu = torch.device("cpu")
    alibi, _ = make_pair("alibi", True, dim=128)  # head dim 32: no small-head kernel
    fire, _ = make_pair("fire", True, dim=128)
    randomized, _ = make_pair("randomized-alibi", True, dim=128)  # positions hook: no exact score_mod path
    assert alibi.choose_backend(cpu, 64) == "blocked_bias"  # training: exact gradients
    assert fire.choose_backend(cpu, FLEX_CPU_MIN_LENGTH) == "blocked_bias"
    with torch.no_grad():
        assert alibi.choose_backend(cpu, FLEX_CPU_MIN_LENGTH - 1) == "blocked_bias"
        assert fire.choose_backend(cpu, FLEX_CPU_MIN_LENGTH - 1) == "blocked_bias"
        expected = "flex" if flex_available(cpu) else "blocked_bias"
        fire_blocks = "blocked_bias" if fire_kernel.available() else expected  # its C kernel beats Flex's MLP
        assert fire.choose_backend(cpu, FLEX_CPU_MIN_LENGTH) == fire_blocks
        assert alibi.choose_backend(cpu, 4 * FLEX_CPU_MIN_LENGTH) == expected
        assert randomized.choose_backend(cpu, 4 * FLEX_CPU_MIN_LENGTH) == "blocked_bias"
    cuda = torch.device("cuda")
    assert alibi.choose_backend(cuda, 64) == "flex"  # no trained parameters: score_mod is exact
    assert make_pair("kerple", True)[0].choose_backend(cuda, 64) == "sdpa_bias"  # r1, r2 train
    assert randomized.choose_backend(cuda, 64) == "sdpa_bias"


STATIC_BIAS_PES = ["alibi", "kerple", "kerple-power", "t5", "fire", "randomized-alibi"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", STATIC_BIAS_PES)
def test_blocked_bias_matches_materialized(monkeypatch: pytest.MonkeyPatch, name: str, causal: bool) -> None:
    """Query blocks (5 here, the last one short) with the distance-row windows give the same
    outputs and gradients as SDPA with the whole materialized bias."""
    monkeypatch.setattr(attention_module, "BIAS_BLOCK", 5)
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=causal, max_length=64)
    torch.manual_seed(0)
    pe = build_pes(cfg, parse_pe_spec(name))[0]
    blocked = Attention(32, 4, pe, causal, backend="blocked_bias")
    plain = Attention(32, 4, pe, causal, backend="sdpa_bias")
    plain.load_state_dict(blocked.state_dict())
    x = torch.randn(2, 23, 32)
    results = []
    for att in (blocked, plain):  # backward before the next forward: Kerple clamps its parameters in place
        torch.manual_seed(1)  # randomized-alibi: the same position draw for both
        y = att(x)
        y.square().sum().backward()
        results.append((y.detach(), {n: p.grad.clone() for n, p in att.named_parameters() if p.grad is not None}))
        att.zero_grad()
    (y_blocked, grads), (y_plain, grads_plain) = results
    assert blocked.last_backend == "blocked_bias"
    assert torch.allclose(y_blocked, y_plain, atol=1e-5)
    assert grads and grads.keys() == grads_plain.keys()
    for n, g in grads.items():
        assert torch.allclose(g, grads_plain[n], atol=1e-4), n


def test_distance_row_windows_by_hand() -> None:
    """ALiBi causal, one head of slope m, N = 4: the row holds -m (i - j) for i - j = 3, 2, 1, 0
    and -inf for the three future distances."""
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=8, layers=1, heads=1, causal=True, max_length=64)
    att = Attention(8, 1, build_pes(cfg, parse_pe_spec("alibi"))[0], True)
    m = float(att.pe.slopes[0])
    row = att.distance_row(torch.arange(4))
    inf = float("-inf")
    assert row.tolist() == [[-3 * m, -2 * m, -m, 0.0, inf, inf, inf]]
