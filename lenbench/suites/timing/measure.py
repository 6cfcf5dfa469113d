"""Measuring one timing group: the model each PE is timed on, its memory pre-check, the interleaved
rounds in this process (:func:`measure_group`) or in a spawned worker (:func:`measure_group_isolated`).

The suite, what it times and why, and how a group is stored: :mod:`lenbench.suites.timing`.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from lenbench import bench
from lenbench.errors import LenbenchError
from lenbench.model.attention import Attention
from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
from lenbench.pe.base import PositionalEncoding
from lenbench.pe.registry import PESpec, parse_pe_spec, pe_class
from lenbench.results import config_hash
from lenbench.suites.timing.config import TimingCellConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EMBED_HEAD = "embedding and head"  # the contender name of the PE-independent ends of the model


def attention_backend(policy: str) -> str:
    """The model's ``attention_backend`` for a backend policy."""
    return "auto" if policy == "fastest" else policy



def order_seed(cfg: TimingCellConfig) -> int:
    """The seed of a group's random round orders: from its config, so a rerun repeats them."""
    return int(config_hash(cfg.to_dict()), 16) % (2**31)


# --------------------------------------------------------------------------- what is timed


def is_full(cfg: TimingCellConfig) -> bool:
    return cfg.full


def estimate_full_ms(k_layer_ms: float, layers: int, layers_timed: int, embed_head_ms: float) -> float:
    """Full-model time from a K-layer slice: ``K-layer time x layers / K + embedding-and-head time``."""
    return k_layer_ms * layers / layers_timed + embed_head_ms


def model_config(cfg: TimingCellConfig, layers: int) -> ModelConfig:
    """The LM decoder of the cell's shape (GPT-2 style, no dropout), attention per its backend policy."""
    return ModelConfig.gpt(cfg.vocab_size, cfg.dim, layers, cfg.heads, 0.0, cfg.train_len,
                           max(cfg.eval_len, cfg.train_len), attention_backend(cfg.backend_policy))


class EmbedHead(nn.Module):
    """The PE-independent ends of the LM: token embedding, final LayerNorm and vocabulary head."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        nn.init.trunc_normal_(self.embed.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def build_timed_module(cfg: TimingCellConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The full model (ids -> logits) or, for a slice, K blocks (hidden states -> hidden states)."""
    spec = parse_pe_spec(cfg.pe)
    torch.manual_seed(0)
    with torch.device(device):
        if is_full(cfg):
            module: nn.Module = Transformer(model_config(cfg, cfg.layers), spec)
        else:
            # A one-token vocabulary gives the K blocks the LM's initialisation without the cost
            # of a 50k-row embedding and head, which the slice does not use.
            stub = Transformer(replace(model_config(cfg, cfg.layers_timed), vocab_size=1, out_size=1), spec)
            module = nn.Sequential(*stub.blocks)
    return module.to(dtype)


def make_step(
    module: nn.Module, inputs: torch.Tensor, mode: str, targets: torch.Tensor | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(call, reset): one forward (``fwd``) or forward + loss + backward (``train``), and a reset
    that drops gradients so every call starts from the same memory state."""

    def reset() -> None:
        module.zero_grad(set_to_none=True)
        inputs.grad = None

    if mode == "fwd":

        def forward() -> None:
            with torch.no_grad():
                module(inputs)

        return forward, reset
    grad_out = None if targets is not None else torch.randn_like(inputs)

    def train_step() -> None:
        reset()
        out = module(inputs)
        if targets is not None:
            cross_entropy(out, targets).backward()
        else:
            out.backward(grad_out)

    return train_step, reset


def _hidden_width(pe: type[PositionalEncoding], spec: PESpec) -> int:
    param = inspect.signature(pe.__init__).parameters.get("hidden")
    default = param.default if param is not None and isinstance(param.default, int) else 0
    return int(spec.options.get("hidden", default))


def dape_width(label: str) -> int | None:
    """D_DAPE of a PE label: the hidden width of a DAPE PE's MLP (32 unless ``hidden=`` says
    otherwise), None for a PE without one."""
    spec = parse_pe_spec(label)
    width = _hidden_width(pe_class(spec), spec)
    return width or None


def estimate_bytes(cfg: TimingCellConfig) -> int:
    """A lower bound on the memory a cell needs: weights (and gradients), activations kept for
    backward, and the N x N attention terms that are surely materialized. Used to skip cells that
    cannot fit before trying them; real allocation failures are caught as well."""
    spec = parse_pe_spec(cfg.pe)
    pe = pe_class(spec)
    elem = DTYPES[cfg.precision].itemsize
    n, d, h, v = cfg.eval_len, cfg.dim, cfg.heads, cfg.vocab_size
    full, train = is_full(cfg), cfg.mode == "train"
    k = cfg.layers if full else cfg.layers_timed
    total = (k * 12 * d * d + (2 * v * d if full else 0)) * elem * (2 if train else 1)
    if train:
        total += k * 16 * n * d * elem
    if cfg.backend_policy == "paper":  # full [H, N, N] logits and softmax (and DAPE's [N, N, width])
        per_layer = (2 * h + (2 * h + _hidden_width(pe, spec) if pe.has_hook("scores") else 0)) * n * n * elem
        total += per_layer * (k if train else 1)
    elif pe.has_hook("scores") and train:  # explicit attention keeps per-block logits for backward
        total += k * (4 * h + 2 * _hidden_width(pe, spec)) * (n * n // 2) * elem
    elif pe.has_hook("bias") and cfg.device != "cuda":  # fp32 bias and float mask of one layer
        total += 2 * h * n * n * 4
    if full:
        total += n * v * 4
    return total


def embed_head_bytes(cfg: TimingCellConfig) -> int:
    """Lower bound for the embedding-and-head measurement: weights (+ gradients) and fp32 logits."""
    elem = DTYPES[cfg.precision].itemsize
    weights = 2 * cfg.vocab_size * cfg.dim * elem
    return weights * (2 if cfg.mode == "train" else 1) + cfg.eval_len * cfg.vocab_size * 4


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _precheck(need: int, device: torch.device) -> str | None:
    avail = bench.available_bytes(device)
    if avail is not None and need > avail:
        return f"needs at least {need / bench.GiB:.1f} GiB, {avail / bench.GiB:.1f} GiB available (pre-check)"
    return None


def weight_bytes(cfg: TimingCellConfig) -> int:
    """Bytes of a PE's timed weights (blocks, plus embedding and head for the full model)."""
    full = is_full(cfg)
    k = cfg.layers if full else cfg.layers_timed
    return (k * 12 * cfg.dim ** 2 + (2 * cfg.vocab_size * cfg.dim if full else 0)) * DTYPES[
        cfg.precision].itemsize


# --------------------------------------------------------------------------- measuring one group

# The built modules of the current group, by model key (fwd and train groups of a length share them).
_MODELS: dict[str, nn.Module] = {}


def _model_key(cfg: TimingCellConfig) -> str:
    keys = ("size", "pe", "layers", "layers_timed", "vocab_size", "precision", "device", "train_len")
    extra = [cfg.backend_policy, max(cfg.eval_len, cfg.train_len)]
    return json.dumps([getattr(cfg, k) for k in keys] + extra)


class PEOutOfMemory(Exception):
    """A PE's call failed to allocate: the group is measured again without it."""

    def __init__(self, pe: str, reason: str) -> None:
        super().__init__(reason)
        self.pe, self.reason = pe, reason


def _guard(pe: str, fn: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except Exception as exc:
            if bench.is_oom(exc):
                raise PEOutOfMemory(pe, _one_line(exc)) from exc
            raise

    return call


def _inputs(
    cfg: TimingCellConfig, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The timed input (ids for the full model, hidden states for a slice) and LM targets."""
    n = cfg.eval_len
    gen = torch.Generator(device="cpu").manual_seed(0)
    if is_full(cfg):
        ids = torch.randint(0, cfg.vocab_size, (1, n + 1), generator=gen).to(device)
        return ids[:, :-1], (ids[:, 1:] if cfg.mode == "train" else None)
    inputs = torch.randn(1, n, cfg.dim, generator=gen).to(device=device, dtype=dtype)
    inputs.requires_grad_(cfg.mode == "train")  # block 0 of a real model passes gradients on
    return inputs, None


def _contender(pe: str, module: nn.Module, cfg: TimingCellConfig, device: torch.device, dtype: torch.dtype,
               park: bool) -> bench.Contender:
    inputs, targets = _inputs(cfg, device, dtype)
    fn, reset = make_step(module, inputs, cfg.mode, targets)
    if not park:
        return bench.Contender(pe, _guard(pe, fn), reset)
    return bench.Contender(pe, _guard(pe, fn), reset, enter=lambda: module.to(device), leave=lambda: module.to("cpu"))


def _oom(reason: str) -> dict[str, Any]:
    return {"status": "oom", "reason": reason}


def measure_group(
    cfg: TimingCellConfig,
    exclude: dict[str, str] | None = None,
    embed_head: dict[str, Any] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Time every PE of a group in this process (``exclude``: PEs already known not to fit, with
    why). Returns plain data: per PE ``ok`` (times per round, calls per repeat, backend, peak
    memory) or ``oom`` (reason); the rounds' orders; the embedding-and-head timing for slices."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.precision]
    emit = on_event or (lambda event: None)
    if device.type == "cuda":
        allow_recompiles()
    results: dict[str, dict[str, Any]] = {pe: _oom(why) for pe, why in (exclude or {}).items()}
    active = [pe for pe in cfg.pes if pe not in results]
    keys = {pe: _model_key(cfg.for_pe(pe)) for pe in active}
    if set(_MODELS) - set(keys.values()):
        for stale in set(_MODELS) - set(keys.values()):
            del _MODELS[stale]
        bench.release_memory(device)
    for pe in list(active):
        if keys[pe] not in _MODELS and (why := _precheck(estimate_bytes(cfg.for_pe(pe)), device)):
            results[pe] = _oom(why)
            active.remove(pe)
    # On CUDA the full models of a group may not fit at once: then each waits in host memory.
    room = bench.available_bytes(device)
    park = device.type == "cuda" and room is not None and sum(
        weight_bytes(cfg.for_pe(pe)) for pe in active) > room // 2
    modules: dict[str, nn.Module] = {}
    for pe in list(active):
        emit({"phase": "build", "pe": pe})
        try:
            if keys[pe] not in _MODELS:
                _MODELS[keys[pe]] = build_timed_module(cfg.for_pe(pe), device, dtype)
            modules[pe] = _MODELS[keys[pe]].to("cpu") if park else _MODELS[keys[pe]]
        except Exception as exc:
            if not bench.is_oom(exc):
                raise
            _MODELS.pop(keys[pe], None)
            bench.release_memory(device)
            results[pe] = _oom(_one_line(exc))
            active.remove(pe)
    rounds = None
    while active:
        contenders = [_contender(pe, modules[pe], cfg.for_pe(pe), device, dtype, park) for pe in active]
        try:
            rounds = bench.interleaved_rounds(
                contenders, cfg.repeats, warmup_calls=cfg.warmup, min_warmup_s=cfg.min_warmup_ms / 1000,
                min_repeat_s=cfg.min_repeat_ms / 1000, seed=order_seed(cfg), budget_s=cfg.max_seconds,
                on_event=emit)
        except PEOutOfMemory as exc:
            results[exc.pe] = _oom(exc.reason)
            active.remove(exc.pe)
            _MODELS.pop(keys[exc.pe], None)
            modules.pop(exc.pe, None)
            bench.release_memory(device)
            continue
        memory = {}
        for c in (c for name in rounds.warmup_order for c in contenders if c.name == name):
            emit({"phase": "memory", "pe": c.name})
            c.enter()
            try:
                memory[c.name] = bench.peak_memory_mb(c.call, device)
            except PEOutOfMemory:
                memory[c.name] = (None, "out of memory while measuring peak memory")
            finally:
                c.reset()
                c.leave()
        for pe in active:
            module = modules[pe]
            used = sorted({m.last_backend for m in module.modules() if isinstance(m, Attention)})
            results[pe] = {
                "status": "ok",
                "ms": rounds.median_ms(pe),
                "iqr": rounds.iqr_ms(pe),
                "times_ms": [1000.0 * t for t in rounds.times_s[pe]],
                "calls_per_repeat": rounds.number[pe],
                "warmup_calls": rounds.warmup_calls[pe],
                "round_position": rounds.positions(pe),
                "backend": "+".join(used),
                "params": sum(p.numel() for p in module.parameters()),
                "peak_mem_mb": memory[pe][0],
                "mem_method": memory[pe][1],
            }
        break
    out: dict[str, Any] = {"pes": results, "threads": torch.get_num_threads(), "parked": park}
    if rounds is not None:
        out.update(rounds=rounds.rounds, budget_limited=rounds.budget_limited, round_s=rounds.round_s,
                   rounds_seconds=rounds.seconds, orders=rounds.orders, warmup_order=rounds.warmup_order)
    if not is_full(cfg) and active:
        emit({"phase": "embed_head"})
        out["embed_head"] = embed_head or measure_embed_head(cfg, device, dtype)
    return out


def measure_embed_head(cfg: TimingCellConfig, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time the embedding-and-head part of the full-model estimate (PE-independent), by the same
    protocol as the PEs (as a group of one)."""
    reason = _precheck(embed_head_bytes(cfg), device)
    if reason is None:
        try:
            torch.manual_seed(0)
            with torch.device(device):
                module = EmbedHead(cfg.vocab_size, cfg.dim).to(dtype)
            ids = torch.randint(0, cfg.vocab_size, (1, cfg.eval_len + 1)).to(device)
            targets = ids[:, 1:] if cfg.mode == "train" else None
            fn, reset = make_step(module, ids[:, :-1], cfg.mode, targets)
            rounds = bench.interleaved_rounds(
                [bench.Contender(EMBED_HEAD, fn, reset)], cfg.repeats, warmup_calls=cfg.warmup,
                min_warmup_s=cfg.min_warmup_ms / 1000, min_repeat_s=cfg.min_repeat_ms / 1000,
                seed=order_seed(cfg), budget_s=cfg.max_seconds)
            return {"status": "ok", "ms": rounds.median_ms(EMBED_HEAD), "iqr": rounds.iqr_ms(EMBED_HEAD),
                    "rounds": rounds.rounds}
        except Exception as exc:
            if not bench.is_oom(exc):
                raise
            reason = _one_line(exc)
        bench.release_memory(device)
    return _oom(reason)


def allow_recompiles() -> None:
    """Each (PE, length, mode) compiles its own FlexAttention kernel; past dynamo's default limit
    of 8 per function it would silently run the unfused kernel and time that instead."""
    import torch._dynamo.config as dynamo_config

    for attr in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, attr):
            setattr(dynamo_config, attr, max(int(getattr(dynamo_config, attr)), 4096))


# --------------------------------------------------------------------------- the worker process


def _worker_main(conn: Any, threads: int) -> None:
    """Measure the groups sent over ``conn`` one after another until told to stop; each group's
    progress events go back over ``conn`` before its result."""
    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        try:
            reply: tuple[Any, ...] = ("ok", measure_group(*job, on_event=lambda e: conn.send(("event", e))))
        except LenbenchError as exc:
            reply = ("user_error", str(exc))
        except Exception as exc:
            reply = ("error", _one_line(exc), traceback.format_exc())
        conn.send(reply)


class Worker:
    """A spawned child process that measures groups sequentially (torch is imported once).

    Spawned, not forked: a child forked after ``import torch`` ran every OpenMP region ~100x slower
    here. When the kernel kills the worker for memory, the parent knows from the last progress
    event which PE was running, records it OOM and measures the group again in a fresh worker.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, torch.get_num_threads()), daemon=True)
        self.proc.start()
        child.close()
        self.last_event: dict[str, Any] = {}

    def request(self, job: tuple[Any, ...], on_event: Callable[[dict[str, Any]], None]) -> tuple[Any, ...] | None:
        """The worker's reply (its events passed to ``on_event`` on the way), or None when it died."""
        self.last_event = {}
        try:
            self.conn.send(job)
            while True:
                message = self.conn.recv()
                if message[0] != "event":
                    return message
                self.last_event = message[1]
                on_event(message[1])
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return None
        except BaseException:  # interrupted: a reply would arrive out of turn
            self.close()
            raise

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=10)
        self.conn.close()


_WORKER: list[Worker] = []


def measure_group_isolated(
    cfg: TimingCellConfig,
    exclude: dict[str, str] | None = None,
    embed_head: dict[str, Any] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`measure_group` in the worker process. A worker killed by SIGKILL (the kernel's OOM
    killer) makes the PE whose turn it was OOM (or the embedding and head), and the group is
    measured again without it in a fresh worker."""
    exclude = dict(exclude or {})
    while True:
        if not _WORKER or not _WORKER[0].proc.is_alive():
            _WORKER[:] = [Worker()]
        worker = _WORKER[0]
        message = worker.request((cfg, exclude, embed_head), on_event or (lambda event: None))
        if message is not None:
            break
        worker.close()
        _WORKER.clear()
        if worker.proc.exitcode != -signal.SIGKILL:
            raise RuntimeError(f"timing worker process died with exit code {worker.proc.exitcode}")
        why = "worker process killed by SIGKILL (out of memory) during its turn"
        who = worker.last_event.get("pe")
        if worker.last_event.get("phase") == "embed_head":
            embed_head = _oom(why.replace("its turn", "the embedding-and-head measurement"))
        elif who is not None and who not in exclude:
            exclude[who] = why
        else:
            raise RuntimeError(f"timing worker process killed by SIGKILL before timing any PE ({why})")
    if message[0] == "user_error":
        raise LenbenchError(message[1])
    if message[0] == "error":
        raise RuntimeError(f"timing group failed in the worker process: {message[1]}\n{message[2]}")
    return message[1]
