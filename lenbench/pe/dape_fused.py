"""Fused DAPE v1 attention: logits, the MLP across heads and an online softmax per tile, O(B H N) memory.

Computes, exactly, the attention that the ``explicit`` backend computes for :class:`~lenbench.pe.dape.DAPE`
(docs/dape.md section 1): ``softmax(S + B + f([S; B])) V`` (or the ``concat`` and
``add_residual`` forms), ``S = q k^T / sqrt(d)``, ``f = W2 LeakyReLU_{0.01}(W1 x + b1) + b2`` over
all heads of each (query, key) pair, causal mask after f. The forward keeps the output and one
log-sum-exp per row and head; the backward recomputes every tile (formulas in ``dape_fused.c``), so no
``[N, N, D]`` activation is ever stored. Gradients reach q, k, v, the MLP and the base bias ``B``,
hence the base PE's parameters through autograd.

The base bias enters in one of two forms: a Toeplitz row ``[H, 2N - 1]`` (column ``N - 1 - (i - j)``,
translation-invariant bases at ``arange`` positions: ALiBi, Kerple), or the full ``[H, Nq, Nk]``
tensor (FIRE, or sampled positions). The full form runs per block of queries
(:func:`_full_bias_blocks`): each block's bias is computed just before the kernel and, in training,
recomputed in the backward (activation checkpointing), so only one block's ``[H, block, N]`` bias
(and the base's own activations) exists at a time.

CPU: the C kernel ``dape_fused.c``, compiled on first use (:mod:`lenbench.native`). CUDA: the Triton
kernel of :mod:`lenbench.pe.dape_triton`. Without a compiler (or Triton), or with
``LENBENCH_DAPE_KERNEL=0``, :func:`available` is False and attention keeps its ``explicit`` backend.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lenbench import native
from lenbench.errors import LenbenchError
from lenbench.pe.dape_layout import bias_layout

SOURCE = Path(__file__).with_name("dape_fused.c")
SWITCH = "LENBENCH_DAPE_KERNEL"
KEY_BLOCK = 16  # the kernel's KB: keys per block of kT and vT, zero-padded to a multiple of it
VARIANT_CODES = {"concat_residual": 0, "concat": 1, "add_residual": 2}
# Elements of one query block's full base bias and the base's activations (:func:`full_bias_block`).
FULL_BIAS_BUDGET = 1 << 24

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = (
    ("dape_threads", (_I,)),
    ("dape_forward", (_P,) * 11 + (_F, _F, _I)),
    ("dape_backward", (_P,) * 22 + (_F, _F, _I)),
)


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SWITCH, SIGNATURES)


def available() -> bool:
    """Whether the compiled CPU kernel can be used in this process (compiles it on the first call)."""
    return _library() is not None


def _ptr(t: torch.Tensor, offset: int = 0) -> int:
    return t.data_ptr() + offset * t.element_size()


def _key_blocks(t: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d] -> [B, H, Kp / KB, d, KB]`` contiguous (KB = :data:`KEY_BLOCK`, keys zero-padded to
    ``Kp``): each block of KB keys transposed, so the kernel reads one key chunk's d x KB values in one run."""
    b, h, n, d = t.shape
    kp = -(-n // KEY_BLOCK) * KEY_BLOCK
    return F.pad(t, (0, 0, 0, kp - n)).view(b, h, kp // KEY_BLOCK, KEY_BLOCK, d).transpose(-1, -2).contiguous()


def _dims(q: torch.Tensor, k: torch.Tensor, hidden: int, meta: dict[str, Any], layout: tuple[int, int, int]) -> Any:
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    values = (b, h, nq, nk, d, hidden, VARIANT_CODES[meta["variant"]], int(meta["causal"]), meta["first"],
              layout[1], layout[2], -(-nk // KEY_BLOCK) * KEY_BLOCK, layout[0])
    return (ctypes.c_int64 * len(values))(*values)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w1: torch.Tensor,
                 b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, meta: dict[str, Any]) -> None:
    """Every shape the C kernel reads (:func:`lenbench.native.require`), checked before the call: q
    ``[B, H, Nq, d]``, k and v ``[B, H, Nk, d]``, queries ``first .. first + Nq - 1`` within the keys, bias
    ``[H, 2 Nk - 1]`` (Toeplitz) or ``[H, Nq, Nk]``, ``w1 [D, 2H or H]``, ``b1 [D]``, ``w2 [H, D]``, ``b2 [H]``."""
    kernel = "fused DAPE"
    native.require(kernel, "q", q, (None, None, None, None), layout="contiguous")
    b, h, nq, d = q.shape
    native.require(kernel, "k", k, (b, h, None, d), layout="contiguous")
    native.require(kernel, "v", v, tuple(k.shape), layout="contiguous")
    nk, hidden = k.shape[2], w1.shape[0] if w1.dim() == 2 else -1
    if min(b, h, nq, nk, d) < 1 or not 0 <= meta["first"] <= nk - nq:
        raise LenbenchError(f"{kernel} kernel: {nq} queries from token {meta['first']} over {nk} keys, batch {b}, "
                            f"{h} heads of dim {d}")
    columns = h if meta["variant"] == "add_residual" else 2 * h
    if meta["toeplitz"]:
        native.require(kernel, "bias", bias, (h, 2 * nk - 1), layout="contiguous", meaning="heads, 2N-1 distances")
    else:
        native.require(kernel, "bias", bias, (h, nq, nk), layout="contiguous", meaning="heads, queries, keys")
    native.require(kernel, "fc1 weight", w1, (None, columns), layout="contiguous")
    native.require(kernel, "fc1 bias", b1, (hidden,), layout="contiguous")
    native.require(kernel, "fc2 weight", w2, (h, hidden), layout="any")
    native.require(kernel, "fc2 bias", b2, (h,), layout="contiguous")


class FusedDAPEFunction(torch.autograd.Function):
    """q ``[B, H, Nq, d]``; k, v ``[B, H, Nk, d]``; bias (row or full); w1 ``[D, C]``, b1, w2 ``[H, D]``, b2."""

    @staticmethod
    def forward(ctx, q, k, v, bias, w1, b1, w2, b2, meta):  # type: ignore[override]
        lib = _library()
        if lib is None:
            raise RuntimeError("the fused DAPE kernel is not available (dape_fused.available() is False)")
        q, k, v = (t.detach().contiguous() for t in (q, k, v))
        bias, w1, b1, b2 = (t.detach().contiguous() for t in (bias, w1, b1, b2))
        check_inputs(q, k, v, bias, w1, b1, w2, b2, meta)
        w2t = w2.detach().t().contiguous()
        b, h, nq, d = q.shape
        layout = bias_layout(bias, meta["toeplitz"], nq, k.shape[-2], meta["first"])
        dims = _dims(q, k, w1.shape[0], meta, layout)
        out = torch.empty_like(q)
        lse = torch.empty(b, h, nq)
        kt = _key_blocks(k)  # held here: the kernel reads it through a raw pointer
        native.check_status("fused DAPE", lib.dape_forward(
            _ptr(q), _ptr(kt), _ptr(v), _ptr(bias, layout[0]), _ptr(w1), _ptr(b1), _ptr(w2t), _ptr(b2), _ptr(out),
            _ptr(lse), dims, meta["scale"], meta["slope"], torch.get_num_threads()))
        ctx.save_for_backward(q, k, v, bias, w1, b1, w2t, b2, out, lse)
        ctx.meta, ctx.layout = meta, layout
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        lib = _library()
        q, k, v, bias, w1, b1, w2t, b2, out, lse = ctx.saved_tensors
        meta, layout = ctx.meta, ctx.layout
        b, h, nq, d = q.shape
        nk, hidden, c = k.shape[-2], w1.shape[0], w1.shape[1]
        grad = grad.contiguous()
        native.require("fused DAPE", "output gradient", grad, tuple(out.shape), layout="contiguous")
        delta = (grad * out).sum(-1).contiguous()
        threads = int(lib.dape_threads(torch.get_num_threads()))
        dq = torch.zeros_like(q)
        dk, dv = (torch.zeros(threads, b, h, nk, d) for _ in range(2))
        dw1, db1 = torch.zeros(threads, hidden, c), torch.zeros(threads, hidden)
        dw2t, db2 = torch.zeros(threads, hidden, h), torch.zeros(threads, h)
        per_thread_bias = meta["toeplitz"]
        dbias = torch.zeros((threads, *bias.shape) if per_thread_bias else bias.shape)
        strides = (ctypes.c_int64 * 2)(b * h * nk * d, bias.numel() if per_thread_bias else 0)
        kt, vt = _key_blocks(k), _key_blocks(v)  # held here: the kernel reads them through raw pointers
        native.check_status("fused DAPE", lib.dape_backward(
            _ptr(q), _ptr(kt), _ptr(k), _ptr(vt), _ptr(bias, layout[0]), _ptr(w1), _ptr(b1), _ptr(w2t), _ptr(b2),
            _ptr(grad), _ptr(lse), _ptr(delta), _ptr(dq), _ptr(dk), _ptr(dv), _ptr(dw1), _ptr(db1), _ptr(dw2t),
            _ptr(db2), _ptr(dbias, layout[0]), strides, _dims(q, k, hidden, meta, layout), meta["scale"],
            meta["slope"], threads))
        dbias = dbias.sum(0) if per_thread_bias else dbias
        return (dq, dk.sum(0), dv.sum(0), dbias, dw1.sum(0), db1.sum(0), dw2t.sum(0).t(), db2.sum(0), None)


def fused_dape_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
    w2: torch.Tensor, b2: torch.Tensor, *, variant: str = "concat_residual", causal: bool, toeplitz: bool,
    first: int = 0, slope: float = 0.01,
) -> torch.Tensor:
    """DAPE v1 attention ``[B, H, Nq, d]`` (module docstring); queries are tokens ``first .. first + Nq - 1``.

    ``bias``: ``[H, 2 Nk - 1]`` Toeplitz row (``toeplitz=True``) or ``[H, Nq, Nk]``; ``w1 [D, 2H or H]``,
    ``w2 [H, D]``: the MLP's ``fc1``/``fc2`` weights. CUDA tensors go to the Triton kernel.
    """
    if variant not in VARIANT_CODES:
        raise LenbenchError(f"unknown DAPE variant {variant!r} (choose from {', '.join(VARIANT_CODES)})")
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise LenbenchError(f"fused DAPE needs q [B,H,Nq,d], k = v [B,H,Nk,d]; got {list(q.shape)}, {list(k.shape)}")
    if w1.shape[1] != (q.shape[1] if variant == "add_residual" else 2 * q.shape[1]):
        raise LenbenchError(f"DAPE {variant} with {q.shape[1]} heads cannot take fc1 of shape {list(w1.shape)}")
    meta = {"variant": variant, "causal": bool(causal), "toeplitz": bool(toeplitz), "first": int(first),
            "scale": 1.0 / q.shape[-1] ** 0.5, "slope": float(slope)}
    if q.is_cuda:
        from lenbench.pe import dape_triton

        return dape_triton.TritonDAPEFunction.apply(q, k, v, bias, w1, b1, w2, b2, meta)
    if q.dtype != torch.float32:
        raise LenbenchError(f"the fused DAPE CPU kernel computes fp32, got {q.dtype}")
    return FusedDAPEFunction.apply(q, k, v, bias, w1, b1, w2, b2, meta)


def applies(q: torch.Tensor) -> bool:
    """The fused kernel computes attention on these queries: CPU fp32 with the C kernel compiled, or
    CUDA with Triton importable; never inside a ``torch.compile`` trace."""
    if torch.compiler.is_compiling() or not usable(q.device):
        return False
    return q.is_cuda or q.dtype == torch.float32


def dape_attention(pe: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                   causal: bool) -> torch.Tensor:
    """:func:`fused_dape_attention` for a :class:`~lenbench.pe.dape.DAPE` layer at positions ``pos`` (all
    keys); q holds the last ``Nq`` queries. The base bias is a Toeplitz row where the base is
    translation invariant and the positions are ``arange``, else its full ``[H, Nq, Nk]`` block."""
    n, nq = k.shape[-2], q.shape[-2]
    toeplitz = type(pe.base).translation_invariant and not type(pe).has_hook("positions")
    if not toeplitz:
        return _full_bias_blocks(pe, q, k, v, pos, causal)
    distances = torch.arange(2 * n - 1, device=pos.device, dtype=pos.dtype)  # i - j = n-1 .. -(n-1)
    bias = pe.base.bias(pos[n - 1 :], distances)[:, 0]
    return fused_dape_attention(
        q, k, v, bias.float(), pe.fc1.weight, pe.fc1.bias, pe.fc2.weight, pe.fc2.bias, variant=pe.variant,
        causal=causal, toeplitz=True, first=n - nq,
    )


def full_bias_block(pe: Any, heads: int, n: int) -> int:
    """Queries per block of :func:`_full_bias_blocks`: the block's ``[H, block, N]`` bias plus the base's
    own ``[block, N, width]`` activations (FIRE's MLP) stay within :data:`FULL_BIAS_BUDGET` elements;
    a multiple of the kernel's 64-query tiles where more than one tile fits."""
    width = heads + int(getattr(getattr(pe.base, "fc1", None), "out_features", 0))
    block = max(1, FULL_BIAS_BUDGET // max(1, n * width))
    return block if block < 64 else block // 64 * 64


def _full_bias_blocks(pe: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                      causal: bool) -> torch.Tensor:
    """A base without a Toeplitz row (FIRE: its bias depends on ``i``, not only ``i - j``; sampled
    positions): the kernel runs per block of queries, each block's ``[H, block, keys]`` bias computed
    just before it (causal blocks take only the keys up to their last query). When a gradient is
    wanted and there is more than one block, each runs under activation checkpointing, so the backward
    recomputes the bias from the base's parameters instead of keeping it: the bias, its gradient and
    the base's activations exist for one block at a time, ``O(H block N)``, never ``[H, N, N]``; the
    price is one more bias and kernel forward per block. One block (short sequences, e.g. CHE) keeps
    its bias, at most the budget. Rows are independent, so this is exact."""
    n, nq = k.shape[-2], q.shape[-2]
    block = full_bias_block(pe, q.shape[1], n)
    weights = (pe.fc1.weight, pe.fc1.bias, pe.fc2.weight, pe.fc2.bias)

    def run(first: int, qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
        bias = pe.base.bias(pos[first : first + qb.shape[-2]], pos[: kb.shape[-2]]).float()
        return fused_dape_attention(qb, kb, vb, bias, *weights, variant=pe.variant, causal=causal, toeplitz=False,
                                    first=first)

    train = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *weights, *pe.base.parameters()))
    train = train and block < nq
    outs = []
    for a in range(0, nq, block):
        first = n - nq + a
        qb = q[:, :, a : a + block]
        keys = min(n, first + qb.shape[-2]) if causal else n
        args = (first, qb, k[:, :, :keys], v[:, :, :keys])
        outs.append(checkpoint(run, *args, use_reentrant=False) if train else run(*args))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def usable(device: torch.device) -> bool:
    """A kernel serves ``device``: the compiled C kernel on CPU, Triton on CUDA (both off with
    ``LENBENCH_DAPE_KERNEL=0``); :func:`applies` also checks the queries' dtype and tracing."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    if device.type == "cuda":
        from lenbench.pe import dape_triton

        return dape_triton.available()
    return device.type == "cpu" and available()
