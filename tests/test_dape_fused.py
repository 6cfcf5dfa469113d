"""Fused DAPE v1 attention (C kernel) against the plain formula; attention's routing to it; its fallbacks."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lenbench import native
from lenbench.errors import LenbenchError
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, build_pes
from lenbench.pe import dape_fused, parse_pe_spec

needs_kernel = pytest.mark.skipif(not dape_fused.available(), reason="no C compiler for the fused DAPE kernel")
VARIANTS = ("concat_residual", "concat", "add_residual")


def plain(q, k, v, bias_full, w1, b1, w2, b2, variant: str, causal: bool, first: int) -> torch.Tensor:
    """DAPE v1 (docs/dape.md section 1) written out: all of [B, H, Nq, Nk] at once."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    b = bias_full[None].expand_as(s)
    x = s + b if variant == "add_residual" else torch.cat([s, b], 1)
    z = torch.einsum("bcij,uc->biju", x, w1) + b1
    f = torch.einsum("biju,hu->bhij", F.leaky_relu(z, 0.01), w2) + b2[:, None, None]
    logits = s + f if variant == "concat" else s + b + f
    if causal:
        future = torch.arange(s.shape[-1])[None, :] > (first + torch.arange(s.shape[-2]))[:, None]
        logits = logits.masked_fill(future, float("-inf"))
    return torch.softmax(logits, -1) @ v


def case(variant: str, toeplitz: bool, heads: int = 3, n: int = 37, d: int = 8, hidden: int = 5, first: int = 0,
         batch: int = 2, seed: int = 0, device: str = "cpu") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Leaf inputs (q, k, v, bias, w1, b1, w2, b2) and the full bias ``[H, Nq, Nk]`` they mean."""
    g = torch.Generator().manual_seed(seed)
    nq = n - first
    c = heads if variant == "add_residual" else 2 * heads

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    q, k, v = r(batch, heads, nq, d), r(batch, heads, n, d), r(batch, heads, n, d)
    if toeplitz:
        bias = r(heads, 2 * n - 1)
        full = bias[:, (n - 1) - (first + torch.arange(nq))[:, None] + torch.arange(n)[None, :]]
    else:
        bias = r(heads, nq, n)
        full = bias
    return [q, k, v, bias, r(hidden, c), r(hidden), r(heads, hidden), r(heads)], full


def assert_matches(leaves: list[torch.Tensor], full: torch.Tensor, out: torch.Tensor, variant: str, causal: bool,
                   first: int, atol: float = 1e-5) -> None:
    """Values and the gradients of every leaf equal the plain formula's (b2's is ~0: softmax ignores shifts)."""
    ref = plain(*leaves[:3], full, *leaves[4:], variant, causal, first)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=atol)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, leaves, g)
    got = torch.autograd.grad(out, leaves, g)
    for name, a, b in zip(("q", "k", "v", "bias", "w1", "b1", "w2", "b2"), got, want, strict=True):
        assert a.shape == b.shape, name
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2 * atol * scale, msg=name)
    assert want[3].abs().max() > 1e-2 and want[4].abs().max() > 1e-2  # the bias and the MLP matter here


@needs_kernel
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("toeplitz", [True, False])
def test_kernel_equals_the_plain_formula(variant: str, causal: bool, toeplitz: bool) -> None:
    """Odd lengths (37 keys: a partial key chunk), 3 heads, D=5 (tails of every unrolled loop); the full
    bias form reads the last 33 queries only (``first=4``, the encoder's ``last``)."""
    first = 0 if toeplitz else 4
    leaves, full = case(variant, toeplitz, first=first)
    out = dape_fused.fused_dape_attention(*leaves, variant=variant, causal=causal, toeplitz=toeplitz, first=first)
    assert_matches(leaves, full, out, variant, causal, first)


@needs_kernel
@pytest.mark.parametrize("toeplitz", [True, False])
def test_kernel_at_the_350m_shape_equals_the_plain_formula(toeplitz: bool) -> None:
    """16 heads of 64, D_DAPE 32: the vector paths (head dim a multiple of the lanes, 4 units per pass);
    150 queries: three tiles of the kernel's 64, the last partial. Logits reach ~30 with unit-variance
    weights, so float error grows to ~1e-5 of them."""
    leaves, full = case("concat_residual", toeplitz, heads=16, n=150, d=64, hidden=32)
    out = dape_fused.fused_dape_attention(*leaves, causal=True, toeplitz=toeplitz)
    assert_matches(leaves, full, out, "concat_residual", True, 0, atol=1e-4)


@needs_kernel
def test_nan_reaches_exactly_the_rows_that_see_it() -> None:
    """A NaN key at position 5 makes every head of every query that sees key 5 NaN (the MLP mixes heads)."""
    leaves, full = case("concat_residual", True, n=21)
    with torch.no_grad():
        leaves[1][0, 1, 5, 2] = float("nan")
        ref = plain(*leaves[:3], full, *leaves[4:], "concat_residual", True, 0)
        out = dape_fused.fused_dape_attention(*leaves, causal=True, toeplitz=True)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out[0, :, 5:].isnan().all() and not out[0, :, :5].isnan().any() and not out[1].isnan().any()
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-4, atol=1e-5)


def saved_elements(fn) -> int:
    """Elements of every tensor autograd saves while ``fn()`` runs its forward."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


def attention_pair(spec: str, causal: bool, dim: int = 32, heads: int = 4) -> tuple[Attention, Attention]:
    cfg = ModelConfig(vocab_size=5, out_size=3, dim=dim, layers=1, heads=heads, causal=causal, max_length=256)
    pe = build_pes(cfg, parse_pe_spec(spec))[0]
    torch.manual_seed(1)
    fused = Attention(dim, heads, pe, causal)
    ref = copy.deepcopy(fused)  # its own PE too, so no gradient is shared
    ref.backend = "explicit"
    return fused, ref


@needs_kernel
@pytest.mark.parametrize(
    ("spec", "causal", "last"),
    [("dape-kerple", True, None), ("dape-alibi:variant=concat", True, None),
     ("dape-fire:variant=add_residual,l0=8", True, None), ("dape-kerple", False, 7), ("dape-fire", False, None)],
)
def test_attention_routes_dape_to_the_fused_kernel(spec: str, causal: bool, last: int | None) -> None:
    """Output and every parameter's gradient (projections, MLP, Kerple's p and a, FIRE's MLP, c and L)
    equal the ``explicit`` backend's; bidirectional Kerple and FIRE use their two-sided forms."""
    fused, ref = attention_pair(spec, causal)
    x = torch.randn(2, 29, 32)
    ys = []
    for att in (fused, ref):
        att.zero_grad()
        y = att(x, last=last)
        y.square().sum().backward()
        ys.append(y)
    assert fused.last_backend == "dape_fused" and ref.last_backend == "explicit"
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-4, atol=1e-5)
    pairs = [(n, p.grad, dict(ref.named_parameters())[n].grad) for n, p in fused.named_parameters()]
    if "alibi" not in spec:  # ALiBi's slopes are fixed; Kerple's and FIRE's parameters learn
        assert any(n.startswith("pe.base.") and g is not None for n, g, _ in pairs)
    for name, a, b in pairs:
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()), msg=name)


@needs_kernel
def test_training_memory_is_linear_in_n() -> None:
    """At N=256 the fused path saves O(H N d) for backward; ``explicit`` saves the [B, N, N, D] activations."""
    fused, ref = attention_pair("dape-kerple", True, dim=64, heads=4)
    x = torch.randn(1, 256, 64, requires_grad=True)
    small = saved_elements(lambda: fused(x))
    big = saved_elements(lambda: ref(x))
    assert fused.last_backend == "dape_fused"
    assert small < 20 * 256 * 64  # x, qkv, q, k, v, out, the Kerple row: each O(N * width)
    assert big > 256 * 256 * 32 and big > 10 * small


@needs_kernel
@pytest.mark.parametrize(("causal", "last"), [(True, None), (False, None), (False, 19)])
def test_full_bias_runs_per_query_block_and_equals_explicit(
    causal: bool, last: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DAPE-FIRE has no Toeplitz row: with a budget of 8 query rows the kernel runs on blocks of 8
    (29 queries: 8, 8, 8, 5; ``last=19``: 8, 8, 3), each block's FIRE bias computed for it and
    recomputed in the backward; output and every gradient (FIRE's MLP, c and L included) equal the
    explicit backend's."""
    fused, ref = attention_pair("dape-fire:l0=8", causal)
    width = fused.pe.base.fc1.out_features
    monkeypatch.setattr(dape_fused, "FULL_BIAS_BUDGET", 8 * 29 * (4 + width))
    assert dape_fused.full_bias_block(fused.pe, 4, 29) == 8
    x = torch.randn(2, 29, 32)
    ys = []
    for att in (fused, ref):
        att.zero_grad()
        y = att(x, last=last)
        y.square().sum().backward()
        ys.append(y)
    assert fused.last_backend == "dape_fused"
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-4, atol=1e-5)
    grads = dict(ref.named_parameters())
    assert any(n.startswith("pe.base.") and p.grad is not None for n, p in fused.named_parameters())
    for name, p in fused.named_parameters():
        b = grads[name].grad
        torch.testing.assert_close(p.grad, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()), msg=name)


@needs_kernel
def test_full_bias_training_keeps_no_n_squared_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training DAPE-FIRE over several query blocks (a budget of 32 rows at N=128) keeps O(N width) for
    backward: the [H, N, N] bias (131072 elements here) and FIRE's [N, N, width] activations are
    recomputed per block, not saved. Within one block (the default budget at this N) they are kept."""
    fused, ref = attention_pair("dape-fire", True, dim=32, heads=8)
    n = 128
    x = torch.randn(1, n, 32, requires_grad=True)
    one_block = saved_elements(lambda: fused(x))
    monkeypatch.setattr(dape_fused, "FULL_BIAS_BUDGET", 32 * n * (8 + fused.pe.base.fc1.out_features))
    assert dape_fused.full_bias_block(fused.pe, 8, n) == 32
    small = saved_elements(lambda: fused(x))
    assert fused.last_backend == "dape_fused"
    assert small < 20 * n * 32 < 8 * n * n < one_block
    assert saved_elements(lambda: ref(x)) > 8 * n * n


def test_bad_input_is_one_clear_error() -> None:
    leaves, _ = case("concat", True)
    with pytest.raises(LenbenchError, match="unknown DAPE variant"):
        dape_fused.fused_dape_attention(*leaves, variant="sum", causal=True, toeplitz=True)
    with pytest.raises(LenbenchError, match="2N-1"):
        dape_fused.fused_dape_attention(*leaves[:3], leaves[3][:, :-1], *leaves[4:], variant="concat", causal=True,
                                        toeplitz=True)
    with pytest.raises(LenbenchError, match="fc1"):
        dape_fused.fused_dape_attention(*leaves, variant="add_residual", causal=True, toeplitz=True)
    with pytest.raises(LenbenchError, match="fp32"):
        dape_fused.fused_dape_attention(*(t.double() for t in leaves), variant="concat", causal=True, toeplitz=True)


@needs_kernel
def test_tracing_and_forced_explicit_take_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fused, _ = attention_pair("dape-kerple", True)
    with monkeypatch.context() as m:  # inside a torch.compile trace the ctypes kernel cannot run
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not dape_fused.applies(torch.randn(1, 4, 9, 8))
        fused(torch.randn(1, 9, 32))
        assert fused.last_backend == "explicit"
    forced = Attention(32, 4, fused.pe, True, backend="explicit").float()
    forced(torch.randn(1, 9, 32))
    assert forced.last_backend == "explicit"


def test_without_a_compiler_or_with_the_switch_off_attention_is_explicit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fused, ref = attention_pair("dape-kerple", True)
    x = torch.randn(1, 11, 32)
    monkeypatch.setenv("LENBENCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.load.cache_clear()
    try:
        assert not dape_fused.available()
        assert fused.choose_backend(torch.device("cpu"), 11) == "explicit"
        torch.testing.assert_close(fused(x), ref(x))
        assert fused.last_backend == "explicit"
        monkeypatch.undo()
        monkeypatch.setenv(dape_fused.SWITCH, "0")
        native.load.cache_clear()
        assert not dape_fused.usable(torch.device("cpu"))
        fused(x)
        assert fused.last_backend == "explicit"
    finally:
        native.load.cache_clear()
