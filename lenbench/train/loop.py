"""One training loop for every suite: Adam(W), grad clipping, schedules, exact resume.

The loop knows nothing about suites or files: the caller passes a ``step_fn`` that draws a batch
from a numpy ``Generator`` and returns the loss and metrics, plus an optional checkpointer.
A checkpoint holds model, optimizer, scheduler, step and every RNG (torch, numpy generator,
python ``random``), so a resumed run is bit-identical to an uninterrupted one on CPU.

Gradient accumulation: with ``accumulation = a > 1`` one optimizer step calls ``step_fn`` a times
(each drawing one micro-batch) and backpropagates ``loss_i / a`` each time, so the summed gradient
is that of the mean loss over the a micro-batches: with equal-sized micro-batches, the gradient of
one batch a times larger (then clipping and the optimizer step, once). The logged loss and each
metric are their means over the micro-batches. ``a = 1`` is the plain loop.

Given a ``parallel`` context (the caller's, under torchrun: :mod:`lenbench.train.parallel`; this
module imports nothing of execution) the same loop trains data-parallel: the model runs
wrapped in DDP, each rank draws from its own RNG streams, the loss is averaged over ranks, rank 0's
checkpoint reaches every rank on resume, and a checkpoint also holds every rank's RNG states. With
accumulation, gradients are all-reduced once per step (``no_sync`` on all micro-batches but the last).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lenbench.errors import LenbenchError


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule. Defaults: CHE's Adam, clip 1.0, constant LR (docs/che.md §2.5)."""

    steps: int
    lr: float = 1e-4
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"  # or "cosine" (warmup then cosine to min_lr_ratio * lr)
    warmup_frac: float = 0.0
    min_lr_ratio: float = 0.1


class NonFiniteLoss(LenbenchError):
    """The loss became NaN or inf; carries the step at which it happened."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.step = step


class Checkpointer(Protocol):
    def save_checkpoint(self, state: dict[str, Any]) -> None: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...


class Parallel(Protocol):
    """The collectives a data-parallel run gives the loop (:class:`lenbench.train.parallel.DataParallel`)."""

    world_size: int

    def rank_seed(self, seed: int) -> int: ...

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def mean(self, value: torch.Tensor) -> float: ...

    def broadcast(self, obj: Any) -> Any: ...

    def gather(self, obj: Any) -> list[Any]: ...

    def own(self, ranks: list[Any] | None, fallback: Any) -> Any: ...


StepFn = Callable[[nn.Module, np.random.Generator, int], tuple[torch.Tensor, dict[str, float]]]


class CompileClock:
    """Seconds spent in training steps that compiled a new graph (``torch.compile``'s cost).

    A step counts when dynamo's count of compiled frames grew during it; its whole wall clock is
    charged (compilation dominates such a step: seconds against milliseconds of compute).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        self._frames = 0

    @staticmethod
    def frames() -> int:
        from torch._dynamo.utils import counters

        return int(sum(counters["frames"].values())) + int(sum(counters["stats"].values()))

    def begin(self) -> None:
        self._frames = self.frames()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        elapsed = time.perf_counter() - self._t0
        if self.frames() != self._frames:
            self.seconds += elapsed


def lr_lambda(cfg: OptimConfig) -> Callable[[int], float]:
    """Multiplier of the base LR at a step: constant, or linear warmup then cosine decay."""
    warmup = int(cfg.warmup_frac * cfg.steps)

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def fused_ok(model: nn.Module) -> bool | None:
    """Fused Adam(W) (one kernel over all parameters: the same update, less per-parameter overhead)
    when every parameter is a floating tensor on the CPU or CUDA; ``None`` lets torch choose otherwise."""
    params = list(model.parameters())
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (CHE) or AdamW with decay on weights only, not biases or norms (docs/dape.md §1.4)."""
    if cfg.weight_decay == 0:
        return torch.optim.Adam(
            model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused_ok(model)
        )
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith(".bias") or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused_ok(model))


def train(
    model: nn.Module,
    step_fn: StepFn,
    cfg: OptimConfig,
    seed: int,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    compile_clock: CompileClock | None = None,
    accumulation: int = 1,
    parallel: Parallel | None = None,
) -> int:
    """Train for ``cfg.steps`` steps (resuming from the checkpointer if it has state).

    ``step_fn(model, rng, step)`` returns ``(loss, metrics)`` for one (micro-)batch, called
    ``accumulation`` times per step (module doc); ``on_step(step, metrics)`` sees every
    completed step (1-based); ``on_start(step)`` is called once with the step training starts
    from (non-zero when resuming). Returns the step it resumed from (0 for a fresh run).

    With a ``compile_clock`` the model runs through ``torch.compile(dynamic=True)`` and the clock
    sums the wall clock of the steps that compiled a graph (kept out of the metrics, which must
    replay identically on resume). ``parallel`` (None outside torchrun) makes the run data-parallel.
    """
    if accumulation < 1:
        raise LenbenchError(f"gradient accumulation must be >= 1, got {accumulation}")
    par = parallel
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    seed = seed if par is None else par.rank_seed(seed)
    rng = np.random.default_rng(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    start = 0
    state = checkpointer.load_checkpoint() if checkpointer is not None else None
    if par is not None:
        state = par.broadcast(state)  # rank 0's checkpoint, on every rank
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state if par is None else par.own(state.get("ranks"), state)
        if rngs is not None:
            rng.bit_generator.state = rngs["numpy"]
            random.setstate(rngs["python"])
            torch.set_rng_state(rngs["torch"])
            if rngs.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rngs["cuda"])
        start = int(state["step"])
    if on_start is not None:
        on_start(start)

    def rng_states() -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None  # dropout draws there on GPU
        return {"numpy": rng.bit_generator.state, "python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": cuda}

    def snapshot(step: int) -> dict[str, Any]:
        snap = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **rng_states(),
            "step": step,
        }
        if par is not None:
            snap["ranks"] = par.gather(rng_states())
        return snap

    model.train()
    ddp = None if par is None else par.wrap(model)
    net = model if ddp is None else ddp
    clock = compile_clock
    if clock is not None:
        net = torch.compile(net, dynamic=True)
    for step in range(start, cfg.steps):
        if clock is not None:
            clock.begin()
        if accumulation == 1:
            loss, metrics = step_fn(net, rng, step)
            value = float(loss.detach()) if par is None else par.mean(loss)
            if not math.isfinite(value):
                raise NonFiniteLoss(step + 1, value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            optimizer.zero_grad(set_to_none=True)
            mean_loss, metrics = accumulate(net, ddp, step_fn, rng, step, accumulation)
            value = float(mean_loss) if par is None else par.mean(mean_loss)
            if not math.isfinite(value):
                raise NonFiniteLoss(step + 1, value)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        metrics = {"loss": value, **metrics, "lr": scheduler.get_last_lr()[0]}
        if clock is not None:
            clock.end()
        if on_step is not None:
            on_step(step + 1, metrics)
        done = step + 1
        if checkpointer is not None and checkpoint_every > 0 and (done % checkpoint_every == 0 or done == cfg.steps):
            checkpointer.save_checkpoint(snapshot(done))
    return start


def accumulate(
    net: nn.Module, ddp: Any, step_fn: StepFn, rng: np.random.Generator, step: int, accumulation: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Backpropagate ``accumulation`` micro-batches' ``loss / accumulation`` -> (mean loss, mean metrics).

    Under DDP (``ddp`` set) only the last backward all-reduces the gradients. The mean loss stays a
    detached tensor on the loss's device (NCCL reduces CUDA tensors only).
    """
    total = torch.zeros(())
    sums: dict[str, float] = {}
    for i in range(accumulation):
        sync = ddp is None or i == accumulation - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            loss, metrics = step_fn(net, rng, step)
            (loss / accumulation).backward()
        total = loss.detach().float() + total.to(loss.device)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return total / accumulation, {key: value / accumulation for key, value in sums.items()}
