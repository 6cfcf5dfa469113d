"""DAPE: Data-Adaptive Positional Encoding (Zheng et al., NeurIPS 2024; docs/dape.md §1).

``S = QK^T / sqrt(d_head)`` (scaled, as the code does, docs/dape.md §1.3) and ``B`` the base bias of
every head. ``f`` is a two-layer MLP applied point-wise at every (i, j) across heads:
``Linear(2h -> D) -> LeakyReLU(0.01) -> Linear(D -> h)``, PyTorch default init, one per layer
(docs/dape.md §1.4). Variants (docs/dape.md §1.2):

- ``concat_residual`` (default, Eq. 3): ``S + B + f([S; B])``
- ``concat`` (Eq. 2): ``S + f([S; B])``
- ``add_residual``: ``S + B + f(S + B)`` with ``f: h -> D -> h``

f sees unmasked scores; the causal mask and softmax come after (docs/dape.md §1.3). ``[S; B]``, f and
the sum are formed in fp32 also under autocast (issue 16): the returned logits are fp32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.pe import dape_fused
from lenbench.pe.base import PEContext, PositionalEncoding, fp32_region, relative_distance
from lenbench.pe.bias import ALiBi, KerpleLog, LeakyFIRE
from lenbench.pe.registry import PES

VARIANTS = ("concat_residual", "concat", "add_residual")


class DAPE(PositionalEncoding):
    """DAPE over a base bias PE: logits ``S + B + f([S; B])`` (variants in the module docstring).

    Causal (LM) and bidirectional (CHE encoder) forms are the same formula: f is point-wise in
    (i, j), so each form is DAPE over the base's own causal or bidirectional ``B`` (e.g. Kerple's
    separate past/future parameters). In the causal form f also sees future entries of S and B;
    their outputs are overwritten by the mask, so nothing leaks (docs/dape.md §1.3).
    Parameters per layer: ``(2h or h) D + D + D h + h`` plus the base's.
    """

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
        self.base = self.base_class(ctx, **self.base_options())
        h = ctx.heads
        self.fc1 = nn.Linear(h if variant == "add_residual" else 2 * h, self.hidden)
        self.fc2 = nn.Linear(self.hidden, h)

    def base_options(self) -> dict[str, Any]:
        """Options for the base bias (DAPE-FIRE passes its ``l0``); none by default."""
        return {}

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
        with fp32_region(s.device):  # [S; B], f and S + B + f in fp32 under autocast (issue 16)
            s = s.float()
            b = self.base.bias(q_pos, k_pos)
            f = self.adaptive(s, b)
            if self.variant == "concat":
                return s + f
            return s + b.to(s.dtype) + f

    def fused_ok(self, q: torch.Tensor) -> bool:
        """Whether :meth:`fused_attention` computes attention for these queries (:func:`dape_fused.applies`)."""
        return dape_fused.applies(q)

    def fused_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        """``softmax(scores) v`` in the fused kernel, equal to the ``explicit`` backend over :meth:`scores`
        (:mod:`lenbench.pe.dape_fused`); q holds the last ``Nq`` of the ``N`` positions ``pos``."""
        return dape_fused.dape_attention(self, q, k, v, pos, causal)


@PES.register("dape-kerple")
class DAPEKerple(DAPE):
    """DAPE over Kerple-log (docs/dape.md §1.5): ``S + B_kerple + f([S; B_kerple])``; the Kerple
    parameters are per layer and follow :class:`~lenbench.pe.bias.KerpleLog`'s two forms."""

    name = "dape-kerple"
    description = "DAPE (Zheng et al. 2024) over Kerple-log: S + B + MLP([S;B]) per layer"
    baseline = "kerple"
    base_class = KerpleLog


@PES.register("dape")
class DAPEDefault(DAPEKerple):
    """``dape`` is ``dape-kerple`` (docs/architecture.md)."""

    name = "dape"
    description = "alias of dape-kerple"


@PES.register("dape-alibi")
class DAPEALiBi(DAPE):
    """DAPE over ALiBi (docs/dape.md §1.5): ``S + B_alibi + f([S; B_alibi])``, fixed slopes."""

    name = "dape-alibi"
    description = "DAPE (Zheng et al. 2024) over ALiBi: S + B + MLP([S;B]) per layer"
    baseline = "alibi"
    base_class = ALiBi


class _FIREBaseOption:
    """Mixin for the DAPE forms over FIRE: options for the FIRE inside.

    - ``fire_width``: the FIRE MLP's width. Default ``None`` = DAPE's ``hidden``, as the official code
      sizes both MLPs with one ``mlp_width`` (``positional_embeddings.py`` ``FIRE_C.__init__``:
      ``nn.Linear(1, mlp_width)`` and ``nn.Linear(num_heads * 2, mlp_width)``; ``FIRE_DAPEV2`` the same),
      so ``dape-fire:hidden=64`` (DAPE's CHE width) has a 64-wide FIRE. ``fire_width=32`` is lenbench's
      earlier form (FIRE's own default whatever ``hidden`` is).
    - ``l0``: FIRE's fixed threshold part (class default 512, :class:`~lenbench.pe.bias.FIRE`); the ppl
      and timing suites set DAPE's NeoX value per training length (:func:`lenbench.pe.defaults.dape_neox_l0`:
      64 at T = 512 for V1, 256 for V2).
    """

    def __init__(self, ctx: PEContext, l0: float = 512.0, fire_width: int | None = None, **options: Any) -> None:
        self.l0 = float(l0)
        if fire_width is not None and int(fire_width) < 1:
            raise LenbenchError(f"DAPE's FIRE width must be >= 1, got {fire_width}")
        self.fire_width = None if fire_width is None else int(fire_width)
        super().__init__(ctx, **options)  # type: ignore[call-arg]

    def base_options(self) -> dict[str, Any]:
        width = self.fire_width if self.fire_width is not None else self.hidden  # type: ignore[attr-defined]
        return {"l0": self.l0, "mlp_width": width}


@PES.register("dape-fire")
class DAPEFIRE(_FIREBaseOption, DAPE):
    """DAPE over FIRE (docs/dape.md §1.5): ``S + B_fire + f([S; B_fire])``. As in DAPE's ``FIRE_C``, the
    FIRE MLP inside uses LeakyReLU(0.01) and is ``hidden`` wide (``fire_width`` option); FIRE's defaults
    and both forms otherwise; ``l0`` option (:class:`_FIREBaseOption`)."""

    name = "dape-fire"
    description = "DAPE (Zheng et al. 2024) over FIRE (LeakyReLU MLP): S + B + MLP([S;B]) per layer"
    baseline = "fire"
    base_class = LeakyFIRE


# --------------------------------------------------------------------------------------------------
# DAPE V2, ``DAPE_{1xk}`` (Zheng et al., arXiv 2410.04798; docs/dape.md §2).
#
# V1's Concat_Residual form with the point-wise MLP replaced by two ``1 x k`` convolutions along
# the key axis (docs/dape.md §2.1, code ``Kerple_DAPEV2``/``Alibi_DAPEV2``/``FIRE_DAPEV2``):
#
# - ``Z = [S; B]`` ``[b, 2h, Nq, Nk]``, ``S = QK^T / sqrt(d_head)``, ``B`` the base bias;
# - causal: ``Z_ij = 0`` where ``k_pos[j] > q_pos[i]`` (zeros, by absolute position) so no future key
#   reaches a visible entry through the convolution;
# - ``F = Conv_{D->h}(LeakyReLU_{0.01}(Conv_{2h->D}(Z)))``, kernels ``(1, k)``, padding ``(0, k//2)``,
#   stride 1, with conv biases, PyTorch default init, one module per layer;
# - logits ``S + B + F``; the causal mask and softmax come after.
#
# One deviation, causal form only: the zeroed future is extended by ``k//2`` zero columns past the
# last key before the convolutions, so the hidden activations right of a row's last visible key are
# always ``LeakyReLU(conv(zeros and past entries))``. The released code zero-pads the *hidden*
# activations at the sequence end instead, so its last query row (only) sees different padding from
# every other row and depends on whether later tokens exist. With the extension every row is computed
# alike, a prefix gives the same logits as the full sequence, and query blocks that skip future keys
# are exact.
#
# Odd ``k`` only (even ``k`` breaks the shapes in the released code, docs/dape.md §2.2). The kernel is
# one query tall, so query rows never mix and query blocks are exact.


class DAPEV2(PositionalEncoding):
    """DAPE V2 over a base bias PE: ``S + B + Conv(LeakyReLU(Conv(zero_future([S; B]))))``.

    Causal (LM): future entries are zeroed when ``zero_future`` (default True; False reproduces the
    leaky "cheating" model of docs/dape.md §2.1 and is not causal). Bidirectional (CHE encoder; ours,
    docs/dape.md §6 item 4): nothing is zeroed and the convolutions see the whole key row, over the
    base's bidirectional bias.
    Parameters per layer: ``2h D k + D + D h k + h`` plus the base's.
    """

    base_class: ClassVar[type[PositionalEncoding]]
    shared = False

    def __init__(
        self, ctx: PEContext, kernel: int = 3, hidden: int = 32, zero_future: bool = True, **options: Any
    ) -> None:
        super().__init__(ctx, **options)
        if int(kernel) < 1 or int(kernel) % 2 == 0:
            raise LenbenchError(f"DAPE V2 kernel must be an odd width >= 1 (1x1, 1x3, ...), got {kernel}")
        if int(hidden) < 1:
            raise LenbenchError(f"DAPE hidden width must be >= 1, got {hidden}")
        self.kernel = int(kernel)
        self.hidden = int(hidden)
        self.zero_future = bool(zero_future)
        # Without zeroing, a causal model's visible logits read future keys (attention keeps them all).
        self.reads_future_keys = ctx.causal and not self.zero_future
        self.base = self.base_class(ctx, **self.base_options())
        h = ctx.heads
        self.conv1 = nn.Conv2d(2 * h, self.hidden, (1, self.kernel), padding=(0, self.kernel // 2))
        self.conv2 = nn.Conv2d(self.hidden, h, (1, self.kernel), padding=(0, self.kernel // 2))

    def base_options(self) -> dict[str, Any]:
        """Options for the base bias (DAPE-V2-FIRE passes its ``l0``); none by default."""
        return {}

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The base bias B (DAPE V2's own output depends on the scores, see :meth:`scores`)."""
        return self.base.bias(q_pos, k_pos)

    def adaptive(self, s: torch.Tensor, b: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The convolution branch F ``[B, H, Nq, Nk]`` for scores ``s`` and base bias ``b`` ``[H, Nq, Nk]``.

        ``W1 = [W_s | W_b]`` along input channels, so ``W_b * B`` is computed once per block.
        """
        b, n_keys, r = b.to(s.dtype), s.shape[-1], self.kernel // 2
        if self.ctx.causal and self.zero_future:
            visible = (relative_distance(q_pos, k_pos) >= 0).to(s.dtype)
            s, b = F.pad(s * visible, (0, r)), F.pad(b * visible, (0, r))
        h, pad = self.ctx.heads, (0, r)
        w_s, w_b = self.conv1.weight[:, :h], self.conv1.weight[:, h:]
        hidden = F.conv2d(s, w_s, self.conv1.bias, padding=pad) + F.conv2d(b[None], w_b, padding=pad)
        return self.conv2(F.leaky_relu(hidden, 0.01))[..., :n_keys]

    def scores(
        self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> torch.Tensor:
        with fp32_region(s.device):  # fp32 under autocast (issue 16)
            s = s.float()
            b = self.base.bias(q_pos, k_pos)
            return s + b.to(s.dtype) + self.adaptive(s, b, q_pos, k_pos)


@PES.register("dape-v2-kerple")
class DAPEV2Kerple(DAPEV2):
    """DAPE V2 over Kerple-log (docs/dape.md §2.1, ``Kerple_DAPEV2``); Kerple parameters per layer,
    in :class:`~lenbench.pe.bias.KerpleLog`'s causal and bidirectional forms."""

    name = "dape-v2-kerple"
    description = "DAPE V2 (1xk conv over keys, k=3) over Kerple-log, future entries zeroed"
    baseline = "kerple"
    base_class = KerpleLog


@PES.register("dape-v2-alibi")
class DAPEV2ALiBi(DAPEV2):
    """DAPE V2 over ALiBi (docs/dape.md §2.1, ``Alibi_DAPEV2``), fixed slopes."""

    name = "dape-v2-alibi"
    description = "DAPE V2 (1xk conv over keys, k=3) over ALiBi, future entries zeroed"
    baseline = "alibi"
    base_class = ALiBi


@PES.register("dape-v2-fire")
class DAPEV2FIRE(_FIREBaseOption, DAPEV2):
    """DAPE V2 over FIRE (docs/dape.md §2.1, ``FIRE_DAPEV2``); as in that code the FIRE MLP inside uses
    LeakyReLU(0.01) and is ``hidden`` wide (:class:`~lenbench.pe.bias.LeakyFIRE`, FIRE's defaults and both
    forms otherwise); ``l0`` option (the V2 configs' ``noise_seq_length: 512`` gives DAPE's ``l0 = 256``)."""

    name = "dape-v2-fire"
    description = "DAPE V2 (1xk conv over keys, k=3) over FIRE (LeakyReLU MLP), future entries zeroed"
    baseline = "fire"
    base_class = LeakyFIRE


__all__ = ["DAPEV2", "DAPEV2ALiBi", "DAPEV2FIRE", "DAPEV2Kerple"]
