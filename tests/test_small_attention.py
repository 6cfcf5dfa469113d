"""The small-head CPU attention kernel against textbook attention, its packed form, its build cache
and its fallback (lenbench/model/small_attention.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lenbench import native
from lenbench.model import small_attention as sa
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, build_pes
from lenbench.pe import parse_pe_spec

needs_kernel = pytest.mark.skipif(not sa.available(), reason="no C compiler: the kernel cannot be built")



def textbook(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(scale q k^T + bias) v in float64, by its definition."""
    s = scale * q.double() @ k.double().transpose(-1, -2)
    if bias is not None:
        s = s + bias.double()
    return torch.softmax(s, -1) @ v.double()


def grads(fn, inputs: list[torch.Tensor], seed: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for t in inputs:
        t.grad = None
    y = fn()
    torch.manual_seed(seed)
    y.backward(torch.randn(y.shape).to(y.dtype))
    return y.detach().float(), [t.grad.float().clone() for t in inputs]


def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape)).requires_grad_()


@needs_kernel
@pytest.mark.parametrize("d", [8, 16, 24])
@pytest.mark.parametrize(("tq", "tk"), [(1, 1), (7, 7), (16, 16), (17, 17), (41, 41), (3, 37), (40, 80)])
@pytest.mark.parametrize("bias_heads", [0, 1, 3])
def test_kernel_matches_textbook(d: int, tq: int, tk: int, bias_heads: int) -> None:
    """Outputs and gradients (q, k, v, bias) at head dims 8/16/24, key counts around the 16-key
    vectors, fewer queries than keys, bias absent, shared by heads, or per head."""
    torch.manual_seed(tq * 100 + tk + d)
    q, k, v = leaf(2, 3, tq, d), leaf(2, 3, tk, d), leaf(2, 3, tk, d)
    bias = leaf(bias_heads, tq, tk) if bias_heads else None
    inputs = [q, k, v] + ([bias] if bias is not None else [])
    scale = 1 / math.sqrt(d)
    y, g = grads(lambda: sa.small_attention(q, k, v, bias, scale), inputs)
    y_ref, g_ref = grads(lambda: textbook(q, k, v, bias, scale), inputs)
    assert torch.allclose(y, y_ref, atol=2e-6), (y - y_ref).abs().max()
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


@needs_kernel
def test_kernel_handles_large_scores_and_masked_keys() -> None:
    """Scores of +-60 (the exp's range reduction far from 0) and -inf on future keys (a causal mask)."""
    torch.manual_seed(0)
    q, k, v = leaf(2, 2, 33, 8, scale=8.0), leaf(2, 2, 33, 8, scale=8.0), leaf(2, 2, 33, 8)
    future = torch.ones(33, 33, dtype=torch.bool).triu(1)
    bias = torch.zeros(1, 33, 33).masked_fill(future, float("-inf"))
    y, g = grads(lambda: sa.small_attention(q, k, v, bias, 0.35), [q, k, v])
    y_ref, g_ref = grads(lambda: textbook(q, k, v, bias, 0.35), [q, k, v])
    assert torch.allclose(y, y_ref, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(y[:, :, 0], v[:, :, 0].detach())  # the first query sees only the first key


@needs_kernel
def test_nan_propagates_like_torch() -> None:
    """A NaN score makes its query's output NaN (and only its query's), as in SDPA: the training
    loop's NaN-loss check depends on it."""
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    bias = torch.zeros(2, 5, 5)
    bias[1, 3, 2] = float("nan")
    y = sa.small_attention(q, k, v, bias, 0.35)
    assert y[0, 1, 3].isnan().all() and not y[0, 0].isnan().any() and not y[0, 1, [0, 1, 2, 4]].isnan().any()
    assert sa.small_attention(q * float("nan"), k, v, None, 0.35).isnan().all()


@needs_kernel
def test_exp_polynomial_is_accurate() -> None:
    """Two keys with score gap x give p = 1 / (1 + e^-x): the kernel's exp over [-87, 0]."""
    gaps = torch.linspace(-87.0, 0.0, 64)
    q = torch.ones(1, 64, 1, 8)
    k = torch.zeros(1, 64, 2, 8)
    v = torch.zeros(1, 64, 2, 8)
    v[..., 0, 0] = 1.0
    bias = torch.stack([gaps, torch.zeros(64)], -1)[:, None, :]  # [H=64, 1, 2]
    p = sa.small_attention(q, k, v, bias, 1.0)[0, :, 0, 0].double()
    expected = 1 / (1 + torch.exp(-gaps.double()))
    assert torch.allclose(p, expected, rtol=5e-7, atol=1e-30)


@needs_kernel
@pytest.mark.parametrize("queries", [29, 3, 1])
def test_packed_form_matches_separate_views(queries: int) -> None:
    """The packed projection gives the same output and the same gradient as q, k, v views of it."""
    torch.manual_seed(queries)
    qkv = leaf(3, 29, 3, 4, 8)
    bias = leaf(4, queries, 29)
    scale = 0.3

    def separate() -> torch.Tensor:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return sa.small_attention(q[:, :, 29 - queries :], k, v, bias, scale)

    y, g = grads(lambda: sa.small_attention_packed(qkv, bias, scale, queries), [qkv, bias])
    y_ref, g_ref = grads(separate, [qkv, bias])
    assert torch.equal(y, y_ref)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    if queries < 29:
        assert not g[0][:, : 29 - queries, 0].any()  # positions that are never queries get no query gradient


@needs_kernel
def test_threads_split_batch_and_heads_exactly() -> None:
    """One thread and two threads give identical results (each thread owns whole (b, h) items; the
    bias gradient's per-thread parts are summed in a fixed order)."""
    torch.manual_seed(0)
    q, k, v, bias = leaf(5, 3, 20, 8), leaf(5, 3, 20, 8), leaf(5, 3, 20, 8), leaf(3, 20, 20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads(lambda: sa.small_attention(q, k, v, bias, 0.4), [q, k, v, bias])
        torch.set_num_threads(2)
        two = grads(lambda: sa.small_attention(q, k, v, bias, 0.4), [q, k, v, bias])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0])
    for a, b in zip(one[1], two[1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("name", ["alibi", "kerple", "nope", "rope"])
def test_encoder_training_step_matches_query_blocks(name: str) -> None:
    """A CHE-shaped encoder (head dim 8, reading only the last positions) trained one step through
    the kernel equals the same step through SDPA (query blocks for a bias)."""
    cfg = ModelConfig(vocab_size=6, out_size=4, dim=32, layers=2, heads=4, dropout=0.0, max_length=64)
    results = []
    for backend in ("auto", "blocked_bias" if name in ("alibi", "kerple") else "sdpa"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**{**cfg.__dict__, "attention_backend": backend}), parse_pe_spec(name))
        ids = torch.randint(0, 6, (4, 23))
        logits = model(ids, last=5)
        logits.square().mean().backward()
        backends = {b.attn.last_backend for b in model.blocks}
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], backends))
    (y, g, used), (y_ref, g_ref, used_ref) = results
    assert used == {"small"} and "small" not in used_ref
    assert torch.allclose(y, y_ref, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_build_caches_by_source_and_cpu(tmp_path: Path) -> None:
    """The library is built once per cache folder and reused; its name carries the build key."""
    if native.compiler() is None:
        pytest.skip("no C compiler")
    first = native.build(sa.SOURCE, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("small_attention-") and first.suffix == ".so"
    assert native.build(sa.SOURCE, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".small_attention-*"))  # no temporary file left behind


def test_without_a_compiler_attention_falls_back_to_sdpa(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native, "compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.build(sa.SOURCE, tmp_path)
    monkeypatch.setenv("LENBENCH_KERNEL_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        assert not sa.available()
        cfg = ModelConfig(vocab_size=5, out_size=3, dim=32, layers=1, heads=4, max_length=64)
        att = Attention(32, 4, build_pes(cfg, parse_pe_spec("alibi"))[0], causal=False)
        att(torch.randn(2, 9, 32))
        assert att.last_backend == "blocked_bias"
    finally:
        native.load.cache_clear()


def test_switch_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENBENCH_SMALL_ATTENTION", "0")
    native.load.cache_clear()
    try:
        assert not sa.available()
    finally:
        native.load.cache_clear()
