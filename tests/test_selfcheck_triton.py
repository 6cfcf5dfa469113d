"""The fused-DAPE self-check run on the Triton kernel itself: on a GPU when present, else on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1``; the wrapper below routes CPU tensors to Triton)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from lenbench.model import selfcheck
from lenbench.pe import dape_fused, dape_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LATE = DEVICE.type == "cpu" and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if DEVICE.type == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytestmark = [
    pytest.mark.skipif(not dape_triton.importable(), reason="triton is not installed (pip install triton)"),
    pytest.mark.skipif(LATE, reason="triton was imported before TRITON_INTERPRET=1 was set; run this file alone"),
]


def test_the_triton_kernel_passes_its_parity_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case of the check (DAPE-Kerple causal and bidirectional, DAPE-FIRE's full bias, DAPE-ALiBi
    add_residual; outputs and all gradients) within 1e-4 of ``explicit``, and a shifted kernel fails."""

    def via_triton(q, k, v, bias, w1, b1, w2, b2, *, variant="concat_residual", causal, toeplitz, first=0,
                   slope=0.01):
        meta = {"variant": variant, "causal": bool(causal), "toeplitz": bool(toeplitz), "first": int(first),
                "scale": 1.0 / q.shape[-1] ** 0.5, "slope": float(slope)}
        return dape_triton.TritonDAPEFunction.apply(q, k, v, bias, w1, b1, w2, b2, meta)

    monkeypatch.setattr(dape_fused, "fused_dape_attention", via_triton)
    found = selfcheck.run_check("dape_fused", DEVICE)
    assert found.ok and found.max_error < 1e-4, found
    monkeypatch.setattr(dape_fused, "fused_dape_attention", lambda *a, **k: via_triton(*a, **k) * 1.001)
    assert not selfcheck.run_check("dape_fused", DEVICE).ok
