"""The CHE suite: train an encoder per (task, PE, seed) at lengths 1..40, test at every length.

Protocol (docs/che.md §2; docs/architecture.md): one length per batch drawn uniformly from the training range,
unmasked cross-entropy, Adam with global-norm clipping; each test length gets ``samples`` fresh
samples in sub-batches, per-sub-batch accuracy pooled over masked tokens, per-length accuracy the
mean over sub-batches, and the cell's score the mean over test lengths. Dropout stays **on** at
evaluation, as in the reference (RPE/CHE ``range_evaluation.py`` applies the model with an rng and
Haiku's dropout has no eval switch, docs/che.md §2.6); ``eval.dropout: false`` turns it off.

What a reader needs beside the score (issue 16; :mod:`lenbench.suites.che.stats`):

- the standard error of every per-length accuracy and of the score;
- accuracy on the training lengths (``eval.train_lengths``, fresh samples), and ``fit``: whether
  that in-distribution score reached ``eval.fit_threshold``; a cell that did not fit is reported
  as such, never as extrapolation;
- the majority baseline (a constant class per output position) on the same test samples.

The learning rate is a grid axis (``train.lr`` may be a list): one cell per (task, PE, lr, seed).
Cells train on CUDA when it is available (the ``paper`` profile's device), else on the CPU; batches
are drawn on the CPU from numpy and moved to the model's device. Training is fp32 by default on
every device, as the JAX reference trains; ``train.precision: bf16`` is an option (CUDA autocast,
position terms kept fp32). Every metrics record carries the precision and the attention backends
that evaluated it (``precision``, ``backend``), with a randomized PE whether the length overflowed
its range L (``overflow``); ``DONE`` adds the training backends (``run``), the GPU self-checks
(:mod:`lenbench.model.selfcheck`) the run relied on and their warnings.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from lenbench.devices import autocast_for, compute_device, effective_precision
from lenbench.model import selfcheck
from lenbench.model.attention import backends_used, reset_backends
from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
from lenbench.pe.base import overflow_lengths, position_limits, reset_overflow
from lenbench.pe.registry import parse_pe_spec, pe_label
from lenbench.progress import forward_cost
from lenbench.results import CellDir, atomic_write_json
from lenbench.suites.base import Cell, Reporter, RunContext, Work
from lenbench.suites.che.config import CheCellConfig, name
from lenbench.suites.che.stats import (
    Counts,
    majority_classes,
    majority_counts,
    pooled,
    ratio_se,
    sample_counts,
    score_se,
)
from lenbench.tasks.che import TASKS, CheTask
from lenbench.train import CompileClock, OptimConfig, train


def pack(task: CheTask, inputs: torch.Tensor, out_len: int) -> torch.Tensor:
    """Append ``out_len`` empty tokens (id ``input_size``) to the inputs (docs/che.md §2.1)."""
    empty = torch.full((inputs.shape[0], out_len), task.input_size, dtype=torch.long, device=inputs.device)
    return torch.cat([inputs, empty], dim=1)


def predict(model: Transformer, task: CheTask, inputs: torch.Tensor, length: int) -> torch.Tensor:
    """Logits ``[B, T_out, C]`` read from the last ``output_length(N)`` positions.

    The final block computes only those positions (``Transformer.forward(ids, last)``): the same
    logits as slicing a full forward, for less work.
    """
    out_len = task.output_length(length)
    return model(pack(task, inputs, out_len), last=out_len)


def masked_accuracy(task: CheTask, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum(mask * [argmax = target]) / Sum(mask), pooled over the batch (docs/che.md §2.6)."""
    mask = task.accuracy_mask(targets)
    correct = (logits.argmax(-1) == targets) & mask
    return float(correct.sum()) / max(1, int(mask.sum()))


def max_total_length(task: CheTask, lengths: list[int]) -> int:
    return max(n + task.output_length(n) for n in lengths)


def build_model(cfg: CheCellConfig, task: CheTask) -> Transformer:
    """The encoder of docs/che.md §2.3 for one cell: one-hot-equivalent token embedding, the cell's PE."""
    m = cfg.model
    model_cfg = ModelConfig(
        vocab_size=task.input_size + 1,
        out_size=task.output_size,
        dim=m.dim,
        layers=m.layers,
        heads=m.heads,
        dropout=m.dropout,
        causal=False,
        train_length=max_total_length(task, [cfg.train.max_length]),
        max_length=max_total_length(task, cfg.lengths),
    )
    return Transformer(model_cfg, parse_pe_spec(cfg.pe))


@dataclass(frozen=True)
class LengthResult:
    """One evaluation length: accuracy (mean of sub-batch pooled accuracies), its SE, the majority
    baseline on the same samples, the number of samples, whether a randomized PE fell back to
    plain positions ``0..n-1`` because the sequence exceeded its range L (``overflow``), and the
    attention backends that evaluated it (``backend``, "+"-joined)."""

    accuracy: float
    se: float
    majority: float
    samples: int
    overflow: bool = False
    backend: str | None = None

    @staticmethod
    def from_json(data: Any) -> LengthResult | None:
        if not isinstance(data, dict):
            return None  # written by an older lenbench: evaluate that length again
        try:
            return LengthResult(float(data["accuracy"]), float(data["se"]), float(data["majority"]),
                                int(data["samples"]), bool(data.get("overflow", False)), data.get("backend"))
        except (KeyError, TypeError, ValueError):
            return None


def evaluate_length(
    model: Transformer, task: CheTask, rng: np.random.Generator, length: int, samples: int, batch_size: int,
    autocast: Callable[[], Any] = contextlib.nullcontext, majority_rng: np.random.Generator | None = None,
) -> LengthResult:
    """``samples`` fresh samples of one length in sub-batches (docs/che.md §2.6), with SE and majority.

    The majority classes are fitted on an independent draw of ``samples`` (from ``majority_rng``).
    """
    device = next(model.parameters()).device
    accs, counts, targets_all, masks_all = [], [], [], []
    for start in range(0, samples, batch_size):
        batch = min(batch_size, samples - start)
        inputs, targets = (t.to(device) for t in task.sample(rng, batch, length))
        with autocast():
            logits = predict(model, task, inputs, length)
        mask = task.accuracy_mask(targets)
        counts.append(sample_counts(logits.argmax(-1), targets, mask))
        accs.append(pooled(counts[-1]))  # the sub-batch's masked_accuracy, from the same counts
        targets_all.append(targets.cpu())
        masks_all.append(mask.cpu())
    _, fit_targets = task.sample(majority_rng or np.random.default_rng([length, 3]), samples, length)
    constant = majority_classes(fit_targets, task.accuracy_mask(fit_targets), task.output_size)
    majority = pooled(majority_counts(constant, torch.cat(targets_all), torch.cat(masks_all)))
    return LengthResult(float(np.mean(accs)), ratio_se(Counts.join(counts)), majority, samples)


def evaluate(
    model: Transformer, task: CheTask, cfg: CheCellConfig, cell_dir: CellDir | None, reporter: Reporter, label: str,
    autocast: Callable[[], Any] = contextlib.nullcontext, which: str = "test",
) -> dict[int, LengthResult]:
    """Results per test length (``which="test"``) or training length (``"train"``, fresh samples
    from a separate stream); progress is saved after each length so a kill resumes there."""
    ev = cfg.eval
    lengths, samples, stream = (
        (cfg.lengths, ev.samples, 1) if which == "test" else (cfg.train_lengths, ev.train_samples, 2)
    )
    partial_name = "eval_partial.json" if which == "test" else "eval_partial_train.json"
    partial_path = cell_dir.path / partial_name if cell_dir is not None else None
    done: dict[int, LengthResult] = {}
    if partial_path is not None and partial_path.exists():
        try:
            stored = json.loads(partial_path.read_text())
            done = {int(k): r for k, v in stored.items() if (r := LengthResult.from_json(v)) is not None}
        except (json.JSONDecodeError, ValueError, AttributeError):
            done = {}
    model.train(ev.dropout)
    device = next(model.parameters()).device
    tokens = [n + task.output_length(n) for n in lengths]
    costs = [forward_cost(t, cfg.model.dim, cfg.model.layers, task.output_size) for t in tokens]
    reporter.eval_start(f"{label} ({which} lengths)", len(lengths), costs)
    with torch.no_grad():
        for i, length in enumerate(lengths):
            if length not in done:
                rng = np.random.default_rng([cfg.seed, stream, length])
                fit_rng = np.random.default_rng([cfg.seed, stream + 2, length])
                # Dropout masks and randomized positions draw from torch's RNG: seed it per length, so
                # a run resumed mid-evaluation scores every length exactly as an uninterrupted one.
                cuda = [device.index or 0] if device.type == "cuda" else []
                reset_overflow(model)
                reset_backends(model)
                with torch.random.fork_rng(devices=cuda):
                    torch.manual_seed(int(np.random.default_rng([cfg.seed, stream + 4, length]).integers(2**62)))
                    result = evaluate_length(model, task, rng, length, samples, ev.batch_size, autocast, fit_rng)
                done[length] = replace(result, overflow=bool(overflow_lengths(model)),
                                       backend="+".join(backends_used(model)) or None)
                if partial_path is not None:
                    atomic_write_json(partial_path, {str(k): asdict(v) for k, v in done.items()})
            reporter.eval_step(i + 1, f"N={length}", done[length].accuracy)
    return {n: done[n] for n in lengths}


def summarize(results: dict[int, LengthResult]) -> tuple[float, float, float]:
    """(score, its SE, majority score): means over lengths (:mod:`lenbench.suites.che.stats`)."""
    values = list(results.values())
    score = float(np.mean([r.accuracy for r in values]))
    return score, score_se([r.se for r in values]), float(np.mean([r.majority for r in values]))


def run_cell(cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
    """Train (resuming from the cell's checkpoint), evaluate, write metrics; returns the summary."""
    reporter = ctx.reporter
    cfg: CheCellConfig = cell.spec
    task = TASKS.get(cfg.task)()
    t = cfg.train
    torch.manual_seed(cfg.seed)
    device = compute_device()
    precision = effective_precision(t.precision, device)  # bf16 only once proven on this device
    autocast = autocast_for(precision, device)
    model = build_model(cfg, task).to(device)

    def step_fn(model: Transformer, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        length = int(rng.integers(t.min_length, t.max_length + 1))
        inputs, targets = (x.to(device) for x in task.sample(rng, t.batch_size, length))
        with autocast():
            logits = predict(model, task, inputs, length)
        loss = cross_entropy(logits, targets)
        return loss, {"acc": masked_accuracy(task, logits.detach(), targets), "length": length}

    resumed = {"from": 0}
    clock = CompileClock() if t.compile else None

    def on_start(step: int) -> None:
        resumed["from"] = step
        cell_dir.truncate_log(step)
        reporter.train_start(cell.label, t.steps, step)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        reporter.train_step(step, metrics)
        if step % t.log_every == 0 or step == t.steps:
            cell_dir.append_log({"step": step, **metrics})

    optim = OptimConfig(steps=t.steps, lr=cfg.lr, grad_clip=t.grad_clip)
    started = time.perf_counter()
    reset_overflow(model)
    train(model, step_fn, optim, cfg.seed, cell_dir, t.checkpoint_every, on_step, on_start,
          compile_clock=clock)
    trained = time.perf_counter()
    train_backends, train_overflow = backends_used(model), overflow_lengths(model)
    in_dist = evaluate(model, task, cfg, cell_dir, reporter, cell.label, autocast, which="train")
    tests = evaluate(model, task, cfg, cell_dir, reporter, cell.label, autocast, which="test")
    seconds = {"train_seconds_this_run": round(trained - started, 2),
               "compile_seconds_this_run": round(clock.seconds if clock is not None else 0.0, 2),
               "eval_seconds_this_run": round(time.perf_counter() - trained, 2)}
    run = run_record(device, t.precision, precision, train_backends,
                     joined_backends(r.backend for r in [*in_dist.values(), *tests.values()]))
    records, summary = cell_records(cfg, in_dist, tests, run, randomized=bool(position_limits(model)))
    cell_dir.write_metrics(records)
    checks = selfcheck.cell_record()
    for line in checks["warnings"]:
        reporter.message(f"{cell.label}: {line}")
    overflow = {"range": position_limits(model), "train_sequence_lengths": train_overflow,
                "test_lengths": [n for n, r in tests.items() if r.overflow]} if position_limits(model) else None
    return {**summary, "resumed_from": resumed["from"], "params": model.num_parameters(), **seconds,
            "run": run, "selfcheck": checks, "randomized_overflow": overflow}


def joined_backends(per_length: Any) -> list[str]:
    """The sorted union of "+"-joined backend names (None entries skipped)."""
    return sorted({b for joined in per_length if joined for b in joined.split("+")})


def run_record(device: torch.device, requested: str, precision: str, train_backends: list[str],
               eval_backends: list[str]) -> dict[str, Any]:
    """What ran: device, precision (``precision_requested`` when a self-check changed it), the
    attention backends of evaluation (every length, also those of an earlier run of a resumed cell)
    and of the training steps run in this process ("+"-joined; None when none ran)."""
    return {"device": device.type, "precision": precision, "precision_requested": requested,
            "train_backend": "+".join(train_backends) or None, "backend": "+".join(eval_backends) or None}


def cell_records(
    cfg: CheCellConfig, in_dist: dict[int, LengthResult], tests: dict[int, LengthResult],
    run: dict[str, Any] | None = None, randomized: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """metrics.json records (per length: accuracy, its SE, majority, and with a randomized PE whether it
    overflowed its range; per cell: score, train_score, majority_score, with SEs and the ``fit`` flag)
    and the cell's summary. Every record carries ``run``'s precision (:func:`run_record`) and the
    evaluation backends (per length: that length's; per cell: all lengths'), which a resumed run
    reproduces (they are kept with each length's partial result)."""
    score, se, majority = summarize(tests)
    train_score, train_se, train_majority = summarize(in_dist)
    fit = bool(train_score >= cfg.eval.fit_threshold)
    common = {"suite": name, "task": cfg.task, "pe": pe_label(cfg.to_dict()), "seed": cfg.seed,
              "train_len": cfg.train.max_length, "lr": cfg.lr}
    if run is not None:
        common.update(precision=run["precision"], backend=run["backend"])
    records = []
    for metric, results in (("accuracy", tests), ("train_accuracy", in_dist)):
        for n, r in results.items():
            per_length = {"backend": r.backend} if run is not None else {}
            records.append({**common, "eval_len": n, "metric": metric, "value": r.accuracy, "se": r.se,
                            "majority": r.majority, "samples": r.samples, **per_length,
                            **({"overflow": r.overflow} if randomized else {})})
    per_cell = {"fit": fit, "fit_threshold": cfg.eval.fit_threshold, "train_score": train_score}
    records += [
        {**common, "eval_len": None, "metric": "score", "value": score, "se": se, **per_cell},
        {**common, "eval_len": None, "metric": "train_score", "value": train_score, "se": train_se, **per_cell},
        {**common, "eval_len": None, "metric": "majority_score", "value": majority, "se": None, **per_cell},
        {**common, "eval_len": None, "metric": "train_majority_score", "value": train_majority, "se": None,
         **per_cell},
    ]
    summary = {"score": score, "score_se": se, "train_score": train_score, "fit": fit, "majority_score": majority}
    return records, summary



def workload(cell: Cell) -> list[Work]:
    """The cell's work for ``run --dry-run`` (:mod:`lenbench.execute.estimate`): ``steps`` training
    steps spread evenly over the training lengths (drawn uniformly), and the evaluation batches at
    every training and test length; each item's cost is its batch x forward cost of ``N + output_length(N)``."""
    cfg: CheCellConfig = cell.spec
    task = TASKS.get(cfg.task)()
    t, ev, m = cfg.train, cfg.eval, cfg.model

    def item(kind: str, n: int, batch: int, repeats: float) -> Work:
        cost = batch * forward_cost(n + task.output_length(n), m.dim, m.layers, task.output_size)
        return Work(kind, n, batch, cost, repeats)

    lengths = range(t.min_length, t.max_length + 1)
    works = [item("train", n, t.batch_size, t.steps / len(lengths)) for n in lengths]
    for eval_lengths, samples in ((cfg.train_lengths, ev.train_samples), (cfg.lengths, ev.samples)):
        full, rest = divmod(samples, ev.batch_size)
        for n in eval_lengths:
            works.append(item("eval", n, ev.batch_size, full))
            if rest:
                works.append(item("eval", n, rest, 1))
    return works


def probe(cell: Cell) -> Callable[[Work], None]:
    """One training step (forward, backward, clipping, Adam) or one evaluation batch of a :class:`Work`
    item, on a model of the cell's shape and device, with task samples from a fixed generator."""
    cfg: CheCellConfig = cell.spec
    task = TASKS.get(cfg.task)()
    t = cfg.train
    device = compute_device()
    autocast = autocast_for(t.precision, device)
    model = build_model(cfg, task).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)

    def run(work: Work) -> None:
        inputs, targets = (x.to(device) for x in task.sample(rng, work.batch, work.size))
        if work.kind == "train":
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = predict(model, task, inputs, work.size)
            cross_entropy(logits, targets).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
        else:
            model.train(cfg.eval.dropout)
            with torch.no_grad(), autocast():
                predict(model, task, inputs, work.size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run
