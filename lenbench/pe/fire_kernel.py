"""FIRE's ``[H, Nq, Nk]`` bias through the C kernel ``fire_bias.c``: the hidden layer once per pair for all heads.

Used by :meth:`lenbench.pe.bias.FIRE.bias` where no gradient is needed (evaluation, or FIRE's
parameters frozen), on CPU, at integer positions: then ``x = sign(d) psi(|d|) / den(p)`` only needs
``psi`` on the integer distances and the normaliser on the integer positions, both tabulated by
:meth:`~lenbench.pe.bias.FIRE.tables` with :func:`~lenbench.pe.bias.fire_input`'s own ``fire_psi``.
The kernel is compiled on first use (:mod:`lenbench.native`); without a compiler, or with
``LENBENCH_FIRE_KERNEL=0``, FIRE keeps its PyTorch path. ``python benchmarks/attention.py --pes fire`` measures it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lenbench import native
from lenbench.errors import LenbenchError

SOURCE = Path(__file__).with_name("fire_bias.c")
SWITCH = "LENBENCH_FIRE_KERNEL"
_off = False  # set by :func:`disabled`
PAD = 48  # heads are zero-padded to a multiple of this: the kernel's heads per pass (16 or 12) divide it


_P, _I = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = (("fire_bias", (_P, _I, _P, _I) + (_P,) * 6 + (_I, _I, _I, ctypes.c_float, _I, _I, _P, _I)),)


def _library() -> ctypes.CDLL | None:
    return native.load(SOURCE, SWITCH, SIGNATURES)


@contextmanager
def disabled() -> Iterator[None]:
    """FIRE takes its PyTorch path inside this block (tests and benchmarks compare the two)."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def available() -> bool:
    """Whether the compiled kernel can be used in this process (compiles it on the first call)."""
    return _library() is not None


def applies(q_pos: torch.Tensor, k_pos: torch.Tensor, wants_grad: bool) -> bool:
    """The kernel computes this call: CPU, non-negative integer positions, no gradient wanted, kernel compiled."""
    integer = not q_pos.is_floating_point() and not k_pos.is_floating_point()
    return (
        not _off and not wants_grad and integer and q_pos.device.type == "cpu" and k_pos.device.type == "cpu"
        and q_pos.numel() > 0 and k_pos.numel() > 0 and not torch.compiler.is_compiling() and available()
        and int(q_pos.min()) >= 0 and int(k_pos.min()) >= 0
    )


def fire_bias(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor],
    fc1: nn.Linear,
    fc2: nn.Linear,
    negative_slope: float,
    causal: bool,
    future_from: int | None = None,
) -> torch.Tensor:
    """``[H, Nq, Nk]`` fp32: FIRE's bias ``fc2(act(fc1(num[|i - j|] / den[later])))`` at integer positions,
    from FIRE's ``tables`` (numerator over distances, denominator over positions, both ``0..max position``)
    and its two layers; with ``future_from``, -inf on keys ``t > future_from + a`` for query row ``a``."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the FIRE kernel is not available (fire_kernel.available() is False)")
    qp, kp = q_pos.to(torch.int64).contiguous(), k_pos.to(torch.int64).contiguous()
    native.require("FIRE bias", "query positions", qp, (None,), torch.int64, "contiguous")
    native.require("FIRE bias", "key positions", kp, (None,), torch.int64, "contiguous")
    for name, table in zip(("numerator table", "denominator table"), tables, strict=True):
        native.require("FIRE bias", name, table.detach().float(), (None,), layout="any")
    if fc1.in_features != 1 or fc2.in_features != fc1.out_features:
        raise LenbenchError(f"FIRE bias kernel: layers {fc1.in_features}->{fc1.out_features} and "
                            f"{fc2.in_features}->{fc2.out_features}, expected 1->width and width->heads")
    if qp.numel() == 0 or kp.numel() == 0 or min(int(qp.min()), int(kp.min())) < 0:
        raise LenbenchError("FIRE bias kernel: positions must be non-empty and non-negative")
    top = max(int(qp.max()), int(kp.max()))
    if min(t.shape[0] for t in tables) <= top:
        raise RuntimeError(f"FIRE's tables end before position {top}")
    with torch.no_grad():
        num, den = (t.detach().float().contiguous() for t in tables)
        width, heads = fc1.out_features, fc2.out_features
        hp = -(-heads // PAD) * PAD
        w1 = fc1.weight.detach()[:, 0].float().contiguous()
        b1 = fc1.bias.detach().float().contiguous()
        w2t = torch.zeros(width, hp)
        w2t[:, :heads] = fc2.weight.detach().t()
        b2 = torch.zeros(hp)
        b2[:heads] = fc2.bias.detach()
    out = torch.empty(heads, qp.shape[0], kp.shape[0], dtype=torch.float32)
    ptr = torch.Tensor.data_ptr
    if lib.fire_bias(ptr(qp), qp.shape[0], ptr(kp), kp.shape[0], ptr(num), ptr(den), ptr(w1), ptr(b1), ptr(w2t),
                     ptr(b2), width, heads, hp, float(negative_slope), int(causal),
                     -1 if future_from is None else int(future_from), ptr(out),
                     torch.get_num_threads()):
        raise LenbenchError("the FIRE kernel refused its sizes (head padding, width or positions)")
    return out
