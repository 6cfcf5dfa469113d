"""CHE training throughput through lenbench's own cell path, start-up included.

Default configuration = the anchor of issue 9 (the JAX/Haiku reference's example): encoder 5 x 64,
8 heads, dropout 0.1, batch 128, training lengths uniform in 1..40, missing_duplicate_string,
ALiBi, 1500 steps. The JAX reference's whole-process time moves with the machine (329 s on
2026-11-25, 314 s on 2026-12-05 on the same 2-core machine class), so the ratio is printed only
against a reference time measured in the same session: ``--reference-seconds S``
(benchmarks/README.md section 1 says how the reference is run).

The benchmark starts a fresh Python process (so imports and model build count), runs one cell
with evaluation cut to the minimum the CHE suite accepts (2 samples at length 41, 2 at training
length 40), and prints: time to first step, steps/s after the first step, total wall clock, peak
RSS, and achieved GFLOP/s from the arithmetic count ``6 * P * tokens + 12 * layers * B * T^2 * dim``
(dense weights, fwd+bwd, plus the two attention matmuls) over the lengths actually sampled.

    python benchmarks/che_train.py --reference-seconds 314   # the anchor configuration
    python benchmarks/che_train.py --pe dape --steps 200 --batch-size 32 --layers 3
    python benchmarks/che_train.py --smoke                    # 3 steps of a 1-layer model (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def child(args: argparse.Namespace) -> None:
    """Run one cell in this process and print its step timestamps as JSON."""
    import torch

    from lenbench.config import load_suite
    from lenbench.execute.inprocess import run_in_process
    from lenbench.model import dropout, small_attention
    from lenbench.results import ResultStore
    from lenbench.suites import SilentReporter, get_suite
    from lenbench.suites.che.run import build_model
    from lenbench.tasks.che import TASKS

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    # compiles the C kernels a CHE step uses here (a fresh cache: see main)
    kernel = all([small_attention.available(), dropout.kernel_available()])
    kernel_seconds = time.time() - started
    module = get_suite("che")
    overrides = {
        "grid": {"tasks": args.task, "pes": args.pe, "seeds": "0"},
        "profile": {
            "model": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "dropout": 0.1},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": 1e-3, "checkpoint_every": 0,
                      "log_every": args.steps, "compile": args.compile},
            # the least evaluation a CHE cell accepts (a standard error needs two samples)
            "eval": {"lengths": [41], "samples": 2, "batch_size": 2, "train_lengths": [40], "train_samples": 2},
        },
    }
    (cell,) = module.expand(load_suite("che"), "quick", overrides)
    task = TASKS.get(args.task)()
    params = build_model(cell.spec, task).num_parameters()

    class Clock(SilentReporter):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[float] = []
            self.lengths: list[int] = []
            self.compile_seconds = 0.0

        def train_step(self, step: int, metrics: dict[str, float]) -> None:
            self.stamps.append(time.time())
            n = int(metrics["length"])
            self.lengths.append(n + task.output_length(n))

    clock = Clock()
    with tempfile.TemporaryDirectory() as root:
        (outcome,) = run_in_process([cell], ResultStore(Path(root)), module, clock)
    clock.compile_seconds = float((outcome.summary or {}).get("compile_seconds_this_run", 0.0))
    print(json.dumps({"stamps": clock.stamps, "lengths": clock.lengths, "params": params, "end": time.time(),
                      "compile_seconds": clock.compile_seconds, "kernel": kernel, "kernel_seconds": kernel_seconds}))


def flops(params: int, lengths: list[int], batch: int, layers: int, dim: int) -> float:
    """Arithmetic count of the training steps: dense fwd+bwd plus attention's two matmuls."""
    return sum(6.0 * params * batch * t + 12.0 * layers * batch * t * t * dim for t in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pe", default="alibi")
    parser.add_argument("--task", default="missing_duplicate_string")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile(dynamic=True)")
    parser.add_argument("--warm-kernel-cache", action="store_true",
                        help="reuse the compiled C kernels (default: compile them in the measured run)")
    parser.add_argument("--reference-seconds", type=float, default=None,
                        help="the JAX reference's whole-process seconds, measured in the same session")
    parser.add_argument("--smoke", action="store_true",
                        help="3 steps of a 1-layer, width-16 model at batch 8, kernel cache reused")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.layers, args.dim, args.heads = 3, 8, 1, 16, 2
        args.warm_kernel_cache = True
    if args.child:
        child(args)
        return
    forwarded = [a for a in sys.argv[1:] if a != "--smoke"] + (
        ["--steps", "3", "--batch-size", "8", "--layers", "1", "--dim", "16", "--heads", "2"] if args.smoke else [])
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ) if args.warm_kernel_cache else {**os.environ, "LENBENCH_KERNEL_CACHE": cache}
        start = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", *forwarded], capture_output=True, text=True,
                              env=env)
        wall = time.time() - start
    if proc.returncode:
        sys.exit(f"benchmark child failed:\n{proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stamps = result["stamps"]
    first = stamps[0] - start
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    work = flops(result["params"], result["lengths"], args.batch_size, args.layers, args.dim)
    train_seconds = stamps[-1] - start
    print(f"config: {args.task}, {args.pe}, {args.layers}x{args.dim}, {args.heads} heads, batch {args.batch_size}, "
          f"{args.steps} steps, {result['params']:,} parameters")
    kernel = f"{result['kernel_seconds']:.1f} s" if result["kernel"] else "not available, PyTorch paths used"
    print(f"time to first step   {first:8.1f} s (of which building the attention and dropout kernels: {kernel})")
    if args.compile:
        print(f"compiling            {result['compile_seconds']:8.1f} s (wall clock of the steps that compiled)")
    print(f"steps/s after first  {rate:8.2f}")
    print(f"training wall clock  {train_seconds:8.1f} s (process start to last step)")
    print(f"total wall clock     {wall:8.1f} s (with evaluation and exit)")
    print(f"peak RSS             {peak_mb:8.0f} MB")
    print(f"arithmetic           {work / 1e9:8.1f} GFLOP, achieved {work / 1e9 / (stamps[-1] - stamps[0]):.1f} GFLOP/s")
    reference = args.reference_seconds
    if reference is None:
        print("ratio to reference   (give --reference-seconds: the JAX reference timed in the same session)")
    elif args.steps == 1500:
        print(f"ratio to reference   {wall / reference:8.2f} (reference {reference:.0f} s; target <= 0.33)")
    else:
        projected = first + 1499 / rate
        print(f"projected 1500 steps {projected:8.1f} s, ratio to reference {projected / reference:.2f} "
              f"(reference {reference:.0f} s; target <= 0.33)")
    if args.smoke:
        print("smoke ok")


if __name__ == "__main__":
    main()
