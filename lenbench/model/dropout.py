"""Inverted dropout with a cheaper CPU mask: ``y = x * [u < 1 - p] / (1 - p)``.

Same distribution as ``nn.Dropout`` (Srivastava et al. 2014, the inverted form of
``torch.nn.functional.dropout``): each element is kept with probability ``1 - p`` and scaled by
``1 / (1 - p)``. Only the source of the uniform draw differs on CPU: ``bernoulli_`` draws one
generator value per element (~7 ns each on a 2-core EPYC), while here one 64-bit draw of torch's
CPU generator gives two 32-bit uniforms ``u``, compared with ``round((1 - p) 2^32)``, so the keep
probability is exact to 2^-32 (finer than a float32 uniform's 2^-24), and a whole dropout call
over a CHE activation takes about half the time (``python benchmarks/che_kernels.py``).
The draw comes from torch's default generator, so ``torch.manual_seed`` and a restored
``torch.get_rng_state()`` reproduce the masks exactly. On CUDA, and when not training, it is
``F.dropout`` (a fused kernel there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def keep_mask(shape: torch.Size, keep: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, each element True with probability ``keep`` (to 2^-32), from torch's generator."""
    n = shape.numel()
    words = torch.randint(_INT64_MIN, _INT64_MAX, ((n + 1) // 2,), dtype=torch.int64, device=device)
    halves = words.view(torch.int32)[:n]  # two uniform signed 32-bit values per draw
    threshold = round(keep * 2**32) - 2**31  # u < keep <=> signed value < threshold
    if threshold > 2**31 - 1:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return (halves < threshold).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with :func:`keep_mask` on CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p == 1.0:
        return x * 0.0
    keep = 1.0 - p
    return x * keep_mask(x.shape, keep, x.device).to(x.dtype).mul_(1.0 / keep)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training mask comes from :func:`keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
