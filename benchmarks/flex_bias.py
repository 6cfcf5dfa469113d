"""Static-bias attention: SDPA with the materialized bias vs FlexAttention with ``score_mod`` vs plain SDPA.

For each PE (alibi, kerple, t5, fire by default) and length N: batch 1, 12 heads, head dim 64, causal
forward under ``no_grad`` (pe_zoo.md §16: FlexAttention has no CPU backward in torch 2.13). Three timings,
medians over ``--repeats`` calls after one untimed warm-up call:

- ``sdpa+B``: what the ``sdpa_bias`` backend does per forward: build ``B`` with ``pe.bias`` in fp32, add
  -inf above the diagonal, run SDPA with it as a float mask (``build`` is the first two steps alone);
- ``flex``: compiled ``flex_attention`` with ``pe.score_mod()`` and a causal block mask (the block mask
  depends only on N, so it is built once per length, untimed; its one-off compile time is shown);
- ``sdpa``: SDPA with ``is_causal=True`` and no bias, the floor.

Ratios: ``sdpa+B / flex`` (speed-up of FlexAttention), ``flex / sdpa`` and ``sdpa+B / sdpa`` (cost of the
bias either way). ``maxdiff`` is the largest |flex - sdpa+B| output difference.

    python benchmarks/flex_bias.py [--lengths 2048,4096] [--repeats N] [--pes alibi,kerple,t5,fire]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lenbench.pe import PES, PEContext, PositionalEncoding


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after one untimed call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def materialized(pe: PositionalEncoding, pos: torch.Tensor) -> torch.Tensor:
    """``[1, H, N, N]`` float mask: the bias plus -inf on future keys (as ``Attention.materialized_mask``)."""
    n = pos.shape[0]
    future = torch.ones(n, n, dtype=torch.bool, device=pos.device).triu(1)
    return pe.bias(pos, pos).masked_fill(future, float("-inf"))[None]


def bench(name: str, n: int, heads: int, head_dim: int, repeats: int, device: torch.device) -> dict[str, float]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(0)
    ctx = PEContext(dim=heads * head_dim, heads=heads, causal=True, train_length=512, max_length=n)
    pe = PES.get(name)(ctx).to(device)
    q, k, v = (torch.randn(1, heads, n, head_dim, device=device) for _ in range(3))
    pos = torch.arange(n, device=device)

    torch._dynamo.reset()  # a fresh compile per (PE, N): no recompile limit, honest compile time
    flex = torch.compile(flex_attention, dynamic=False)
    block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device=device.type)
    start = time.perf_counter()
    out_flex = flex(q, k, v, score_mod=pe.score_mod(), block_mask=block_mask)
    sync(device)
    compile_s = time.perf_counter() - start
    out_ref = F.scaled_dot_product_attention(q, k, v, attn_mask=materialized(pe, pos))
    row = {
        "build": median_ms(lambda: materialized(pe, pos), repeats, device),
        "sdpa+B": median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=materialized(pe, pos)), repeats, device
        ),
        "flex": median_ms(lambda: flex(q, k, v, score_mod=pe.score_mod(), block_mask=block_mask), repeats, device),
        "sdpa": median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats, device),
        "compile_s": compile_s,
        "maxdiff": (out_flex - out_ref).abs().max().item(),
    }
    del out_flex, out_ref
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median reported)")
    parser.add_argument("--pes", default="alibi,kerple,t5,fire", help="comma-separated static-bias PEs")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    names = [x.strip() for x in args.pes.split(",") if x.strip()]
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    print(
        f"torch {torch.__version__}, {device.type}, {torch.get_num_threads()} threads; batch 1, {args.heads} heads, "
        f"head dim {args.head_dim}, causal forward, no_grad, fp32; median of {args.repeats} (ms)"
    )
    header = (
        f"{'pe':<8}{'N':>6}{'sdpa+B':>10}{'(build)':>10}{'flex':>10}{'sdpa':>10}"
        f"{'sdpa+B/flex':>13}{'flex/sdpa':>11}{'sdpa+B/sdpa':>13}{'maxdiff':>10}{'compile s':>11}"
    )
    print(header)
    with torch.no_grad():
        for name in names:
            for n in lengths:
                r = bench(name, n, args.heads, args.head_dim, args.repeats, device)
                print(
                    f"{name:<8}{n:>6}{r['sdpa+B']:>10.1f}{r['build']:>10.1f}{r['flex']:>10.1f}{r['sdpa']:>10.1f}"
                    f"{r['sdpa+B'] / r['flex']:>13.2f}{r['flex'] / r['sdpa']:>11.2f}{r['sdpa+B'] / r['sdpa']:>13.2f}"
                    f"{r['maxdiff']:>10.1e}{r['compile_s']:>11.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
