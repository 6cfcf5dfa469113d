"""Exact softmax attention for short sequences and small heads on CPU, through a small C kernel.

``softmax(scale * q k^T + bias) v`` and its gradients with respect to q, k, v and the bias (the
formulas are in ``small_attention.c``). Why it exists: at CHE's shapes (batch 128, 8 heads of dim
8, T <= ~80) SDPA's CPU flash kernel and batched matmuls spend most of their time in per-(batch,
head) overhead, not arithmetic; this kernel builds each (batch, head)'s scores in registers, 16
keys per vector, and recomputes the probabilities from the log-sum-exp in the backward
(``python benchmarks/che_kernels.py`` measures it against SDPA).

The C source ships with the package and is compiled on first use (:mod:`lenbench.native`).
Without a compiler, or with ``LENBENCH_SMALL_ATTENTION=0``, :func:`available` is False and
attention uses SDPA instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from lenbench import native
from lenbench.errors import LenbenchError

SOURCE = Path(__file__).with_name("small_attention.c")
SWITCH = "LENBENCH_SMALL_ATTENTION"
LANES = 16  # keys per vector in the kernel: the bias is padded to whole vectors

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = (("small_attention_forward", (_P,) * 8 + (_F, _I)), ("small_attention_backward", (_P,) * 13 + (_F, _I)))


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SWITCH, SIGNATURES)


def available() -> bool:
    """Whether the compiled kernel can be used in this process (compiles it on the first call)."""
    return _library() is not None


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel computes: fp32 CPU tensors, head dim a multiple of 8 up to 64."""
    return (
        q.device.type == "cpu" and q.dtype == torch.float32 and k.dtype == torch.float32
        and q.shape[-1] % 8 == 0 and q.shape[-1] <= 64 and q.shape[-2] > 0 and k.shape[-2] > 0
    )


def _strides(*tensors: torch.Tensor) -> ctypes.Array:
    values = [s for t in tensors for s in t.stride()[:3]]
    return (ctypes.c_int64 * len(values))(*values)


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def padded_bias(bias: torch.Tensor | None, tq: int, tk: int) -> torch.Tensor:
    """``[Hb, Tq, Kp]`` fp32: the bias (``[Hb, Tq, Tk]``, Hb = 1 or heads; None = zeros) with -inf past Tk."""
    kp = -(-tk // LANES) * LANES
    hb = 1 if bias is None else bias.shape[0]
    out = torch.full((hb, tq, kp), float("-inf"), dtype=torch.float32)
    out[..., :tk] = 0.0 if bias is None else bias
    return out


def _dims(q: torch.Tensor, k: torch.Tensor, padded: torch.Tensor) -> ctypes.Array:
    b, h, tq, d = q.shape
    return (ctypes.c_int64 * 6)(b, h, tq, k.shape[-2], d, 0 if padded.shape[0] == 1 else padded.stride(0))


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Shapes, dtypes and strides the kernel reads (:func:`lenbench.native.require`): q ``[B, H, Tq, D]``,
    k and v ``[B, H, Tk, D]`` with D a multiple of 8 up to 64, bias ``[1 or H, Tq, Tk]``."""
    native.require("small attention", "q", q, (None, None, None, None))
    b, h, tq, d = q.shape
    native.require("small attention", "k", k, (b, h, None, d))
    native.require("small attention", "v", v, tuple(k.shape))
    if d % 8 or not 0 < d <= 64 or tq < 1 or k.shape[2] < 1:
        raise LenbenchError(f"small attention kernel: head dim {d} must be a multiple of 8 up to 64, with tokens")
    if bias is not None:
        native.require("small attention", "bias", bias, (None, tq, k.shape[2]), layout="any",
                       meaning="heads, queries, keys")
        if bias.shape[0] not in (1, h):
            raise LenbenchError(f"small attention kernel: bias has shape {list(bias.shape)}, expected [1 or {h}, "
                                f"{tq}, {k.shape[2]}] = [heads, queries, keys]")


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output ``[B, H, Tq, D]`` (laid out as ``[B, Tq, H, D]``), log-sum-exp, padded bias."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the small attention kernel is not available (small_attention.available() is False)")
    check_inputs(q, k, v, bias)
    b, h, tq, d = q.shape
    padded = padded_bias(bias, tq, k.shape[-2])
    out = torch.empty(b, tq, h, d, dtype=q.dtype).transpose(1, 2)  # the out projection reads it as [B, Tq, E]
    lse = torch.empty(b * h, tq, dtype=torch.float32)
    native.check_status("small attention", lib.small_attention_forward(
        _ptr(q), _ptr(k), _ptr(v), _ptr(padded), _ptr(out), _ptr(lse), _dims(q, k, padded), _strides(q, k, v, out),
        scale, torch.get_num_threads()))
    return out, lse, padded


def _backward(
    saved: tuple[torch.Tensor, ...], grad: torch.Tensor, scale: float,
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, bias_grad: bool, bias_heads: int | None,
) -> torch.Tensor | None:
    """Writes dq, dk, dv (any layout with a contiguous last axis); returns the bias gradient or None."""
    lib = _library()
    q, k, v, padded, out, lse = saved
    h, tq, tk = q.shape[1], q.shape[2], k.shape[-2]
    grad = _last_contiguous(grad)
    native.require("small attention", "output gradient", grad, tuple(out.shape))
    dbias = torch.zeros(h, tq, padded.shape[-1], dtype=torch.float32) if bias_grad else None
    native.check_status("small attention", lib.small_attention_backward(
        _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(grad), _ptr(padded), _ptr(lse), _ptr(dq), _ptr(dk), _ptr(dv),
        _ptr(dbias), _dims(q, k, padded), _strides(q, k, v, out, grad, dq, dk, dv), scale, torch.get_num_threads()))
    if dbias is None:
        return None
    dbias = dbias[..., :tk]
    return dbias.sum(0, keepdim=True) if bias_heads == 1 else dbias


class SmallAttention(torch.autograd.Function):
    """q ``[B, H, Tq, D]``, k and v ``[B, H, Tk, D]`` (any strides, last axis contiguous), bias ``[Hb, Tq, Tk]``."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # type: ignore[override]
        q, k, v = (_last_contiguous(t) for t in (q, k, v))
        out, lse, padded = _forward(q, k, v, None if bias is None else bias.detach(), scale)
        ctx.save_for_backward(q, k, v, padded, out, lse)
        ctx.scale, ctx.bias_heads = scale, None if bias is None else bias.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v = ctx.saved_tensors[:3]
        b, h, tq, d = q.shape
        tk = k.shape[-2]
        dq = torch.empty(b, tq, h, d, dtype=q.dtype).transpose(1, 2)
        dk, dv = (torch.empty(b, tk, h, d, dtype=q.dtype).transpose(1, 2) for _ in range(2))
        dbias = _backward(ctx.saved_tensors, grad, ctx.scale, dq, dk, dv, ctx.needs_input_grad[3], ctx.bias_heads)
        return dq, dk, dv, dbias, None


def _packed_views(t: torch.Tensor, queries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (the last ``queries`` positions), k, v of ``t [B, T, 3, H, D]`` as ``[B, H, ., D]`` views."""
    return t[:, t.shape[1] - queries :, 0].transpose(1, 2), t[:, :, 1].transpose(1, 2), t[:, :, 2].transpose(1, 2)


class PackedSmallAttention(torch.autograd.Function):
    """The packed projection ``qkv [B, T, 3, H, D]``: keys and values at every position, queries at
    the last ``queries`` ones. Its gradient is one ``[B, T, 3, H, D]`` tensor, so autograd does not
    stack three separate ones (a copy of the whole projection per layer)."""

    @staticmethod
    def forward(ctx, qkv, bias, scale, queries):  # type: ignore[override]
        native.require("small attention", "qkv", qkv, (None, None, 3, None, None))
        if not 0 < queries <= qkv.shape[1]:
            raise LenbenchError(f"small attention kernel: {queries} queries of {qkv.shape[1]} tokens")
        out, lse, padded = _forward(*_packed_views(qkv, queries), None if bias is None else bias.detach(), scale)
        ctx.save_for_backward(qkv, padded, out, lse)
        ctx.scale, ctx.queries, ctx.bias_heads = scale, queries, None if bias is None else bias.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        qkv, padded, out, lse = ctx.saved_tensors
        n, queries = qkv.shape[1], ctx.queries
        g = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        if queries < n:
            g[:, : n - queries, 0] = 0.0  # keys and values only: no query gradient there
        dq, dk, dv = _packed_views(g, queries)
        dbias = _backward((*_packed_views(qkv, queries), padded, out, lse), grad, ctx.scale, dq, dk, dv,
                          ctx.needs_input_grad[1], ctx.bias_heads)
        return g, dbias, None, None


def small_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """``softmax(scale q k^T + bias) v``: q ``[B, H, Tq, D]``, k and v ``[B, H, Tk, D]``, bias ``[H or 1, Tq, Tk]``."""
    return SmallAttention.apply(q, k, v, bias, float(scale))


def small_attention_packed(
    qkv: torch.Tensor, bias: torch.Tensor | None, scale: float, queries: int | None = None
) -> torch.Tensor:
    """:func:`small_attention` on ``qkv [B, T, 3, H, D]`` (q, k, v along axis 2), queries at the last
    ``queries`` positions (default all); returns ``[B, H, queries, D]``."""
    return PackedSmallAttention.apply(qkv, bias, float(scale), qkv.shape[1] if queries is None else int(queries))
