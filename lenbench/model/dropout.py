"""Inverted dropout with a cheaper CPU mask: ``y = x * [u < 1 - p] / (1 - p)``, optionally ``skip + y``.

Same distribution as ``nn.Dropout`` (Srivastava et al. 2014, the inverted form of
``torch.nn.functional.dropout``): each element is kept with probability ``1 - p`` and scaled by
``1 / (1 - p)``. Only the source of the uniform draw differs on CPU, in two tiers:

- the C kernel ``dropout.c`` (fp32, compiled on first use by :mod:`lenbench.native`;
  ``LENBENCH_DROPOUT_KERNEL=0`` turns it off): one 64-bit seed drawn from torch's generator per
  call, then SplitMix64 over the element index, two 32-bit uniforms ``u`` per output, compared
  with ``round((1 - p) 2^32)``; the mask is applied, scaled and added to the residual in one pass,
  and the backward regenerates it from the seed instead of storing it;
- otherwise :func:`keep_mask`: one 64-bit draw of torch's CPU generator per two elements (half
  the cost of ``bernoulli_``, which draws one value per element).

Either way the keep probability is exact to 2^-32 (finer than a float32 uniform's 2^-24), and
the draws come from torch's default generator, so ``torch.manual_seed`` and a restored
``torch.get_rng_state()`` reproduce the masks exactly (``python benchmarks/che_kernels.py``
measures both). On CUDA, and when not training, it is ``F.dropout`` (a fused kernel there).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lenbench import native
from lenbench.errors import LenbenchError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
SOURCE = Path(__file__).with_name("dropout.c")
SWITCH = "LENBENCH_DROPOUT_KERNEL"


_P, _I, _U, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float
SIGNATURES = (("dropout_forward", (_P, _P, _P, _I, _U, _U, _F, _I)), ("dropout_backward", (_P, _P, _I, _U, _U, _F, _I)))


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SWITCH, SIGNATURES)


def kernel_available() -> bool:
    """Whether the compiled dropout kernel can be used in this process (compiles it on the first call)."""
    return _library() is not None


def threshold(keep: float) -> int:
    """``round(keep 2^32)``: a 32-bit uniform ``u`` is kept when ``u < threshold``."""
    return round(keep * 2**32)


def keep_mask(shape: torch.Size, keep: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, each element True with probability ``keep`` (to 2^-32), from torch's generator."""
    n = shape.numel()
    words = torch.randint(_INT64_MIN, _INT64_MAX, ((n + 1) // 2,), dtype=torch.int64, device=device)
    halves = words.view(torch.int32)[:n]  # two uniform signed 32-bit values per draw
    signed = threshold(keep) - 2**31  # u < keep <=> signed value < threshold - 2^31
    if signed > 2**31 - 1:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return (halves < signed).view(shape)


def _seed() -> int:
    """One 64-bit seed from torch's default generator, as an unsigned integer."""
    return int(torch.randint(_INT64_MIN, _INT64_MAX, (1,), dtype=torch.int64)) & (2**64 - 1)


class KernelDropout(torch.autograd.Function):
    """``skip + dropout(x)`` (or ``dropout(x)`` with ``skip`` None) through ``dropout.c``; contiguous fp32."""

    @staticmethod
    def forward(ctx, x, skip, p):  # type: ignore[override]
        native.require("dropout", "input", x, tuple(x.shape), layout="contiguous")
        if skip is not None:
            native.require("dropout", "residual", skip, tuple(x.shape), layout="contiguous")
        if not 0.0 < p < 1.0:
            raise LenbenchError(f"dropout kernel: p must be in (0, 1), got {p}")
        seed, limit, scale = _seed(), threshold(1.0 - p), 1.0 / (1.0 - p)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        if _library().dropout_forward(x.data_ptr(), None if skip is None else skip.data_ptr(), out.data_ptr(),
                                      x.numel(), seed, limit, scale, torch.get_num_threads()):
            raise LenbenchError(f"dropout kernel refused {x.numel()} elements at keep threshold {limit}")
        ctx.draw, ctx.has_skip, ctx.shape = (seed, limit, scale), skip is not None, tuple(x.shape)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad = grad.contiguous()
        dx = torch.empty_like(grad)
        native.require("dropout", "output gradient", grad, tuple(ctx.shape), layout="contiguous")
        if _library().dropout_backward(grad.data_ptr(), dx.data_ptr(), grad.numel(), *ctx.draw,
                                       torch.get_num_threads()):
            raise LenbenchError(f"dropout kernel refused {grad.numel()} elements")
        return dx, (grad if ctx.has_skip else None), None


def _kernel_serves(x: torch.Tensor, skip: torch.Tensor | None) -> bool:
    same = skip is None or (skip.shape == x.shape and skip.dtype == x.dtype)
    eager = not torch.compiler.is_compiling()  # torch.compile traces the PyTorch path
    return x.device.type == "cpu" and x.dtype == torch.float32 and same and eager and kernel_available()


def dropout(x: torch.Tensor, p: float, training: bool, skip: torch.Tensor | None = None) -> torch.Tensor:
    """``F.dropout(x, p, training)``, plus ``skip`` when given, with the cheaper CPU masks above."""
    if not training or p == 0.0 or x.device.type != "cpu":
        y = F.dropout(x, p, training)
    elif p == 1.0:
        y = x * 0.0
    elif _kernel_serves(x, skip):
        contiguous = None if skip is None else skip.contiguous()
        return KernelDropout.apply(x.contiguous(), contiguous, float(p))
    else:
        keep = 1.0 - p
        y = x * keep_mask(x.shape, keep, x.device).to(x.dtype).mul_(1.0 / keep)
    return y if skip is None else skip + y


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training mask comes from the kernel or :func:`keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def residual(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``skip + dropout(x)`` (one fused pass on CPU)."""
        return dropout(x, self.p, self.training, skip)
