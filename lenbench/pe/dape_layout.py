"""Where a DAPE base bias's rows lie in memory, for the fused kernels (C, :mod:`lenbench.pe.dape_fused`;
Triton, :mod:`lenbench.pe.dape_triton`): a Toeplitz row ``[H, 2N - 1]`` or a full ``[H, Nq, Nk]`` bias."""

from __future__ import annotations

import torch

from lenbench.errors import LenbenchError


def bias_layout(bias: torch.Tensor, toeplitz: bool, nq: int, nk: int, first: int) -> tuple[int, int, int]:
    """(element offset of query row 0 / key 0, head stride, query-row stride) of the bias for the kernel."""
    if toeplitz:
        if bias.shape[-1] != 2 * nk - 1:
            raise LenbenchError(f"Toeplitz DAPE bias needs 2N-1 = {2 * nk - 1} columns, got {bias.shape[-1]}")
        return nk - 1 - first, 2 * nk - 1, -1
    if tuple(bias.shape[1:]) != (nq, nk):
        raise LenbenchError(f"full DAPE bias must be [H, {nq}, {nk}], got {list(bias.shape)}")
    return 0, nq * nk, nk
