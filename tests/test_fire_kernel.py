"""FIRE's C bias kernel against FIRE's PyTorch formula, its causal mask, and when it applies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lenbench import native
from lenbench.model.attention import FLEX_CPU_MIN_LENGTH, Attention
from lenbench.pe import PEContext, fire_kernel
from lenbench.pe.bias import FIRE, LeakyFIRE

pytestmark = pytest.mark.skipif(not fire_kernel.available(), reason="no C compiler for the FIRE kernel")


def make(cls: type[FIRE] = FIRE, heads: int = 12, causal: bool = True, seed: int = 0, **options) -> FIRE:
    torch.manual_seed(seed)
    pe = cls(PEContext(dim=8 * heads, heads=heads, causal=causal, train_length=16, max_length=4096), **options)
    with torch.no_grad():  # a wide first layer: hidden units switch on and off across [-1, 1]
        torch.nn.init.normal_(pe.fc1.weight, std=3.0)
        torch.nn.init.normal_(pe.fc1.bias)
        pe.c.fill_(0.3)
    return pe


def both(pe: FIRE, q: torch.Tensor, k: torch.Tensor, first: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, PyTorch) results of ``bias`` (or ``causal_bias`` from ``first``) without gradients."""
    with torch.no_grad():
        assert pe.kernel_applies(q, k)
        fast = pe.bias(q, k) if first is None else pe.causal_bias(q, k, first)
        with fire_kernel.disabled():
            assert not pe.kernel_applies(q, k)
            plain = pe.bias(q, k) if first is None else pe.causal_bias(q, k, first)
    return fast, plain


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [1, 3, 12, 16, 17, 20])
def test_kernel_matches_the_pytorch_formula(causal: bool, heads: int) -> None:
    """Heads around the kernel's 16 (or 12) per pass; key counts not a multiple of the vector width;
    queries on both sides of the threshold L = 8, so the normaliser varies per row."""
    pe = make(heads=heads, causal=causal, l0=8)
    q, k = torch.arange(3, 40), torch.arange(0, 45)  # bidirectional: future keys are normalised by j
    fast, plain = both(pe, q, k)
    assert fast.shape == plain.shape == (heads, 37, 45)
    assert plain.std() > 0.1  # the test bites: the bias varies
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=2e-6)


def test_leaky_fire_and_irregular_positions() -> None:
    """DAPE-FIRE's LeakyReLU base, and sorted random integer positions (randomized PEs' kind)."""
    pe = make(LeakyFIRE, heads=5, causal=True, l0=64)
    torch.manual_seed(3)
    positions = torch.randperm(900)[:70].sort().values
    fast, plain = both(pe, positions, positions)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=2e-6)
    assert plain.min() < 0  # negative hidden units leak through


def test_causal_bias_writes_the_mask_by_index() -> None:
    """Query row a is token first + a; keys after it are -inf, the rest FIRE's bias."""
    pe = make(heads=3, l0=8)
    q, k = torch.arange(20, 37), torch.arange(37)
    fast, plain = both(pe, q, k, first=20)
    future = torch.arange(37)[None, :] > torch.arange(20, 37)[:, None]
    assert torch.equal(fast.isneginf(), future.expand(3, -1, -1)) and torch.equal(plain.isneginf(), fast.isneginf())
    torch.testing.assert_close(fast[:, ~future], plain[:, ~future], rtol=1e-5, atol=2e-6)


def test_kernel_value_through_a_hand_set_mlp() -> None:
    """One hidden unit, two heads: B_h(10, 3) = w2_h relu(x - 0.1) + b2_h, x = psi(7) / psi(10), c = 0.1."""
    pe = FIRE(PEContext(dim=16, heads=2, causal=True, train_length=16, max_length=64), mlp_width=1, l0=4)
    with torch.no_grad():
        pe.fc1.weight.fill_(1.0)
        pe.fc1.bias.fill_(-0.1)
        pe.fc2.weight.copy_(torch.tensor([[1.0], [2.0]]))
        pe.fc2.bias.copy_(torch.tensor([0.0, 0.5]))
        assert pe.kernel_applies(torch.arange(11), torch.arange(11))
        b = pe.bias(torch.arange(11), torch.arange(11))
    x = math.log(1.7) / (math.log(2.0) + 1e-6)
    assert b[0, 10, 3].item() == pytest.approx(x - 0.1, rel=1e-6)
    assert b[1, 10, 3].item() == pytest.approx(2 * (x - 0.1) + 0.5, rel=1e-6)
    assert b[1, 3, 3].item() == pytest.approx(0.5)  # relu(0 - 0.1) = 0


def test_training_keeps_the_differentiable_path() -> None:
    """With gradients wanted the PyTorch formula runs, so c, L, and both layers get gradients."""
    pe = make(heads=2)
    q = torch.arange(30)
    assert not pe.kernel_applies(q, q)
    pe.bias(q, q).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pe.parameters())
    with torch.no_grad():
        assert not pe.kernel_applies(q.float(), q.float())  # float positions: PyTorch path
        assert not pe.kernel_applies(q - 1, q)  # negative positions: PyTorch path


def test_nan_parameters_give_nan_bias() -> None:
    pe = make(heads=2)
    with torch.no_grad():
        pe.fc2.bias[1] = float("nan")
        b = pe.bias(torch.arange(20), torch.arange(20))
    assert b[1].isnan().all() and not b[0].isnan().any()


def test_attention_evaluation_uses_blocks_with_the_kernel() -> None:
    """Long causal CPU evaluation: query blocks with the kernel's bias, equal to SDPA with the
    materialized PyTorch bias."""
    n, heads = FLEX_CPU_MIN_LENGTH + 37, 2
    pe = make(heads=heads, l0=64)
    att = Attention(32 * heads, heads, pe, causal=True)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, heads, n, 32) for _ in range(3))
    pos = torch.arange(n)
    with torch.no_grad():
        assert att.choose_backend(torch.device("cpu"), n) == "blocked_bias"
        fast = att.blocked_bias(q, k, v, pos)
        with fire_kernel.disabled():
            mask = att.materialized_mask(pos, torch.float32)
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_switch_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fire_kernel.SWITCH, "0")
    native.load.cache_clear()
    try:
        pe = make(heads=2)
        with torch.no_grad():
            assert not fire_kernel.available() and not pe.kernel_applies(torch.arange(4), torch.arange(4))
            assert not pe.compiled_bias()
            assert pe.bias(torch.arange(4), torch.arange(4)).shape == (2, 4, 4)
    finally:
        native.load.cache_clear()
