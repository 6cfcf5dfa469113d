"""The C dropout kernel: SplitMix64 masks as documented, inverted-dropout values and gradients, the
fused residual, reproducibility, and the torch fallback."""

from __future__ import annotations

import math

import pytest
import torch

from lenbench import native
from lenbench.model import dropout as dropout_module
from lenbench.model.dropout import Dropout, dropout

pytestmark = pytest.mark.skipif(not dropout_module.kernel_available(), reason="no C compiler for the dropout kernel")

MASK64 = 2**64 - 1


def splitmix64(seed: int, m: int) -> int:
    """The m-th SplitMix64 output from ``seed`` (Steele, Lea and Flood 2014), in Python integers."""
    z = (seed + (m + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_mask_is_splitmix64_of_the_seed_drawn_from_torch() -> None:
    """Element 2m keeps iff the low 32 bits of output m are below round(0.6 * 2^32); 2m+1 the high bits."""
    torch.manual_seed(11)
    seed = dropout_module._seed()
    torch.manual_seed(11)
    kept = dropout(torch.ones(65), 0.4, training=True) != 0
    limit = round(0.6 * 2**32)
    expected = []
    for i in range(65):
        r = splitmix64(seed, i // 2)
        expected.append(((r >> 32) if i % 2 else (r & 0xFFFFFFFF)) < limit)
    assert kept.tolist() == expected
    assert splitmix64(0, 0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0


def test_values_gradients_and_fused_residual() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 33, 17, requires_grad=True)  # odd element count: a lone last element
    skip = torch.randn(64, 33, 17, requires_grad=True)
    y = dropout(x, 0.1, training=True, skip=skip)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = x.grad != 0
    assert torch.equal(y, skip + torch.where(kept, x * (1 / 0.9), 0.0))  # skip + x * mask * scale, rounded alike
    assert torch.equal(x.grad, torch.where(kept, grad * (1 / 0.9), 0.0))  # the backward regenerates the mask
    assert torch.equal(skip.grad, grad)
    sigma = math.sqrt(0.9 * 0.1 / kept.numel())
    assert abs(kept.float().mean().item() - 0.9) < 5 * sigma


def test_keep_probability_and_neighbours_uncorrelated() -> None:
    torch.manual_seed(3)
    kept = (dropout(torch.ones(1_000_001), 0.3, training=True) != 0).float()
    sigma = math.sqrt(0.7 * 0.3 / kept.numel())
    assert abs(kept.mean().item() - 0.7) < 5 * sigma
    even, odd = kept[0:-1:2], kept[1::2]  # the two halves of one 64-bit output
    assert abs(torch.corrcoef(torch.stack([even, odd]))[0, 1].item()) < 5 / math.sqrt(even.numel())
    again = (dropout(torch.ones(1_000_001), 0.3, training=True) != 0).float()
    assert (kept != again).any()  # a new seed per call


def test_reproducible_under_the_seed_and_any_thread_count() -> None:
    x = torch.randn(300_001)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            torch.manual_seed(7)
            outs.append(dropout(x, 0.25, training=True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_residual_with_a_strided_skip_and_the_module_form() -> None:
    """The final block's skip is a slice of the sequence (not contiguous)."""
    torch.manual_seed(2)
    full = torch.randn(4, 10, 8)
    skip, x = full[:, -3:], torch.randn(4, 3, 8)
    drop = Dropout(0.5)
    torch.manual_seed(5)
    y = drop.residual(skip, x)
    torch.manual_seed(5)
    plain = dropout(x, 0.5, training=True)
    assert torch.equal(y, skip + plain)
    assert torch.equal(drop.eval().residual(skip, x), skip + x)


def test_switch_falls_back_to_the_torch_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dropout_module.SWITCH, "0")
    native.load.cache_clear()
    try:
        assert not dropout_module.kernel_available()
        torch.manual_seed(4)
        x = torch.randn(1000, requires_grad=True)
        skip = torch.randn(1000)
        y = dropout(x, 0.1, training=True, skip=skip)
        y.sum().backward()
        kept = x.grad != 0
        assert y.grad_fn is not None and "Kernel" not in type(y.grad_fn).__name__
        torch.testing.assert_close(y, skip + torch.where(kept, x / 0.9, 0.0))
    finally:
        native.load.cache_clear()
