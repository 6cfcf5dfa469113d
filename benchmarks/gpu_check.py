"""The GPU check (issue 26 item 4): one prepared run of at most 8 minutes on one GPU, one JSON out.

Parts, in order, each under its own share of ``--budget`` seconds (a part that would start past its
deadline is skipped and says so; the JSON is rewritten after every part, so a run cut short keeps
what finished):

1. ``environment``: ``lenbench doctor``'s sections (versions, devices, kernels, backends per Table 1 PE);
2. ``parity``: every self-checked path (:mod:`lenbench.model.selfcheck`: fused DAPE on Triton, compiled
   FlexAttention, bf16 position terms) run afresh on the device, and every other backend
   (``sdpa_bias``, ``blocked_bias``, ``paper``; ``sdpa`` for RoPE) against ``explicit`` for a
   forward and backward at 257 tokens, causal and bidirectional;
3. ``che``: a short paper-profile CHE cell (even_pairs, DAPE-Kerple with D_DAPE 64, 5 x 256 x 8 heads,
   batch 128, fp32) through the suite itself: seconds per step, backends and precision that ran,
   and the extrapolated time of the paper's 200k steps;
4. ``ppl``: training steps of the 125M LM (T = 512, micro-batch 32, the paper profile's precision)
   for RoPE and DAPE-Kerple: seconds per step, tokens per second, peak memory;
5. ``dape_fused``: fused vs explicit DAPE-Kerple attention, one 350M layer (16 heads, D 32), causal,
   2048 and 4096 tokens: ms forward and forward+backward, and the output difference;
6. ``timing``: DAPE Table 1 at 2.7B for Kerple and DAPE-Kerple through the timing suite (every
   layer, both modes, 512 / 2048 / 8192 tokens, 3 repeats), shortest lengths first, the JSON
   rewritten after every cell.

    python benchmarks/gpu_check.py --out results/gpu_check.json     # on a GPU, about 6-8 minutes
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json # CPU, tiny shapes, seconds

``--smoke`` runs every part on the CPU at toy sizes (the flex check, whose CPU compile takes minutes,
only with ``--flex``), so tests exercise this script without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Share of --budget per part, in running order (timing last: its longest cells may not fit).
SHARES = {"environment": 0.04, "parity": 0.30, "che": 0.12, "ppl": 0.14, "dape_fused": 0.12, "timing": 0.28}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_times(calls: dict[str, Callable[[], Any]], repeats: int, smoke: bool) -> dict[str, Any]:
    """Median ms of each call and the first's ratio to the second, measured in interleaved rounds with
    a discarded warm-up round (lenbench's timing protocol, docs/timing.md), the ratio paired per round
    with its bootstrap 95% interval."""
    from lenbench import bench

    contenders = [bench.Contender(name, call) for name, call in calls.items()]
    rounds = bench.interleaved_rounds(contenders, repeats, min_repeat_s=0.0 if smoke else 0.2,
                                      min_rounds=min(3, repeats))
    a, b = list(calls)
    stat = bench.ratio_stat(rounds.times_s[a], rounds.times_s[b])
    return {"ms": {n: rounds.median_ms(n) for n in calls}, "ratio": stat.median,
            "ratio_ci95": [stat.low, stat.high], "rounds": rounds.rounds}


# --------------------------------------------------------------------------- parts


def part_environment(device: torch.device, smoke: bool) -> dict[str, Any]:
    from lenbench.doctor import environment

    return environment(check=False)


def part_parity(device: torch.device, smoke: bool, flex: bool) -> dict[str, Any]:
    """Self-checks run afresh (cached on disk afterwards), then every other backend vs ``explicit``."""
    from lenbench.model import selfcheck
    from lenbench.model.attention import Attention
    from lenbench.pe import PEContext, parse_pe_spec, pe_class

    checks = {}
    for path in selfcheck.PATHS:
        if path == "flex" and device.type != "cuda" and not flex:
            checks[path] = {"skipped": "compiling FlexAttention on the CPU takes minutes (--flex runs it)"}
            continue
        if path == "dape_fused" and device.type == "cuda":
            from lenbench.pe import dape_triton

            if not dape_triton.available():
                checks[path] = {"skipped": "Triton is not importable"}
                continue
        found = selfcheck.run_check(path, device)
        selfcheck._write_cache(found)
        checks[path] = {"ok": found.ok, "max_error": found.max_error, "tolerance": found.tolerance,
                        "detail": found.detail}
    n, dim, heads = (33, 32, 4) if smoke else (257, 256, 8)
    sweep = []
    for spec_text in ("rope", "alibi", "kerple", "t5", "fire", "dape-kerple", "dape-fire", "cope", "transformer-xl"):
        for causal in (True, False):
            spec = parse_pe_spec(spec_text)
            if spec_text == "cope" and not causal:
                continue  # CoPE is causal only (docs/pe.md §14)
            ctx = PEContext(dim=dim, heads=heads, causal=causal, train_length=n, max_length=n)
            torch.manual_seed(0)
            pe = pe_class(spec)(ctx, **spec.options).to(device)
            cls = type(pe)
            static, scores = cls.has_hook("bias") and not cls.has_hook("scores"), cls.has_hook("scores")
            backends = ["paper", *(["sdpa_bias", "blocked_bias"] if static else []),
                        *(["sdpa"] if not (static or scores) else [])]
            ref = Attention(dim, heads, pe, causal, "explicit").to(device)
            x = torch.randn(2, n, dim, device=device, requires_grad=True)
            y_ref = ref(x)
            (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
            for backend in backends:
                layer = Attention(dim, heads, pe, causal, backend).to(device)
                layer.load_state_dict(ref.state_dict())
                y = layer(x)
                (g,) = torch.autograd.grad(y.square().sum(), x)
                sweep.append({"pe": spec_text, "causal": causal, "backend": layer.last_backend,
                              "output_error": selfcheck.relative_error(y, y_ref),
                              "grad_error": selfcheck.relative_error(g, g_ref)})
    worst = max((max(r["output_error"], r["grad_error"]) for r in sweep), default=0.0)
    return {"checks": checks, "backends_vs_explicit": sweep, "worst_backend_error": worst}


def part_che(device: torch.device, smoke: bool, workdir: Path) -> dict[str, Any]:
    from lenbench.config import load_suite
    from lenbench.execute.inprocess import run_in_process
    from lenbench.results import ResultStore
    from lenbench.suites import get_suite
    from lenbench.suites.base import SilentReporter
    from lenbench.suites.che import config as che_config

    steps = 2 if smoke else 300
    profile: dict[str, Any] = {"train": {"steps": steps, "lr": 1e-4, "checkpoint_every": steps, "log_every": steps},
                               "eval": {"lengths": "41,100" if smoke else "41-500:8", "samples": 4 if smoke else 128,
                                        "train_lengths": [20, 40], "train_samples": 4 if smoke else 64}}
    if smoke:
        profile["model"] = {"layers": 1, "dim": 16, "heads": 2}
        profile["train"]["batch_size"] = 4
    cells = che_config.expand(load_suite("che"), "paper",
                              {"grid": {"tasks": "even_pairs", "pes": "dape", "seeds": "0"}, "profile": profile})
    start = time.perf_counter()
    (outcome,) = run_in_process(cells, ResultStore(workdir / "results"), get_suite("che"), SilentReporter())
    summary = outcome.summary or {}
    train_s = summary.get("train_seconds_this_run")
    return {"status": outcome.status, "pe": cells[0].config["pe"], "steps": steps,
            "seconds": time.perf_counter() - start,
            "train_seconds": train_s, "seconds_per_step": train_s / steps if train_s else None,
            "paper_200k_steps_hours": train_s / steps * 200_000 / 3600 if train_s else None,
            "score": summary.get("score"), "train_score": summary.get("train_score"), "run": summary.get("run"),
            "selfcheck": summary.get("selfcheck"), "reason": outcome.reason or None}


def part_ppl(device: torch.device, smoke: bool) -> dict[str, Any]:
    from lenbench.devices import autocast_for, effective_precision
    from lenbench.model.attention import backends_used
    from lenbench.model.sizes import SIZES
    from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
    from lenbench.pe import parse_pe_spec

    size = SIZES.get("tiny" if smoke else "125m")
    length, batch, vocab, steps = (64, 2, 512, 3) if smoke else (512, 32, 50257, 8)
    precision = effective_precision("auto", device)
    autocast = autocast_for(precision, device)
    out = {"size": size.name, "length": length, "micro_batch": batch, "precision": precision, "pes": {}}
    for pe in ("rope", "dape-kerple"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=vocab, out_size=vocab, dim=size.dim, layers=size.layers, heads=size.heads,
                          dropout=0.0, causal=True, prenorm=True, activation="gelu", embed_scale=False,
                          final_norm=True, init="gpt2", train_length=length, max_length=length)
        model = Transformer(cfg, parse_pe_spec(pe)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
        ids = torch.randint(0, vocab, (batch, length + 1), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            with autocast():
                loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sync(device)
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
        step = statistics.median(times[1:]) if len(times) > 1 else times[0]
        out["pes"][pe] = {"seconds_per_step": step, "tokens_per_second": batch * length / step,
                          "first_step_seconds": times[0], "losses": losses, "backends": backends_used(model),
                          "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}
        del model, opt
    return out


def part_timing(device: torch.device, smoke: bool, workdir: Path, deadline: float,
                on_row: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from lenbench import bench
    from lenbench.config import load_suite
    from lenbench.execute.inprocess import run_in_process
    from lenbench.results import ResultStore
    from lenbench.suites import get_suite
    from lenbench.suites.base import SilentReporter
    from lenbench.suites.timing import config as timing_config

    # Kerple and DAPE-Kerple timed as one group per (length, mode) in interleaved rounds (docs/timing.md);
    # no identical-work control here (it would double this part's time): the ratio's interval is its spread
    profile = {"sizes": "tiny" if smoke else "2.7b", "lengths": [64] if smoke else [512, 2048, 8192],
               "modes": "both", "repeats": 3 if smoke else 5, "warmup": 1,
               "min_warmup_ms": 0 if smoke else 200, "min_repeat_ms": 0 if smoke else 200, "isolate": False,
               "layers": None, "control": "none", "max_seconds": 60}
    cells = timing_config.expand(load_suite("timing"), "paper",
                                 {"grid": {"pes": "kerple,dape-kerple"}, "profile": profile})
    cells.sort(key=lambda c: (c.config["eval_len"], c.config["mode"]))  # short lengths first
    rows: list[dict[str, Any]] = []
    store = ResultStore(workdir / "results")
    for cell in cells:
        on_row({"size": profile["sizes"], "cells": rows, "partial": True})
        where = {"length": cell.config["eval_len"], "mode": cell.config["mode"]}
        if time.monotonic() > deadline:
            rows.append({**where, "skipped": "past this part's deadline"})
            continue
        (outcome,) = run_in_process([cell], store, get_suite("timing"), SilentReporter())
        s = outcome.summary or {}
        timed = {r["pe"]: r for r in (outcome.cell_dir.read_metrics() or []) if r["metric"].startswith("ms_")}
        row = {**where, "layers_timed": cell.config["layers_timed"], "precision": cell.config["precision"],
               "status": s.get("status", outcome.status), "ms": s.get("ms"), "oom": s.get("oom"),
               "rounds": s.get("rounds"), "reason": outcome.reason or None,
               "backend": {pe: r.get("backend") for pe, r in timed.items()},
               "peak_mem_mb": {pe: r.get("peak_mem_mb") for pe, r in timed.items()}}
        k, d = (timed.get(pe, {}).get("times_ms") for pe in ("kerple", "dape-kerple"))
        if k and d and len(k) == len(d):
            stat = bench.ratio_stat(k, d)
            row["kerple_over_dape_kerple"] = {"median": stat.median, "ci95": [stat.low, stat.high]}
        rows.append(row)
    return {"size": profile["sizes"], "cells": rows}


def part_dape_fused(device: torch.device, smoke: bool) -> dict[str, Any]:
    from lenbench.model import selfcheck
    from lenbench.model.attention import Attention
    from lenbench.pe import PEContext, dape_fused, parse_pe_spec, pe_class

    dim, heads, lengths, repeats = (64, 4, [64], 2) if smoke else (1024, 16, [2048, 4096], 5)
    if not dape_fused.usable(device):
        return {"skipped": f"no fused DAPE kernel on {device.type}"}
    rows = []
    for n in lengths:
        spec = parse_pe_spec("dape-kerple")
        pe = pe_class(spec)(PEContext(dim=dim, heads=heads, causal=True, train_length=512, max_length=n),
                            **spec.options).to(device)
        layers = {b: Attention(dim, heads, pe, True, b).to(device) for b in ("dape_fused", "explicit")}
        layers["explicit"].load_state_dict(layers["dape_fused"].state_dict())
        x = torch.randn(1, n, dim, device=device, requires_grad=True)
        row: dict[str, Any] = {"length": n}
        with torch.no_grad():
            outs = {b: layer(x) for b, layer in layers.items()}
        row["output_error"] = selfcheck.relative_error(outs["dape_fused"], outs["explicit"])
        row["backends"] = {b: layer.last_backend for b, layer in layers.items()}
        fused, explicit = layers["dape_fused"], layers["explicit"]

        def forward(layer: Any, x: torch.Tensor = x) -> Callable[[], Any]:
            def call() -> Any:
                with torch.no_grad():
                    return layer(x)
            return call

        def train_step(layer: Any, x: torch.Tensor = x) -> Callable[[], Any]:
            return lambda: layer(x).sum().backward()

        fwd = paired_times({"dape_fused": forward(fused), "explicit": forward(explicit)}, repeats, smoke)
        train = paired_times({"dape_fused": train_step(fused), "explicit": train_step(explicit)}, repeats, smoke)
        for mode, got in (("fwd", fwd), ("train", train)):
            for b in ("dape_fused", "explicit"):
                row[f"{b}_{mode}_ms"] = got["ms"][b]
            row[f"fused_over_explicit_{mode}"] = got["ratio"]
            row[f"fused_over_explicit_{mode}_ci95"] = got["ratio_ci95"]
        rows.append(row)
        del layers, outs, x
    return {"shape": {"dim": dim, "heads": heads, "hidden": 32}, "rows": rows}


# --------------------------------------------------------------------------- driver


def write(out: Path, report: dict[str, Any]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON to write")
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes, seconds (tests)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--flex", action="store_true", help="--smoke: also run the FlexAttention check (minutes)")
    parser.add_argument("--parts", default=",".join(SHARES), help="comma-separated subset of the parts")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("gpu_check: no CUDA device; use --smoke for the CPU run", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {"smoke": args.smoke, "device": device.type, "budget_s": args.budget,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    wanted = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(wanted) - set(SHARES))
    if unknown:
        print(f"gpu_check: unknown part(s) {', '.join(unknown)} (known: {', '.join(SHARES)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lenbench-gpu-check-") as work:
        workdir = Path(work)
        os.environ.setdefault("LENBENCH_CACHE", str(Path.home() / ".cache" / "lenbench"))
        deadline = started
        for name in SHARES:
            deadline += SHARES[name] * args.budget
            if name not in wanted:
                continue
            if time.monotonic() > deadline:
                report["parts"][name] = {"skipped": "the budget ran out before it started"}
                write(out, report)
                continue
            t0 = time.monotonic()
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            try:
                if name == "environment":
                    result = part_environment(device, args.smoke)
                elif name == "parity":
                    result = part_parity(device, args.smoke, args.flex)
                elif name == "che":
                    result = part_che(device, args.smoke, workdir)
                elif name == "ppl":
                    result = part_ppl(device, args.smoke)
                elif name == "timing":
                    def partial(so_far: dict[str, Any]) -> None:
                        report["parts"]["timing"] = so_far
                        write(out, report)

                    result = part_timing(device, args.smoke, workdir, deadline, partial)
                else:
                    result = part_dape_fused(device, args.smoke)
            except Exception as exc:  # one part failing must not lose the others
                result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["seconds"] = round(time.monotonic() - t0, 2)
            report["parts"][name] = result
            report["elapsed_s"] = round(time.monotonic() - started, 2)
            write(out, report)
            print(f"gpu_check: {name} done in {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    from lenbench.model import selfcheck

    report["selfcheck_record"] = selfcheck.cell_record()
    report["elapsed_s"] = round(time.monotonic() - started, 2)
    write(out, report)
    print(f"gpu_check: wrote {out} ({report['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
