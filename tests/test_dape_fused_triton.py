"""The Triton fused DAPE kernel against the plain formula: on a GPU when present, else on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``, small shapes); skipped when Triton is not installed."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from test_dape_fused import assert_matches, case

from lenbench.pe import dape_fused, dape_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton reads TRITON_INTERPRET when it is imported: set it (without a GPU) before anything imports it.
LATE = DEVICE == "cpu" and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytestmark = [
    pytest.mark.skipif(not dape_triton.importable(), reason="triton is not installed (pip install triton)"),
    pytest.mark.skipif(LATE, reason="triton was imported before TRITON_INTERPRET=1 was set; run this file alone"),
]


@pytest.mark.parametrize(
    ("variant", "causal", "toeplitz"),
    [("concat_residual", True, True), ("concat", False, True), ("add_residual", True, False),
     ("concat_residual", False, False)],
)
def test_triton_kernel_equals_the_plain_formula(variant: str, causal: bool, toeplitz: bool) -> None:
    """Odd lengths (21 keys over 16-key tiles), 3 heads padded to 16, D=5 padded to 16; the full-bias
    form reads the last 17 queries (``first=4``)."""
    first = 0 if toeplitz else 4
    leaves, full = case(variant, toeplitz, n=21, first=first, device=DEVICE)
    meta = {"variant": variant, "causal": causal, "toeplitz": toeplitz, "first": first,
            "scale": 1.0 / 8**0.5, "slope": 0.01}
    out = dape_triton.TritonDAPEFunction.apply(*leaves, meta)
    assert_matches(leaves, full, out, variant, causal, first)


def test_cuda_routing_needs_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA takes the fused kernel only where Triton imports (and a GPU exists); else ``explicit``."""
    cuda = torch.device("cuda")
    assert dape_fused.usable(cuda) == torch.cuda.is_available()
    monkeypatch.setattr(dape_triton, "importable", lambda: False)
    assert not dape_fused.usable(cuda)
