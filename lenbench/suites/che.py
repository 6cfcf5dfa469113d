"""The CHE suite: train an encoder per (task, PE, seed) at lengths 1..40, test at every length.

Protocol (che.md §2; DESIGN.md): one length per batch drawn uniformly from the training range,
unmasked cross-entropy, Adam with global-norm clipping; each test length gets ``samples`` fresh
samples in sub-batches, per-sub-batch accuracy pooled over masked tokens, per-length accuracy the
mean over sub-batches, and the cell's score the mean over test lengths. Dropout is off at
evaluation (che.md §7.6: the reference leaves it on; ``eval.dropout: true`` restores that).
Cells train on CUDA when it is available (the ``paper`` profile's device), else on the CPU; batches
are drawn on the CPU from numpy and moved to the model's device.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.devices import autocast_for, check_precision, compute_device
from lenbench.errors import LenbenchError
from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
from lenbench.pe.registry import parse_pe_spec, resolve_pes
from lenbench.results import CellDir, atomic_write_json
from lenbench.suites.base import Cell, Reporter
from lenbench.tasks.che import TASKS, CheTask
from lenbench.train import CompileClock, OptimConfig, train

name = "che"


@dataclass(frozen=True)
class CheModel:
    layers: int = 5
    dim: int = 64
    heads: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class CheTrain:
    steps: int = 10000
    batch_size: int = 128
    lr: float = 1e-4
    grad_clip: float = 1.0
    min_length: int = 1
    max_length: int = 40
    checkpoint_every: int = 500
    log_every: int = 25
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model for training (compile seconds reported apart)


@dataclass(frozen=True)
class CheEval:
    lengths: str | list[int] = "41-500"
    samples: int = 512
    batch_size: int = 64
    dropout: bool = False


@dataclass(frozen=True)
class CheProfile:
    model: CheModel = field(default_factory=CheModel)
    train: CheTrain = field(default_factory=CheTrain)
    eval: CheEval = field(default_factory=CheEval)
    pe_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheGrid:
    tasks: str | list[str] = "all"
    pes: str | list[str] = "dape"
    seeds: str | int | list[int] = 0


def _as_list(value: str | list[str]) -> list[str]:
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]


def resolve_tasks(value: str | list[str]) -> list[str]:
    names = _as_list(value)
    if names == ["all"]:
        return TASKS.names()
    for n in names:
        TASKS.get(n)
    return names


def check_model(model: CheModel) -> None:
    """Reject encoder shapes that cannot be built, before any cell starts."""
    for what, value in (("layers", model.layers), ("width (dim)", model.dim), ("heads", model.heads)):
        if value < 1:
            raise LenbenchError(f"{what} must be >= 1, got {value}")
    if model.dim % model.heads:
        raise LenbenchError(f"width {model.dim} is not divisible by {model.heads} heads")
    if not 0.0 <= model.dropout < 1.0:
        raise LenbenchError(f"dropout must be in [0, 1), got {model.dropout}")


def check_lengths(train_cfg: CheTrain, lengths: list[int]) -> None:
    if train_cfg.min_length < 1 or train_cfg.max_length < train_cfg.min_length:
        raise LenbenchError(
            f"training lengths {train_cfg.min_length}..{train_cfg.max_length} are impossible (need 1 <= min <= max)"
        )
    bad = [n for n in lengths if n <= train_cfg.max_length]
    if bad:
        raise LenbenchError(
            f"test lengths must exceed the training maximum {train_cfg.max_length}; got {bad[:5]}"
        )
    for what, value in (("steps", train_cfg.steps), ("batch size", train_cfg.batch_size)):
        if value < 1:
            raise LenbenchError(f"{what} must be >= 1, got {value}")
    if train_cfg.lr <= 0:
        raise LenbenchError(f"learning rate must be > 0, got {train_cfg.lr}")
    check_precision(train_cfg.precision)


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one cell per (task, PE, seed)."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(CheProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid = from_dict(CheGrid, merge(suite_file.grid, overrides.get("grid", {})), f"{suite_file.path} grid")
    tasks = resolve_tasks(grid.tasks)
    pes = resolve_pes(grid.pes, prof.pe_defaults)
    seeds = parse_int_list(grid.seeds, "seeds")
    if any(seed < 0 for seed in seeds):
        raise LenbenchError(f"seeds must be >= 0, got {min(seeds)}")
    lengths = parse_int_list(prof.eval.lengths, "test lengths")
    check_model(prof.model)
    check_lengths(prof.train, lengths)
    if prof.eval.samples < 1 or prof.eval.batch_size < 1:
        raise LenbenchError("evaluation samples and batch size must be >= 1")
    cells = []
    for task in tasks:
        for spec in pes:
            for seed in seeds:
                config = {
                    "suite": name,
                    "task": task,
                    "pe": str(spec),
                    "seed": seed,
                    "model": asdict(prof.model),
                    "train": asdict(prof.train),
                    "eval": {**asdict(prof.eval), "lengths": lengths},
                }
                cells.append(Cell(name, f"{task}-{spec.label}-s{seed}", config))
    return cells


def pack(task: CheTask, inputs: torch.Tensor, out_len: int) -> torch.Tensor:
    """Append ``out_len`` empty tokens (id ``input_size``) to the inputs (che.md §2.1)."""
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
    """Sum(mask * [argmax = target]) / Sum(mask), pooled over the batch (che.md §2.6)."""
    mask = task.accuracy_mask(targets)
    correct = (logits.argmax(-1) == targets) & mask
    return float(correct.sum()) / max(1, int(mask.sum()))


def max_total_length(task: CheTask, lengths: list[int]) -> int:
    return max(n + task.output_length(n) for n in lengths)


def build_model(cfg: dict[str, Any], task: CheTask) -> Transformer:
    m, t = cfg["model"], cfg["train"]
    model_cfg = ModelConfig(
        vocab_size=task.input_size + 1,
        out_size=task.output_size,
        dim=m["dim"],
        layers=m["layers"],
        heads=m["heads"],
        dropout=m["dropout"],
        causal=False,
        train_length=max_total_length(task, [t["max_length"]]),
        max_length=max_total_length(task, cfg["eval"]["lengths"]),
    )
    return Transformer(model_cfg, parse_pe_spec(cfg["pe"]))


def evaluate(
    model: Transformer, task: CheTask, cfg: dict[str, Any], cell_dir: CellDir | None, reporter: Reporter, label: str,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[int, float]:
    """Accuracy per test length; progress is saved after each length so a kill resumes here."""
    ev = cfg["eval"]
    partial_path = cell_dir.path / "eval_partial.json" if cell_dir is not None else None
    device = next(model.parameters()).device
    done: dict[int, float] = {}
    if partial_path is not None and partial_path.exists():
        try:
            done = {int(k): float(v) for k, v in json.loads(partial_path.read_text()).items()}
        except (json.JSONDecodeError, ValueError):
            done = {}
    model.train(ev["dropout"])
    reporter.eval_start(label, len(ev["lengths"]))
    with torch.no_grad():
        for i, length in enumerate(ev["lengths"]):
            if length not in done:
                rng = np.random.default_rng([cfg["seed"], 1, length])
                accs = []
                for start in range(0, ev["samples"], ev["batch_size"]):
                    batch = min(ev["batch_size"], ev["samples"] - start)
                    inputs, targets = (t.to(device) for t in task.sample(rng, batch, length))
                    with autocast():
                        logits = predict(model, task, inputs, length)
                    accs.append(masked_accuracy(task, logits, targets))
                done[length] = float(np.mean(accs))
                if partial_path is not None:
                    atomic_write_json(partial_path, {str(k): v for k, v in done.items()})
            reporter.eval_step(i + 1, f"N={length}", done[length])
    return {n: done[n] for n in ev["lengths"]}


def run_cell(cell: Cell, cell_dir: CellDir, reporter: Reporter) -> dict[str, Any]:
    """Train (resuming from the cell's checkpoint), evaluate, write metrics; returns the summary."""
    cfg = cell.config
    task = TASKS.get(cfg["task"])()
    t = cfg["train"]
    torch.manual_seed(cfg["seed"])
    device = compute_device()
    autocast = autocast_for(t["precision"], device)
    model = build_model(cfg, task).to(device)

    def step_fn(model: Transformer, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        length = int(rng.integers(t["min_length"], t["max_length"] + 1))
        inputs, targets = (x.to(device) for x in task.sample(rng, t["batch_size"], length))
        with autocast():
            logits = predict(model, task, inputs, length)
        loss = cross_entropy(logits, targets)
        return loss, {"acc": masked_accuracy(task, logits.detach(), targets), "length": length}

    resumed = {"from": 0}
    clock = CompileClock() if t["compile"] else None

    def on_start(step: int) -> None:
        resumed["from"] = step
        cell_dir.truncate_log(step)
        reporter.train_start(cell.label, t["steps"], step)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        reporter.train_step(step, metrics)
        if step % t["log_every"] == 0 or step == t["steps"]:
            cell_dir.append_log({"step": step, **metrics})

    optim = OptimConfig(steps=t["steps"], lr=t["lr"], grad_clip=t["grad_clip"])
    started = time.perf_counter()
    train(model, step_fn, optim, cfg["seed"], cell_dir, t["checkpoint_every"], on_step, on_start,
          compile_clock=clock)
    trained = time.perf_counter()
    accuracies = evaluate(model, task, cfg, cell_dir, reporter, cell.label, autocast)
    seconds = {"train_seconds_this_run": round(trained - started, 2),
               "compile_seconds_this_run": round(clock.seconds if clock is not None else 0.0, 2),
               "eval_seconds_this_run": round(time.perf_counter() - trained, 2)}
    score = float(np.mean(list(accuracies.values())))
    common = {"suite": name, "task": cfg["task"], "pe": cfg["pe"], "seed": cfg["seed"], "train_len": t["max_length"]}
    records = [{**common, "eval_len": n, "metric": "accuracy", "value": a} for n, a in accuracies.items()]
    records.append({**common, "eval_len": None, "metric": "score", "value": score})
    cell_dir.write_metrics(records)
    return {"score": score, "resumed_from": resumed["from"], "params": model.num_parameters(), **seconds}

