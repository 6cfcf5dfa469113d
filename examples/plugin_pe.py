"""A user-defined PE: a learned linear distance penalty per head and side (ALiBi with learned slopes).

B_h(i, j) = -softplus(w_h^past) (i - j) for j <= i, and -softplus(w_h^future) (j - i) for j > i.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenbench.pe import PEContext, PositionalEncoding, relative_distance


class LinearBias(PositionalEncoding):
    name = "linear-bias"
    description = "learned per-head linear distance penalty, separate past/future slopes"

    def __init__(self, ctx: PEContext, init: float = 0.5, **options: Any) -> None:
        super().__init__(ctx, **options)  # unknown options raise a clear error
        self.w = nn.Parameter(torch.full((2, ctx.heads), float(init)))  # row 0: past keys, row 1: future keys

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        d = relative_distance(q_pos, k_pos)  # [Nq, Nk] fp32, i - j
        slope = F.softplus(self.w)[:, :, None, None]  # [2, H, 1, 1], positive
        return torch.where(d >= 0, -slope[0] * d, slope[1] * d)  # [H, Nq, Nk]
