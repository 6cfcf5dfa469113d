"""The small kernels of a CHE training step, each against its alternative, interleaved in one process.

1. Residual dropout ``skip + dropout(x)`` over ``[128, T, 64]``, forward + backward: ``F.dropout``
   (``bernoulli_`` per element), lenbench's torch path (:func:`lenbench.model.dropout.keep_mask`,
   one 64-bit draw per two elements) and its C kernel (SplitMix64 from one seed, mask, scale and
   add in one pass, mask regenerated in the backward).
2. Attention forward + backward at the anchor's tiny heads (batch 128, 8 heads of dim 8, a float
   bias): SDPA's fused CPU kernel, SDPA's math kernel, matmul + softmax + matmul, and lenbench's
   small-head C kernel (:mod:`lenbench.model.small_attention`, packed qkv as the model calls it).
   ``--head-dim 16`` (or 32, ...) keeps ~5k tokens per call and shows where the kernel stops paying.

Medians over ``--repeats`` calls, each variant timed in turn so machine drift hits all alike.

    python benchmarks/che_kernels.py
    python benchmarks/che_kernels.py --smoke   # T=12, one timed call each (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lenbench.model import small_attention
from lenbench.model.dropout import dropout, keep_mask, kernel_available


def interleaved_ms(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median ms per call of each variant, calling them round-robin after ``warmup`` warm-up rounds."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(repeats + warmup):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if rnd >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def dropout_variants(t: int, batch: int = 128, width: int = 64) -> dict[str, Callable[[], object]]:
    """``skip + dropout(x)``, forward and backward, three ways."""
    x = torch.randn(batch, t, width, requires_grad=True)
    skip = torch.randn(batch, t, width, requires_grad=True)
    grad = torch.randn(batch, t, width)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(fn(), (x, skip), grad)

    def torch_path() -> torch.Tensor:
        return skip + x * keep_mask(x.shape, 0.9, x.device).to(x.dtype).mul_(1 / 0.9)

    variants = {"F.dropout": run(lambda: skip + F.dropout(x, 0.1, True)), "keep_mask": run(torch_path)}
    if kernel_available():
        variants["kernel"] = run(lambda: dropout(x, 0.1, True, skip))
    return variants


def attention_variants(t: int, heads: int = 8, dim: int = 8, batch: int = 128) -> dict[str, Callable[[], object]]:
    qkv = torch.randn(batch, t, 3, heads, dim, requires_grad=True)
    bias = torch.randn(1, heads, t, t)
    scale = 1.0 / math.sqrt(dim)

    def split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def fused() -> None:
        F.scaled_dot_product_attention(*split(), attn_mask=bias).sum().backward()

    def math_kernel() -> None:
        torch.ops.aten._scaled_dot_product_attention_math(*split(), bias)[0].sum().backward()

    def explicit() -> None:
        q, k, v = split()
        s = torch.matmul(q, k.transpose(-1, -2)) * scale + bias
        torch.matmul(torch.softmax(s, -1), v).sum().backward()

    def small() -> None:
        small_attention.small_attention_packed(qkv, bias[0], scale).sum().backward()

    variants = {"sdpa": fused, "sdpa math": math_kernel, "matmul+softmax": explicit}
    if small_attention.available():
        variants["small kernel"] = small
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--lengths", default="12,22,41", help="sequence lengths T (the anchor's mean is ~22)")
    parser.add_argument("--head-dim", type=int, default=8, help="head dim of the 8 heads")
    parser.add_argument("--smoke", action="store_true", help="T=12, one warm-up and one timed call per variant")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.lengths = 1, "12"
    warmup = 1 if args.smoke else 5
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per call")
    for t in lengths:
        ms = interleaved_ms(dropout_variants(t), args.repeats, warmup)
        kernel = (f", kernel {ms['kernel']:.3f} (kernel / F.dropout {ms['kernel'] / ms['F.dropout']:.2f}, "
                  f"kernel / keep_mask {ms['kernel'] / ms['keep_mask']:.2f})") if "kernel" in ms else ", no kernel"
        print(f"residual dropout fwd+bwd T={t:3d}: F.dropout {ms['F.dropout']:.3f}, keep_mask {ms['keep_mask']:.3f}"
              + kernel)
    batch = 128 if args.head_dim == 8 else max(1, 128 * 41 // max(lengths))
    for t in lengths:
        ms = interleaved_ms(attention_variants(t, dim=args.head_dim, batch=batch), args.repeats, warmup)
        ratio = f" (small / sdpa {ms['small kernel'] / ms['sdpa']:.2f})" if "small kernel" in ms else ""
        print(f"attention fwd+bwd head dim {args.head_dim} T={t:3d}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()) + ratio)
    if args.smoke:
        print("smoke ok")


if __name__ == "__main__":
    main()
