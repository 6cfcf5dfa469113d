"""Every attention backend agrees with the explicit reference for every PE, causal and not."""

from __future__ import annotations

import math

import pytest
import torch

from lenbench.model import attention as attention_module
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import PES, parse_pe_spec

FOUNDATION_PES = ["nope", "sinusoidal", "learned", "rope", "alibi", "kerple", "dape", "dape-alibi"]


def make_pair(name: str, causal: bool) -> tuple[Attention, Attention]:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, causal=causal, max_length=64)
    pe = build_pes(cfg, parse_pe_spec(name))[0]
    fast = Attention(32, 4, pe, causal, backend="auto")
    ref = Attention(32, 4, pe, causal, backend="explicit")
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
    assert make_pair("rope", True)[0].choose_backend(torch.device("cpu")) == "sdpa"
    assert make_pair("alibi", True)[0].choose_backend(torch.device("cpu")) == "sdpa_bias"
    assert make_pair("dape", True)[0].choose_backend(torch.device("cpu")) == "explicit"


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
    """DAPE's MLP keeps PyTorch's default Linear init (dape.md §1.4), not the model's N(0, 0.02)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8, out_size=8, dim=32, heads=4, layers=2, init="gpt2")
    model = Transformer(cfg, parse_pe_spec("dape"))
    fc1 = model.blocks[0].attn.pe.fc1
    bound = 1 / math.sqrt(fc1.in_features)  # kaiming-uniform(a=sqrt(5)) bound of nn.Linear
    assert fc1.bias.abs().max() > 0 and fc1.weight.abs().max() <= bound
    assert fc1.weight.std() > 0.1  # uniform(-1/sqrt(8), 1/sqrt(8)) has std ~0.20; N(0, 0.02) would not
    assert model.blocks[0].attn.qkv.weight.std() < 0.03


def test_cpu_evaluation_backend_depends_on_length() -> None:
    from lenbench.model.attention import BLOCK_BUDGET, FLEX_CPU_MIN_LENGTH, flex_available

    cpu = torch.device("cpu")
    alibi, _ = make_pair("alibi", True)
    randomized, _ = make_pair("randomized-alibi", True)  # positions hook: no exact score_mod path
    long = int((BLOCK_BUDGET / alibi.heads) ** 0.5) + 1
    assert alibi.choose_backend(cpu, 64) == "sdpa_bias"  # training: materialized bias, exact gradients
    with torch.no_grad():
        assert alibi.choose_backend(cpu, FLEX_CPU_MIN_LENGTH - 1) == "sdpa_bias"
        expected = "flex" if flex_available(cpu) else ("explicit" if FLEX_CPU_MIN_LENGTH >= long else "sdpa_bias")
        assert alibi.choose_backend(cpu, FLEX_CPU_MIN_LENGTH) == expected
        assert randomized.choose_backend(cpu, long - 1) == "sdpa_bias"
        assert randomized.choose_backend(cpu, long) == "explicit"
