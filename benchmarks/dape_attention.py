"""DAPE attention (issue 9, target 4): query-blocked vs unblocked explicit attention for a ``scores`` PE.

One causal attention layer, 16 heads of width 64, D_DAPE 32, batch 1, forward under ``no_grad``
(evaluation). "unblocked" computes all N queries at once (the ``[1, N, N, 32]`` MLP hidden tensor
exists whole); "blocked" uses ``--block`` queries per block, sized through
``lenbench.model.attention.BLOCK_BUDGET`` exactly as the library sizes it, and skips future key
blocks. Achieved GFLOP/s is measured against the arithmetic count of a causal forward,
``N(N+1)/2 * (4 h d + 2 (2h D + D h))`` FLOP (QK^T and PV, then DAPE's MLP ``[S; B] (2h) -> D -> h``
per visible pair; ~6e10 at N=4096, 16 heads, D=32), the horizon being a fused kernel within 3x of it.
Each variant runs in a fresh process; peak memory is that process's peak RSS
(``getrusage`` max RSS) above its RSS just before the first forward. Time is the median of
``--repeats`` forwards after the first. The outputs of the two variants are compared.

    python benchmarks/dape_attention.py                    # N = 1024, 2048
    python benchmarks/dape_attention.py --long             # adds N = 4096 (~8 GB unblocked) and 8192

The unblocked variant is skipped (and said so) where its estimated peak, 4x the measured 4096
peak per doubling of N, exceeds this machine's physical memory: at 8192 only the blocked form runs.
    python benchmarks/dape_attention.py --pe cope --lengths 512,1024 --block 64

``--fused`` (issue 19) compares instead the fused DAPE kernel (backend ``dape_fused``,
``lenbench.pe.dape_fused``) with today's query-blocked path (backend ``explicit``, blocks sized by the
library's own ``BLOCK_BUDGET``), forward under ``no_grad`` and forward+backward (``(y * g).sum()``
backpropagated to x and every parameter), at the 350M shape, and prints fused / explicit ratios:

    python benchmarks/dape_attention.py --fused --lengths 1024,2048,4096 --repeats 1
    python benchmarks/dape_attention.py --fused --lengths 1024,2048,4096,8192 --repeats 3

Explicit training is skipped (and said so, in both tables) where its estimated peak, ~6 (2h + D) N^2
bytes (every block's [S; B], hidden and softmax tensors kept for backward), exceeds 60% of physical
memory: at 8192 on a 24 GiB machine. The run's start and end load averages are printed: on a shared
machine only the ratios, measured side by side, mean much.

``--smoke`` runs both comparisons once at N=64 (2 heads of 16, D_DAPE 8, blocks of 16) and exits
non-zero when the variants' outputs differ by more than 1e-4 of their largest value
(``tests/test_benchmarks.py`` runs it):

    python benchmarks/dape_attention.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Peak RSS of the unblocked variant at N=4096 (measured, MiB); it grows as N^2.
UNBLOCKED_MIB_AT_4096 = 8251.0


def rss_kib() -> int:
    """Current resident set size in KiB (Linux ``/proc/self/statm``)."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def child(args: argparse.Namespace) -> None:
    """Time one variant at one length in this process; print a JSON line, save the output."""
    import resource

    import torch

    from lenbench.model import attention
    from lenbench.model.transformer import ModelConfig, build_pes
    from lenbench.pe import parse_pe_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    n, heads = args.n, args.heads
    dim = heads * args.head_dim
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=2, out_size=2, dim=dim, layers=1, heads=heads, causal=True, max_length=n)
    spec = parse_pe_spec(args.pe if "dape" not in args.pe else f"{args.pe}:hidden={args.hidden}")
    backend = {"fused": "dape_fused", "explicit": "explicit"}.get(args.variant, "explicit")
    device = torch.device(args.device)
    att = attention.Attention(dim, heads, build_pes(cfg, spec)[0], causal=True, backend=backend).eval().to(device)
    width = max(heads, int(getattr(att.pe, "hidden", 0)) + 2 * heads)
    block = att.block_size(1, n)
    if args.variant in ("blocked", "unblocked"):
        block = n if args.variant == "unblocked" else min(n, args.block)
        attention.BLOCK_BUDGET = block * n * width
        assert att.block_size(1, n) == block, (att.block_size(1, n), block)
    x = torch.randn(1, n, dim, device=device, requires_grad=args.train)
    g = torch.randn(1, n, dim, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> torch.Tensor:
        if not args.train:
            with torch.no_grad():
                return att(x)
        y = att(x)
        (y * g).sum().backward()
        return torch.cat([y.detach().flatten(), x.grad.flatten(), att.qkv.weight.grad.flatten()])

    before = rss_kib()
    start = time.perf_counter()
    y = step()
    sync()
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    if device.type == "cuda":  # GPU memory instead of host RSS
        peak = torch.cuda.max_memory_allocated() / 1024
    times = []
    for _ in range(args.repeats):
        x.grad = None
        att.zero_grad()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    assert att.last_backend == backend, att.last_backend
    torch.save(y.cpu(), args.out)
    times.sort()
    median = times[len(times) // 2] if times else first
    print(json.dumps({"n": n, "variant": args.variant, "block": block, "ms": 1000 * median, "train": args.train,
                      "first_ms": 1000 * first, "peak_mib": peak / 1024,
                      "hidden_mib": block * n * int(getattr(att.pe, "hidden", 0)) * 4 / 2**20}))


def forward_flop(n: int, heads: int, head_dim: int, hidden: int) -> float:
    """Arithmetic FLOP of one causal DAPE attention forward (module docstring)."""
    return n * (n + 1) / 2 * (4 * heads * head_dim + 2 * (2 * heads * hidden + hidden * heads))


def run_variant(args: argparse.Namespace, n: int, variant: str, out: Path, train: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--n", str(n), "--out", str(out),
           "--pe", args.pe, "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--hidden", str(args.hidden), "--block", str(args.block), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--device", args.device] + (["--train"] if train else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} at N={n} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_fused(args: argparse.Namespace, lengths: list[int], ram_mib: float) -> list[float]:
    """``--fused``: the fused kernel against ``explicit``, forward and forward+backward, with ratios."""
    import torch

    print(f"{args.pe}, causal, batch 1, {args.heads} heads x {args.head_dim}, hidden {args.hidden}; "
          f"fused = backend dape_fused, explicit = query blocks (library budget); median of {args.repeats} "
          "after the first (first run alone when 0); peak = RSS above the pre-run RSS")
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print(f"{'N':>6} {'mode':>9} {'variant':>9} {'ms':>10} {'peak MiB':>10}")
    summary, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            for train in (False, True):
                mode = "fwd+bwd" if train else "forward"
                rows = {}
                for variant in ("explicit", "fused"):
                    # explicit training keeps every block's [S; B], hidden and softmax tensors
                    need = 4 * (2 * args.heads + args.hidden) * 3 * n * n / 2 / 2**20 if train else 0.0
                    if variant == "explicit" and need > 0.6 * ram_mib:
                        print(f"{n:>6} {mode:>9} {variant:>9} skipped: needs ~{need / 1024:.0f} GiB, this machine "
                              f"has {ram_mib / 1024:.0f} GiB", flush=True)
                        skipped.append((n, mode, need))
                        continue
                    rows[variant] = r = run_variant(args, n, variant, Path(tmp) / f"{variant}.pt", train)
                    print(f"{n:>6} {mode:>9} {variant:>9} {r['ms']:>10.1f} {r['peak_mib']:>10.1f}", flush=True)
                if len(rows) < 2:
                    continue
                a, b = (torch.load(Path(tmp) / f"{v}.pt") for v in ("fused", "explicit"))
                diff = ((a - b).abs().max() / b.abs().max()).item()
                f, e = rows["fused"], rows["explicit"]
                summary.append((n, mode, f["ms"] / e["ms"], f["peak_mib"] / max(e["peak_mib"], 1e-9), diff))
    print(f"end {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\nratios fused / explicit (CPU targets, training: time <= 0.5, memory at 4096 <= 1/8)")
    print(f"{'N':>6} {'mode':>9} {'time':>8} {'peak mem':>9} {'max rel diff':>13}  time target")
    for n, mode, t, m, d in summary:
        verdict = ("met" if t <= 0.5 else "NOT met") if mode == "fwd+bwd" else "-"
        print(f"{n:>6} {mode:>9} {t:>8.2f} {m:>9.3f} {d:>13.1e}  {verdict}")
    for n, mode, need in skipped:
        print(f"{n:>6} {mode:>9}  no ratio: explicit not run (needs ~{need / 1024:.0f} GiB of "
              f"{ram_mib / 1024:.0f} GiB)")
    return [d for *_, d in summary]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048", help="comma-separated sequence lengths")
    parser.add_argument("--long", action="store_true", help="also run N=4096 and 8192 (unblocked needs ~9 / ~33 GB)")
    parser.add_argument("--pe", default="dape-kerple", help="a PE with a scores hook")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32, help="D_DAPE (DAPE PEs only)")
    parser.add_argument("--block", type=int, default=128, help="queries per block in the blocked variant")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak = torch.cuda.max_memory_allocated there)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fused", action="store_true", help="fused DAPE kernel vs explicit, forward and training")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["blocked", "unblocked", "fused", "explicit"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="both comparisons once at N=64; checks agreement")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.lengths, args.repeats, args.heads, args.head_dim, args.hidden, args.block = "64", 1, 2, 16, 8, 16
    lengths = [int(v) for v in args.lengths.split(",")]
    lengths += [m for m in ((8192,) if args.fused else (4096, 8192)) if args.long and m not in lengths]
    ram_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    diffs: list[float] = []
    if args.fused or args.smoke:
        diffs += compare_fused(args, lengths, ram_mib)
        if args.fused:
            return
    diffs += compare_blocked(args, lengths, ram_mib)
    if args.smoke:
        if not diffs or max(diffs) > 1e-4:
            worst = max(diffs, default=float("nan"))
            raise SystemExit(f"smoke: the variants disagree (largest difference {worst:.1e})")
        print("smoke ok")


def compare_blocked(args: argparse.Namespace, lengths: list[int], ram_mib: float) -> list[float]:
    """The default comparison: query-blocked against unblocked explicit attention, forward."""
    import torch

    print(f"{args.pe}, causal forward, batch 1, {args.heads} heads x {args.head_dim}, hidden {args.hidden}, "
          f"blocked = {args.block} queries/block; median of {args.repeats} after the first")
    print(f"{'N':>6} {'variant':>10} {'block':>6} {'ms':>10} {'peak MiB':>10} {'hidden MiB':>11} {'GFLOP/s':>9}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            rows = {}
            for variant in ("unblocked", "blocked"):
                estimate = UNBLOCKED_MIB_AT_4096 * (n / 4096) ** 2
                if variant == "unblocked" and estimate > ram_mib:
                    print(f"{n:>6} {variant:>10} skipped: needs ~{estimate / 1024:.0f} GiB, this machine has "
                          f"{ram_mib / 1024:.0f} GiB", flush=True)
                    continue
                rows[variant] = r = run_variant(args, n, variant, Path(tmp) / f"{variant}.pt")
                gflops = forward_flop(n, args.heads, args.head_dim, args.hidden) / (r["ms"] * 1e6)
                print(f"{n:>6} {variant:>10} {r['block']:>6} {r['ms']:>10.1f} {r['peak_mib']:>10.1f} "
                      f"{r['hidden_mib']:>11.1f} {gflops:>9.1f}", flush=True)
            if "unblocked" not in rows:
                continue
            diff = (torch.load(Path(tmp) / "blocked.pt") - torch.load(Path(tmp) / "unblocked.pt")).abs().max().item()
            b, u = rows["blocked"], rows["unblocked"]
            summary.append((n, b["ms"] / u["ms"], b["peak_mib"] / max(u["peak_mib"], 1e-9), diff))
    print("\nratios blocked / unblocked")
    print(f"{'N':>6} {'time':>8} {'peak mem':>9} {'max |diff|':>11}")
    for n, t, m, d in summary:
        print(f"{n:>6} {t:>8.2f} {m:>9.3f} {d:>11.2e}")
    return [d for *_, d in summary]


if __name__ == "__main__":
    main()
