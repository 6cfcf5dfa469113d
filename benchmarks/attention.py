"""Static-bias attention (issue 9, target 3): materialized bias vs query blocks vs FlexAttention vs no bias.

For each PE (alibi, kerple, t5, fire by default) and length N: batch 1, 12 heads, head dim 64, causal
forward under ``no_grad`` (docs/pe.md §16: FlexAttention has no CPU backward in torch 2.13). Four timings,
medians over ``--repeats`` calls after one untimed warm-up call:

- ``sdpa+B``: the plain ``sdpa_bias`` backend: build ``B`` with ``pe.bias`` in fp32, add -inf above the
  diagonal, run SDPA with it as a float mask (``build`` is the first two steps alone);
- ``sdpa+Bc``: SDPA with lenbench's own materialized mask (``Attention.materialized_mask``): the same as
  ``sdpa+B`` except for FIRE, whose bias and mask there come from its C kernel (``lenbench.pe.fire_kernel``);
- ``blocked``: the ``blocked_bias`` backend (``Attention.blocked_bias``): SDPA per block of ``--block``
  queries over past keys only, each block's mask a window of one distance row for translation-invariant
  biases (ALiBi, Kerple, T5) or its own ``pe.causal_bias`` slice (FIRE: from its C kernel);
- ``flex``: compiled ``flex_attention`` with ``pe.score_mod()`` and a causal block mask (the block mask
  depends only on N, so it is built once per length, untimed; its one-off compile time is shown);
- ``sdpa``: SDPA with ``is_causal=True`` and no bias, the floor.

Ratios: ``sdpa+B / blocked`` and ``sdpa+B / flex`` (speed-ups over the materialized bias), ``blocked / sdpa``
and ``flex / sdpa`` (cost of the bias over none). ``maxdiff`` is the largest output difference of either
fast path from ``sdpa+B``. Issue 9 asks for >= 3.5x over ``sdpa+B`` and <= 2.5x ``sdpa`` on CPU at N=4096.

    python benchmarks/attention.py [--lengths 2048,4096] [--repeats N] [--pes alibi,kerple,t5,fire] [--block 256]
    python benchmarks/attention.py --smoke   # one small shape (alibi, N=64, 2 heads of 16), checks agreement

``--smoke`` runs every path once at a small shape and exits non-zero when a fast path's output
differs from ``sdpa+B`` by more than 1e-4 (``tests/test_benchmarks.py`` runs it).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lenbench.model import attention as attention_module
from lenbench.model.attention import Attention
from lenbench.pe import PES, PEContext, PositionalEncoding, fire_kernel


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
    """``[1, H, N, N]`` float mask: the bias by the PE's PyTorch formula plus -inf on future keys."""
    n = pos.shape[0]
    future = torch.ones(n, n, dtype=torch.bool, device=pos.device).triu(1)
    with fire_kernel.disabled():
        return pe.bias(pos, pos).masked_fill(future, float("-inf"))[None]


def bench(name: str, n: int, heads: int, head_dim: int, repeats: int, device: torch.device) -> dict[str, float]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(0)
    ctx = PEContext(dim=heads * head_dim, heads=heads, causal=True, train_length=512, max_length=n)
    pe = PES.get(name)(ctx).to(device)
    att = Attention(heads * head_dim, heads, pe, causal=True, backend="blocked_bias").to(device)
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
    out_blocked = att.blocked_bias(q, k, v, pos)
    row = {
        "build": median_ms(lambda: materialized(pe, pos), repeats, device),
        "sdpa+B": median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=materialized(pe, pos)), repeats, device
        ),
        "sdpa+Bc": median_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=att.materialized_mask(pos, q.dtype)), repeats,
            device,
        ),
        "blocked": median_ms(lambda: att.blocked_bias(q, k, v, pos), repeats, device),
        "flex": median_ms(lambda: flex(q, k, v, score_mod=pe.score_mod(), block_mask=block_mask), repeats, device),
        "sdpa": median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats, device),
        "compile_s": compile_s,
        "maxdiff": max((out_flex - out_ref).abs().max().item(), (out_blocked - out_ref).abs().max().item()),
    }
    del out_flex, out_ref, out_blocked
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median reported)")
    parser.add_argument("--pes", default="alibi,kerple,t5,fire", help="comma-separated static-bias PEs")
    parser.add_argument("--block", type=int, default=attention_module.BIAS_BLOCK, help="queries per block")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="one small shape, every path once; checks agreement")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.repeats, args.pes, args.heads, args.head_dim = "64", 1, "alibi", 2, 16
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    names = [x.strip() for x in args.pes.split(",") if x.strip()]
    device = torch.device(args.device)
    attention_module.BIAS_BLOCK = args.block
    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    print(
        f"torch {torch.__version__}, {device.type}, {torch.get_num_threads()} threads; batch 1, {args.heads} heads, "
        f"head dim {args.head_dim}, causal forward, no_grad, fp32; blocks of {args.block} queries; "
        f"median of {args.repeats} (ms)"
    )
    header = (
        f"{'pe':<8}{'N':>6}{'sdpa+B':>9}{'(build)':>9}{'sdpa+Bc':>9}{'blocked':>9}{'flex':>9}{'sdpa':>8}"
        f"{'B/blocked':>10}{'B/flex':>8}{'blocked/sdpa':>13}{'flex/sdpa':>10}{'maxdiff':>9}{'compile s':>10}"
    )
    print(header)
    with torch.no_grad():
        for name in names:
            for n in lengths:
                r = bench(name, n, args.heads, args.head_dim, args.repeats, device)
                print(
                    f"{name:<8}{n:>6}{r['sdpa+B']:>9.1f}{r['build']:>9.1f}{r['sdpa+Bc']:>9.1f}{r['blocked']:>9.1f}{r['flex']:>9.1f}"
                    f"{r['sdpa']:>8.1f}{r['sdpa+B'] / r['blocked']:>10.2f}{r['sdpa+B'] / r['flex']:>8.2f}"
                    f"{r['blocked'] / r['sdpa']:>13.2f}{r['flex'] / r['sdpa']:>10.2f}{r['maxdiff']:>9.1e}"
                    f"{r['compile_s']:>10.1f}",
                    flush=True,
                )
                if args.smoke and not r["maxdiff"] <= 1e-4:
                    raise SystemExit(f"smoke: {name} at N={n}: a fast path differs from sdpa+B by {r['maxdiff']:.1e}")
    if args.smoke:
        print("smoke ok")


if __name__ == "__main__":
    main()
