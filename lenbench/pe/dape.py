"""DAPE: Data-Adaptive Positional Encoding (Zheng et al., NeurIPS 2024; dape.md §1).

``S = QK^T / sqrt(d_head)`` (scaled, as the code does, dape.md §1.3) and ``B`` the base bias of
every head. ``f`` is a two-layer MLP applied point-wise at every (i, j) across heads:
``Linear(2h -> D) -> LeakyReLU(0.01) -> Linear(D -> h)``, PyTorch default init, one per layer
(dape.md §1.4). Variants (dape.md §1.2):

- ``concat_residual`` (default, Eq. 3): ``S + B + f([S; B])``
- ``concat`` (Eq. 2): ``S + f([S; B])``
- ``add_residual``: ``S + B + f(S + B)`` with ``f: h -> D -> h``

f sees unmasked scores; the causal mask and softmax come after (dape.md §1.3).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.pe.base import PEContext, PositionalEncoding
from lenbench.pe.bias import ALiBi, KerpleLog
from lenbench.pe.registry import PES

VARIANTS = ("concat_residual", "concat", "add_residual")


class DAPE(PositionalEncoding):
    """DAPE over a base bias PE: logits ``S + B + f([S; B])`` (see module docstring)."""

    base_class: ClassVar[type[PositionalEncoding]]
    shared = False

    def __init__(self, ctx: PEContext, variant: str = "concat_residual", hidden: int = 32, **options: Any) -> None:
        super().__init__(ctx, **options)
        if variant not in VARIANTS:
            raise LenbenchError(f"unknown DAPE variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if int(hidden) < 1:
            raise LenbenchError(f"DAPE hidden width must be >= 1, got {hidden}")
        self.variant = variant
        self.hidden = int(hidden)
        self.base = self.base_class(ctx)
        h = ctx.heads
        self.fc1 = nn.Linear(h if variant == "add_residual" else 2 * h, self.hidden)
        self.fc2 = nn.Linear(self.hidden, h)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The base bias B (DAPE's own output depends on the scores, see :meth:`scores`)."""
        return self.base.bias(q_pos, k_pos)

    def mlp_hidden(self, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """First layer pre-activation ``W1 [S; B] + b1`` as ``[B, Nq, Nk, D]``.

        ``W1 = [W_s | W_b]``, so ``W_b B + b1`` is computed once per block, not per batch row.
        """
        s_last = s.permute(0, 2, 3, 1)
        h = self.ctx.heads
        if self.variant == "add_residual":
            return F.linear(s_last + b.permute(1, 2, 0).to(s.dtype), self.fc1.weight, self.fc1.bias)
        w_s, w_b = self.fc1.weight[:, :h], self.fc1.weight[:, h:]
        from_bias = F.linear(b.permute(1, 2, 0).to(s.dtype), w_b, self.fc1.bias)
        return torch.matmul(s_last, w_s.t()) + from_bias

    def adaptive(self, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """f's output ``[B, H, Nq, Nk]`` for scores ``s`` and base bias ``b`` ``[H, Nq, Nk]``."""
        hidden = F.leaky_relu(self.mlp_hidden(s, b), 0.01)
        return self.fc2(hidden).permute(0, 3, 1, 2)

    def scores(
        self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> torch.Tensor:
        b = self.base.bias(q_pos, k_pos)
        f = self.adaptive(s, b)
        if self.variant == "concat":
            return s + f
        return s + b.to(s.dtype) + f


@PES.register("dape-kerple")
class DAPEKerple(DAPE):
    """DAPE over Kerple-log (dape.md §1.5): ``S + B_kerple + f([S; B_kerple])``; the Kerple
    parameters are per layer and follow :class:`~lenbench.pe.bias.KerpleLog`'s two forms."""

    name = "dape-kerple"
    description = "DAPE (Zheng et al. 2024) over Kerple-log: S + B + MLP([S;B]) per layer"
    base_class = KerpleLog


@PES.register("dape")
class DAPEDefault(DAPEKerple):
    """``dape`` is ``dape-kerple`` (DESIGN.md)."""

    name = "dape"
    description = "alias of dape-kerple"


@PES.register("dape-alibi")
class DAPEALiBi(DAPE):
    """DAPE over ALiBi (dape.md §1.5): ``S + B_alibi + f([S; B_alibi])``, fixed slopes."""

    name = "dape-alibi"
    description = "DAPE (Zheng et al. 2024) over ALiBi: S + B + MLP([S;B]) per layer"
    base_class = ALiBi
