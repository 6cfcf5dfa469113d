"""Fused DAPE v1 attention on CUDA in Triton: the same formula and contract as :mod:`lenbench.pe.dape_fused`.

Per program: ``BM`` queries of one batch row, all heads, looping over blocks of ``BN`` keys. A tile's
logits of every head are one ``[H, BM, BN]`` batched ``tl.dot``; DAPE's MLP across heads is two
matrix products on the tile flattened to ``[H, BM * BN]``: ``z = W_s S + W_b B + b1`` (``W1 = [W_s | W_b]``;
``add_residual``: ``W1 (S + B)``), ``f = W2 LeakyReLU(z) + b2``; then an online softmax per head and
``P V``. Forward memory: the output and one log-sum-exp per row and head. The backward recomputes each
tile (formulas in ``dape_fused.c``); dq is written per program, dk, dv, the base-bias gradient and the
weight gradients are accumulated with atomic adds. Heads, hidden width and head dim are zero-padded
to powers of two >= 16 (``tl.dot``'s minimum), which changes no value.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), which
the tests use; the kernels are defined on first use, so the variable only has to be set by then.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from lenbench.pe.dape_layout import bias_layout

VARIANT_CODES = {"concat_residual": 0, "concat": 1, "add_residual": 2}
BM, BN = 16, 16  # queries and keys per tile


def importable() -> bool:
    """Whether the ``triton`` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> bool:
    """Triton importable and a CUDA device present: the fused kernel serves CUDA attention."""
    return torch.cuda.is_available() and importable()


def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


@cache
def kernels() -> tuple[Any, Any]:
    """The forward and backward ``@triton.jit`` kernels, imported on first use (``TRITON_INTERPRET`` is read then)."""
    from lenbench.pe import dape_triton_kernels as kern

    return kern.forward, kern.backward


def _padded_weights(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, heads: int,
                    add: bool) -> tuple[torch.Tensor, ...]:
    """W_s, W_b ``[DP, HP]``, b1 ``[DP]``, W2 ``[HP, DP]``, b2 ``[HP]`` in fp32, zero-padded."""
    hp, dp = _pow2(heads), _pow2(w1.shape[0])
    dev, hidden = w1.device, w1.shape[0]
    ws, wb = torch.zeros(dp, hp, device=dev), torch.zeros(dp, hp, device=dev)
    ws[:hidden, :heads] = w1[:, :heads]
    if not add:
        wb[:hidden, :heads] = w1[:, heads:]
    pb1, pw2, pb2 = torch.zeros(dp, device=dev), torch.zeros(hp, dp, device=dev), torch.zeros(hp, device=dev)
    pb1[:hidden], pw2[:heads, :hidden], pb2[:heads] = b1, w2, b2
    return ws, wb, pb1, pw2, pb2


class TritonDAPEFunction(torch.autograd.Function):
    """Same arguments as :class:`lenbench.pe.dape_fused.FusedDAPEFunction`; computes in fp32."""

    @staticmethod
    def forward(ctx, q, k, v, bias, w1, b1, w2, b2, meta):  # type: ignore[override]
        forward, _ = kernels()
        dtype = q.dtype
        q, k, v = (t.detach().float().contiguous() for t in (q, k, v))
        bias = bias.detach().float().contiguous()
        b, h, nq, d = q.shape
        nk = k.shape[-2]
        weights = _padded_weights(*(t.detach().float() for t in (w1, b1, w2, b2)), h, meta["variant"] == "add_residual")
        offset, sh, si = _layout(bias, meta, nq, nk)
        out = torch.empty_like(q)
        lse = torch.empty(b, h, nq, device=q.device)
        grid = (triton_cdiv(nq, BM), b)
        forward[grid](q, k, v, bias.view(-1)[offset:], *weights, out, lse, h, nq, nk, d, meta["first"], sh, si,
                      meta["scale"], meta["slope"], HP=_pow2(h), DP=weights[0].shape[0], dP=_pow2(d), BM=BM, BN=BN,
                      VARIANT=VARIANT_CODES[meta["variant"]], CAUSAL=bool(meta["causal"]))
        ctx.save_for_backward(q, k, v, bias, out, lse, *weights)
        ctx.meta, ctx.dtype, ctx.hidden = meta, dtype, w1.shape[0]
        return out.to(dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        _, backward = kernels()
        q, k, v, bias, out, lse, *weights = ctx.saved_tensors
        meta, hidden = ctx.meta, ctx.hidden
        b, h, nq, d = q.shape
        nk = k.shape[-2]
        grad = grad.float().contiguous()
        delta = (grad * out).sum(-1).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dbias = torch.zeros_like(bias)
        dws, dwb, db1, dw2, db2 = (torch.zeros_like(w) for w in weights)
        offset, sh, si = _layout(bias, meta, nq, nk)
        grid = (triton_cdiv(nq, BM), b)
        backward[grid](q, k, v, bias.view(-1)[offset:], *weights, grad, lse, delta, dq, dk, dv,
                       dbias.view(-1)[offset:], dws, dwb, db1, dw2, db2, h, nq, nk, d, meta["first"], sh, si,
                       meta["scale"], meta["slope"], HP=_pow2(h), DP=weights[0].shape[0], dP=_pow2(d), BM=BM,
                       BN=BN, VARIANT=VARIANT_CODES[meta["variant"]], CAUSAL=bool(meta["causal"]))
        if meta["variant"] == "add_residual":
            dw1 = dws[:hidden, :h]
        else:
            dw1 = torch.cat([dws[:hidden, :h], dwb[:hidden, :h]], dim=1)
        dt = ctx.dtype
        return (dq.to(dt), dk.to(dt), dv.to(dt), dbias, dw1, db1[:hidden], dw2[:h, :hidden], db2[:h], None)


def triton_cdiv(a: int, b: int) -> int:
    """``ceil(a / b)``."""
    return -(-a // b)


def _layout(bias: torch.Tensor, meta: dict[str, Any], nq: int, nk: int) -> tuple[int, int, int]:
    return bias_layout(bias, meta["toeplitz"], nq, nk, meta["first"])
