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
from typing import TYPE_CHECKING

import torch

from lenbench import native

if TYPE_CHECKING:
    from lenbench.pe.bias import FIRE

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


def applies(pe: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """The kernel computes this call: CPU, non-negative integer positions, no gradient wanted, kernel compiled."""
    wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in pe.parameters())
    integer = not q_pos.is_floating_point() and not k_pos.is_floating_point()
    return (
        not _off and not wants_grad and integer and q_pos.device.type == "cpu" and k_pos.device.type == "cpu"
        and q_pos.numel() > 0 and k_pos.numel() > 0 and not torch.compiler.is_compiling() and available()
        and int(q_pos.min()) >= 0 and int(k_pos.min()) >= 0
    )


def fire_bias(pe: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor, future_from: int | None = None) -> torch.Tensor:
    """``[H, Nq, Nk]`` fp32: FIRE's bias (:class:`~lenbench.pe.bias.FIRE`) at integer positions; with
    ``future_from``, -inf on keys ``t > future_from + a`` for query row ``a`` (the causal mask)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the FIRE kernel is not available (fire_kernel.available() is False)")
    qp, kp = q_pos.to(torch.int64).contiguous(), k_pos.to(torch.int64).contiguous()
    top = max(int(qp.max()), int(kp.max()))
    with torch.no_grad():
        num, den = (t.contiguous() for t in pe.tables(top))  # psi(|i - j|); the normaliser by position
        width, heads = pe.fc1.out_features, pe.fc2.out_features
        hp = -(-heads // PAD) * PAD
        w1 = pe.fc1.weight.detach()[:, 0].float().contiguous()
        b1 = pe.fc1.bias.detach().float().contiguous()
        w2t = torch.zeros(width, hp)
        w2t[:, :heads] = pe.fc2.weight.detach().t()
        b2 = torch.zeros(hp)
        b2[:heads] = pe.fc2.bias.detach()
    out = torch.empty(heads, qp.shape[0], kp.shape[0], dtype=torch.float32)
    ptr = torch.Tensor.data_ptr
    if lib.fire_bias(ptr(qp), qp.shape[0], ptr(kp), kp.shape[0], ptr(num), ptr(den), ptr(w1), ptr(b1), ptr(w2t),
                     ptr(b2), width, heads, hp, float(pe.negative_slope), int(pe.ctx.causal),
                     -1 if future_from is None else int(future_from), ptr(out),
                     torch.get_num_threads()):
        raise RuntimeError("the FIRE kernel rejected its head padding")
    return out
