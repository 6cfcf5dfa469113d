"""The timing suite: ms per forward and per forward+backward at batch 1, per PE, model size and length.

What is timed (DAPE Table 1, dape.md §3(c), §4.1): a causal GPT decoder (pre-LN blocks, GELU FFN,
final LN, untied head) with the GPT-2 vocabulary of 50257 tokens, batch 1, trained length 512
(PEs that depend on it see 512), D_DAPE = 32 (DAPE's default hidden width). The paper does not say
whether its times are forward-only or forward+backward, so both are measured: ``fwd`` is inference
under ``no_grad``; ``train`` is forward, cross-entropy and backward (no optimizer step).

One cell is (size, PE, length, mode, backend policy). The cell's records hold everything the table
needs, so a report can rebuild it from the store alone.

Backend policy (``--backend``, stored as ``backend_policy`` in every cell's config and record):

- ``fastest`` (default): each PE on the fastest exact kernel the model picks for it (fused SDPA or
  FlexAttention for the baselines, query-blocked explicit logits for DAPE). Its Ratio mixes
  DAPE's MLP cost with the fused-vs-unfused kernel difference.
- ``paper``: every PE through the one unfused path of DAPE's NeoX code (``baddbmm`` logits, PE
  on the full ``[H, N, N]`` scores, ``finfo.min`` mask, softmax; :meth:`Attention.paper`), so
  Ratio isolates each PE's own cost, as DAPE Table 1 measures it.
- any backend name of :data:`lenbench.model.attention.BACKENDS` (e.g. ``explicit``): forced for
  every PE where it applies.

Precision (``--precision``): fp32 on CPU; on CUDA bf16 by default, or fp16 (the paper's
precision, dape.md §3(d)) or fp32. Stored per cell and shown in every table title.

- CUDA: the full model.
- CPU: a slice of K consecutive blocks of the real shape (K = ``--layers``, default 1) is
  timed on hidden states, and the full model is estimated as
  ``K-layer time x layers / K + embedding-and-head time``. The embedding-and-head part (token
  embedding, final LN, vocabulary projection, and in train mode the loss and their backward) does
  not depend on the PE: it is timed once per (size, length, mode) in a run and shared by every
  PE's estimate. Absolute PEs' O(N x E) input addition is not part of the estimate.

Estimate check (``--check-estimate``): the same cells are also timed as slices of 1, 2 and 4
blocks (those shallower than the model); :func:`estimate_checks` compares ``K-layer x M / K`` with
the measured M-layer slice, the error of the full-model extrapolation's slice part.

Times: median and IQR over ``repeats`` measurements, after at least ``warmup`` calls and
``min_warmup_ms`` of warm-up (:mod:`lenbench.bench`). Peak memory: the timed call's peak above the
memory held before it (CUDA: max allocated; CPU: peak RSS delta, see :mod:`lenbench.bench`); for
slices, of the K timed blocks.

Out of memory: a pre-check skips cells whose lower-bound memory estimate exceeds the available
memory; an allocation failure is caught; on CPU cells run in a spawned worker process, so a cell
the kernel's OOM killer ends is recorded too. Each is stored as an ``oom`` cell and the run goes on.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lenbench import bench
from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.errors import LenbenchError
from lenbench.model.attention import Attention
from lenbench.model.sizes import SIZES, ModelSize
from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
from lenbench.pe.base import PositionalEncoding
from lenbench.pe.defaults import split_rules, with_length_defaults
from lenbench.pe.registry import PESpec, parse_pe_spec, pe_class, resolve_pes
from lenbench.results import CellDir
from lenbench.suites.base import Cell, Reporter

name = "timing"
MODES = ("fwd", "train")
GPT2_VOCAB = 50257
DEFAULT_PES = "rope,t5,alibi,kerple,fire,dape-kerple"
REFERENCE_PES = ("dape-kerple", "dape")  # Ratio = PE time / time of this PE (first one present)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
POLICIES = ("fastest", "paper")  # plus any forced backend name of Attention's BACKENDS
CHECK_LAYERS = (1, 2, 4)  # slices timed by --check-estimate
POLICY_TEXT = {
    "fastest": "fastest exact kernel per PE",
    "paper": "paper: every PE on DAPE's unfused NeoX logits path",
}


@dataclass(frozen=True)
class TimingProfile:
    sizes: str | list[str] = "350m"
    lengths: str | list[int] = "512,1024,2048"
    modes: str | list[str] = "both"
    layers: int | None = None  # blocks timed; None: 1 on CPU, every layer on CUDA
    repeats: int = 5
    warmup: int = 1
    min_warmup_ms: float = 250.0  # and keep warming up until this much time has passed
    min_block_ms: float = 20.0  # calls per measurement so that one measurement lasts this long
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vocab_size: int = GPT2_VOCAB
    train_length: int = 512
    isolate: str | bool = "auto"  # measure in a worker process; auto: on CPU only
    backend: str = "fastest"  # fastest, paper, or a backend name forced for every PE
    check_estimate: bool = False  # also time 1-, 2- and 4-block slices to measure the estimate's error
    pe_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. l0: dape-neox (lenbench/pe/defaults.py)


@dataclass(frozen=True)
class TimingGrid:
    pes: str | list[str] = DEFAULT_PES


def _items(value: str | list[Any]) -> list[str]:
    raw = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for item in (r.strip() for r in raw):
        if item and item not in out:
            out.append(item)
    return out


def resolve_sizes(value: str | list[str]) -> list[ModelSize]:
    names = _items(value)
    if not names:
        raise LenbenchError("no model size given (e.g. --sizes 350m,2.7b,6.7b)")
    return [SIZES.get(n.lower()) for n in names]


def resolve_lengths(value: str | list[int]) -> list[int]:
    lengths = list(dict.fromkeys(parse_int_list(value, "lengths")))
    bad = [n for n in lengths if n < 1]
    if bad:
        raise LenbenchError(f"sequence lengths must be >= 1, got {bad[0]}")
    return lengths


def resolve_modes(value: str | list[str]) -> list[str]:
    modes = _items(value)
    if modes == ["both"]:
        return list(MODES)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise LenbenchError(f"unknown mode {bad[0] if bad else ''!r} (choose fwd, train or both)")
    return modes


def resolve_precision(value: str, cuda: bool) -> str:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; fp16/bf16 only on CUDA (CPU half kernels are not
    what the paper's GPUs run, and are slower than fp32 there)."""
    precision = ("bf16" if cuda else "fp32") if value == "auto" else value
    if precision not in DTYPES:
        raise LenbenchError(f"unknown precision {value!r} (choose auto, {', '.join(DTYPES)})")
    if precision != "fp32" and not cuda:
        raise LenbenchError(f"precision {precision} needs CUDA; CPU timing runs fp32")
    return precision


def resolve_backend(value: str) -> str:
    """``fastest``, ``paper`` or a forced attention backend name -> the cell's ``backend_policy``."""
    from lenbench.model.attention import BACKENDS

    policy = value.strip().lower()
    if policy == "auto":
        policy = "fastest"
    if policy not in POLICIES and policy not in BACKENDS:
        names = ", ".join([*POLICIES, *(b for b in BACKENDS if b != "auto")])
        raise LenbenchError(f"unknown timing backend {value!r} (choose {names})")
    return policy


def attention_backend(policy: str) -> str:
    """The model's ``attention_backend`` for a backend policy."""
    return "auto" if policy == "fastest" else policy


def resolve_isolate(value: str | bool, cuda: bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("auto", "true", "false"):
        return not cuda if value.lower() == "auto" else value.lower() == "true"
    raise LenbenchError(f"isolate must be auto, true or false, got {value!r}")


def check_profile(prof: TimingProfile) -> None:
    for what, value, low in (
        ("--layers", prof.layers, 1),
        ("--repeats", prof.repeats, 1),
        ("--warmup", prof.warmup, 1),
        ("vocab_size", prof.vocab_size, 1),
        ("train_length", prof.train_length, 1),
    ):
        if value is not None and value < low:
            raise LenbenchError(f"{what} must be >= {low}, got {value}")
    for what, number in (("min_block_ms", prof.min_block_ms), ("min_warmup_ms", prof.min_warmup_ms)):
        if number < 0:
            raise LenbenchError(f"{what} must be >= 0, got {number}")


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one cell per (size, PE, length, mode)."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(TimingProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid = from_dict(TimingGrid, merge(suite_file.grid, overrides.get("grid", {})), f"{suite_file.path} grid")
    check_profile(prof)
    sizes, lengths, modes = resolve_sizes(prof.sizes), resolve_lengths(prof.lengths), resolve_modes(prof.modes)
    plain_defaults, length_rules = split_rules(prof.pe_defaults)
    pes = with_length_defaults(resolve_pes(grid.pes, plain_defaults), length_rules, prof.train_length)
    cuda = torch.cuda.is_available()
    precision, isolate = resolve_precision(prof.precision, cuda), resolve_isolate(prof.isolate, cuda)
    policy = resolve_backend(prof.backend)
    cells = []
    for size in sizes:
        timed = min(prof.layers or (size.layers if cuda else 1), size.layers)
        slices = [(timed, False)]
        if prof.check_estimate:
            slices += [(k, True) for k in CHECK_LAYERS if k < size.layers and k != timed]
        for spec in pes:
            for n in lengths:
                for mode in modes:
                    for k, check in slices:
                        config = {
                            "suite": name,
                            "size": size.name,
                            "layers": size.layers,
                            "dim": size.dim,
                            "heads": size.heads,
                            "pe": str(spec),
                            "eval_len": n,
                            "train_len": prof.train_length,
                            "mode": mode,
                            "layers_timed": k,
                            "batch_size": 1,
                            "vocab_size": prof.vocab_size,
                            "precision": precision,
                            "device": "cuda" if cuda else "cpu",
                            "repeats": prof.repeats,
                            "warmup": prof.warmup,
                            "min_warmup_ms": prof.min_warmup_ms,
                            "min_block_ms": prof.min_block_ms,
                            "isolate": isolate,
                            "backend_policy": policy,
                        }
                        if check:
                            config["estimate_check"] = True
                        tags = ("" if policy == "fastest" else f"-{policy}") + (f"-K{k}" if check else "")
                        cells.append(Cell(name, f"{size.name}-{spec.label}-L{n}-{mode}{tags}", config))
    return cells


# --------------------------------------------------------------------------- what is timed


def is_full(cfg: dict[str, Any]) -> bool:
    return int(cfg["layers_timed"]) >= int(cfg["layers"])


def estimate_full_ms(k_layer_ms: float, layers: int, layers_timed: int, embed_head_ms: float) -> float:
    """Full-model time from a K-layer slice: ``K-layer time x layers / K + embedding-and-head time``."""
    return k_layer_ms * layers / layers_timed + embed_head_ms


def model_config(cfg: dict[str, Any], layers: int) -> ModelConfig:
    """The LM decoder of the cell's shape (GPT-2 style, no dropout), attention per its backend policy."""
    return ModelConfig(
        attention_backend=attention_backend(cfg.get("backend_policy", "fastest")),
        vocab_size=cfg["vocab_size"],
        out_size=cfg["vocab_size"],
        dim=cfg["dim"],
        layers=layers,
        heads=cfg["heads"],
        dropout=0.0,
        causal=True,
        prenorm=True,
        activation="gelu",
        embed_scale=False,
        final_norm=True,
        init="gpt2",
        train_length=cfg["train_len"],
        max_length=max(cfg["eval_len"], cfg["train_len"]),
    )


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


def build_timed_module(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The full model (ids -> logits) or, for a slice, K blocks (hidden states -> hidden states)."""
    spec = parse_pe_spec(cfg["pe"])
    torch.manual_seed(0)
    with torch.device(device):
        if is_full(cfg):
            module: nn.Module = Transformer(model_config(cfg, cfg["layers"]), spec)
        else:
            # A one-token vocabulary gives the K blocks the LM's initialisation without the cost
            # of a 50k-row embedding and head, which the slice does not use.
            stub = Transformer(replace(model_config(cfg, cfg["layers_timed"]), vocab_size=1, out_size=1), spec)
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


def time_call(
    fn: Callable[[], None], reset: Callable[[], None], cfg: dict[str, Any], device: torch.device, memory: bool = True
) -> dict[str, Any]:
    """Warm up, measure the peak memory of one call (if ``memory``), then time ``repeats`` measurements."""
    seconds = bench.warm_up(fn, cfg["warmup"], device, cfg["min_warmup_ms"] / 1000)
    reset()
    peak, method = bench.peak_memory_mb(fn, device) if memory else (None, "not measured")
    timing = bench.measure(fn, cfg["repeats"], bench.calls_per_repeat(seconds, cfg["min_block_ms"] / 1000))
    reset()
    return {
        "ms": timing.median_ms,
        "iqr": timing.iqr_ms,
        "times_ms": timing.times_ms,
        "calls_per_repeat": timing.number,
        "peak_mem_mb": peak,
        "mem_method": method,
    }


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


def estimate_bytes(cfg: dict[str, Any]) -> int:
    """A lower bound on the memory a cell needs: weights (and gradients), activations kept for
    backward, and the N x N attention terms that are surely materialized. Used to skip cells that
    cannot fit before trying them; real allocation failures are caught as well."""
    spec = parse_pe_spec(cfg["pe"])
    pe = pe_class(spec)
    elem = DTYPES[cfg["precision"]].itemsize
    n, d, h, v = cfg["eval_len"], cfg["dim"], cfg["heads"], cfg["vocab_size"]
    full, train = is_full(cfg), cfg["mode"] == "train"
    k = cfg["layers"] if full else cfg["layers_timed"]
    total = (k * 12 * d * d + (2 * v * d if full else 0)) * elem * (2 if train else 1)
    if train:
        total += k * 16 * n * d * elem
    if cfg.get("backend_policy") == "paper":  # full [H, N, N] logits and softmax (and DAPE's [N, N, width])
        per_layer = (2 * h + (2 * h + _hidden_width(pe, spec) if pe.has_hook("scores") else 0)) * n * n * elem
        total += per_layer * (k if train else 1)
    elif pe.has_hook("scores") and train:  # explicit attention keeps per-block logits for backward
        total += k * (4 * h + 2 * _hidden_width(pe, spec)) * (n * n // 2) * elem
    elif pe.has_hook("bias") and cfg["device"] != "cuda":  # fp32 bias and float mask of one layer
        total += 2 * h * n * n * 4
    if full:
        total += n * v * 4
    return total


def embed_head_bytes(cfg: dict[str, Any]) -> int:
    """Lower bound for the embedding-and-head measurement: weights (+ gradients) and fp32 logits."""
    elem = DTYPES[cfg["precision"]].itemsize
    weights = 2 * cfg["vocab_size"] * cfg["dim"] * elem
    return weights * (2 if cfg["mode"] == "train" else 1) + cfg["eval_len"] * cfg["vocab_size"] * 4


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _precheck(need: int, device: torch.device) -> str | None:
    avail = bench.available_bytes(device)
    if avail is not None and need > avail:
        return f"needs at least {need / bench.GiB:.1f} GiB, {avail / bench.GiB:.1f} GiB available (pre-check)"
    return None


# One built module kept between cells of this process (fwd and train cells share it).
_MODELS: dict[str, nn.Module] = {}


def _model_key(cfg: dict[str, Any]) -> str:
    keys = ("size", "pe", "layers", "layers_timed", "vocab_size", "precision", "device", "train_len")
    extra = [cfg.get("backend_policy", "fastest"), max(cfg["eval_len"], cfg["train_len"])]
    return json.dumps([cfg[k] for k in keys] + extra)


def _measure_model(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    key = _model_key(cfg)
    if key not in _MODELS:
        _MODELS[key] = build_timed_module(cfg, device, dtype)
    module = _MODELS[key]
    n = cfg["eval_len"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    if is_full(cfg):
        ids = torch.randint(0, cfg["vocab_size"], (1, n + 1), generator=gen).to(device)
        inputs, targets = ids[:, :-1], (ids[:, 1:] if cfg["mode"] == "train" else None)
    else:
        inputs = torch.randn(1, n, cfg["dim"], generator=gen).to(device=device, dtype=dtype)
        inputs.requires_grad_(cfg["mode"] == "train")  # block 0 of a real model passes gradients on
        targets = None
    fn, reset = make_step(module, inputs, cfg["mode"], targets)
    result = time_call(fn, reset, cfg, device)
    backends = sorted({m.last_backend for m in module.modules() if isinstance(m, Attention)})
    result["backend"] = "+".join(backends)
    result["params"] = sum(p.numel() for p in module.parameters())
    return result


def measure_embed_head(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Time the embedding-and-head part of the full-model estimate (PE-independent)."""
    reason = _precheck(embed_head_bytes(cfg), device)
    if reason is None:
        try:
            torch.manual_seed(0)
            with torch.device(device):
                module = EmbedHead(cfg["vocab_size"], cfg["dim"]).to(dtype)
            ids = torch.randint(0, cfg["vocab_size"], (1, cfg["eval_len"] + 1)).to(device)
            targets = ids[:, 1:] if cfg["mode"] == "train" else None
            fn, reset = make_step(module, ids[:, :-1], cfg["mode"], targets)
            return {"status": "ok", **time_call(fn, reset, cfg, device, memory=False)}
        except Exception as exc:
            if not bench.is_oom(exc):
                raise
            reason = _one_line(exc)
        bench.release_memory(device)
    return {"status": "oom", "reason": reason}


def allow_recompiles() -> None:
    """Each (PE, length, mode) compiles its own FlexAttention kernel; past dynamo's default limit
    of 8 per function it would silently run the unfused kernel and time that instead."""
    import torch._dynamo.config as dynamo_config

    for attr in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, attr):
            setattr(dynamo_config, attr, max(int(getattr(dynamo_config, attr)), 4096))


def measure_cell(cfg: dict[str, Any], embed_head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time one cell in this process. Returns plain data: status ``ok`` or ``oom`` (with reason)."""
    device, dtype = torch.device(cfg["device"]), DTYPES[cfg["precision"]]
    if device.type == "cuda":
        allow_recompiles()
    if _model_key(cfg) not in _MODELS:
        _MODELS.clear()
        bench.release_memory(device)
        reason = _precheck(estimate_bytes(cfg), device)
        if reason is not None:
            return {"status": "oom", "reason": reason}
    try:
        result = _measure_model(cfg, device, dtype)
    except Exception as exc:
        if not bench.is_oom(exc):
            raise
        _MODELS.clear()
        reason = _one_line(exc)
    else:
        result.update(status="ok", threads=torch.get_num_threads())
        if not is_full(cfg):
            result["embed_head"] = embed_head or measure_embed_head(cfg, device, dtype)
        return result
    bench.release_memory(device)
    return {"status": "oom", "reason": reason}


# --------------------------------------------------------------------------- the worker process


def _worker_main(conn: Any, threads: int) -> None:
    """Measure the cells sent over ``conn`` one after another until told to stop."""
    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        try:
            reply: tuple[Any, ...] = ("ok", measure_cell(*job))
        except LenbenchError as exc:
            reply = ("user_error", str(exc))
        except Exception as exc:
            reply = ("error", _one_line(exc), traceback.format_exc())
        conn.send(reply)


class Worker:
    """A spawned child process that measures cells sequentially (torch is imported once).

    Spawned, not forked: a child forked after ``import torch`` ran every OpenMP region ~100x slower
    here. When the kernel kills the worker for memory, the parent records OOM and the next cell
    starts a fresh worker.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, torch.get_num_threads()), daemon=True)
        self.proc.start()
        child.close()

    def request(self, cfg: dict[str, Any], embed_head: dict[str, Any] | None) -> tuple[Any, ...] | None:
        """The worker's reply, or None when it died on the way."""
        try:
            self.conn.send((cfg, embed_head))
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return None
        except BaseException:  # interrupted: the reply would arrive out of turn
            self.close()
            raise

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=10)
        self.conn.close()


_WORKER: list[Worker] = []


def measure_cell_isolated(cfg: dict[str, Any], embed_head: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`measure_cell` in the worker process; a worker killed by SIGKILL (the kernel's OOM
    killer) makes the cell OOM and is replaced for the next cell."""
    if not _WORKER or not _WORKER[0].proc.is_alive():
        _WORKER[:] = [Worker()]
    worker = _WORKER[0]
    message = worker.request(cfg, embed_head)
    if message is None:
        worker.close()
        _WORKER.clear()
        if worker.proc.exitcode == -signal.SIGKILL:
            return {"status": "oom", "reason": "worker process killed by SIGKILL (out of memory)"}
        raise RuntimeError(f"timing worker process died with exit code {worker.proc.exitcode}")
    if message[0] == "user_error":
        raise LenbenchError(message[1])
    if message[0] == "error":
        raise RuntimeError(f"timing cell failed in the worker process: {message[1]}\n{message[2]}")
    return message[1]


# --------------------------------------------------------------------------- cells and records

# Embedding-and-head measurements of this run, shared by every PE at the same shape and length.
_EMBED_HEAD: dict[str, dict[str, Any]] = {}


def _embed_head_key(cfg: dict[str, Any]) -> str:
    keys = ("dim", "vocab_size", "eval_len", "mode", "precision", "device", "repeats", "warmup", "min_warmup_ms")
    keys += ("min_block_ms",)
    return json.dumps([cfg[k] for k in keys])


def cell_records(cfg: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format metric records of one cell: its time and its peak memory."""
    mode = cfg["mode"]
    common = {
        "suite": name,
        "size": cfg["size"],
        "pe": cfg["pe"],
        "train_len": cfg["train_len"],
        "eval_len": cfg["eval_len"],
        "mode": mode,
        "layers": cfg["layers"],
        "layers_timed": cfg["layers_timed"],
        "batch_size": cfg["batch_size"],
        "precision": cfg["precision"],
        "device": cfg["device"],
        "d_dape": dape_width(cfg["pe"]),
        "status": result["status"],
        "backend_policy": cfg.get("backend_policy", "fastest"),
        "estimate_check": bool(cfg.get("estimate_check", False)),
    }
    if result["status"] != "ok":
        why = {"value": None, "backend": None, "reason": result.get("reason", "")}
        return [
            {**common, "metric": f"ms_{mode}", "iqr": None, "estimated_full_ms": None, **why},
            {**common, "metric": "peak_mem_mb", **why},
        ]
    eh = result.get("embed_head") or {}
    eh_ok = eh.get("status") == "ok"
    est = None
    if not is_full(cfg) and eh_ok:
        est = estimate_full_ms(result["ms"], cfg["layers"], cfg["layers_timed"], eh["ms"])
    timing = {
        **common,
        "metric": f"ms_{mode}",
        "value": result["ms"],
        "iqr": result["iqr"],
        "times_ms": result["times_ms"],
        "repeats": cfg["repeats"],
        "calls_per_repeat": result["calls_per_repeat"],
        "backend": result["backend"],
        "estimated_full_ms": est,
        "embed_head_ms": eh["ms"] if eh_ok else None,
        "embed_head_iqr": eh["iqr"] if eh_ok else None,
        "embed_head_status": eh.get("status"),
        "threads": result["threads"],
        "params": result["params"],
    }
    memory = {
        **common,
        "metric": "peak_mem_mb",
        "value": result["peak_mem_mb"],
        "method": result["mem_method"],
        "backend": result["backend"],
    }
    return [timing, memory]


def run_cell(cell: Cell, cell_dir: CellDir, reporter: Reporter) -> dict[str, Any]:
    """Time one cell (in the worker process when ``isolate``) and write its metric records."""
    cfg = cell.config
    reporter.eval_start(cell.label, 1)
    key = _embed_head_key(cfg)
    measure = measure_cell_isolated if cfg["isolate"] else measure_cell
    result = measure(cfg, _EMBED_HEAD.get(key))
    if result.get("embed_head"):
        _EMBED_HEAD[key] = result["embed_head"]
    records = cell_records(cfg, result)
    cell_dir.write_metrics(records)
    timing, memory = records
    reporter.eval_step(1, f"ms_{cfg['mode']}", timing["value"] if timing["value"] is not None else float("nan"))
    if result["status"] == "ok":
        est = f", est. full {timing['estimated_full_ms']:.1f} ms" if timing["estimated_full_ms"] is not None else ""
        mem = f", peak {memory['value']:.0f} MiB" if memory["value"] is not None else ""
        reporter.message(f"{cell.label}: {timing['value']:.2f} ms ({timing['backend']}){est}{mem}")
    else:
        reporter.message(f"{cell.label}: OOM ({result.get('reason', '')})")
    return {
        "status": result["status"],
        "ms": timing["value"],
        "estimated_full_ms": timing["estimated_full_ms"],
        "peak_mem_mb": memory["value"],
        "backend": timing["backend"],
    }


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class TableEntry:
    """One (PE, size, length) entry of a timing table."""

    ms: float | None  # measured: the K-layer slice, or the full model
    est_ms: float | None  # full-model estimate (slices only)
    ratio: float | None  # headline time / reference PE's headline time
    oom: bool = False

    @property
    def headline(self) -> float | None:
        """The full-model time: the estimate for slices, the measurement otherwise."""
        return self.est_ms if self.est_ms is not None else self.ms


@dataclass
class TimingTable:
    """DAPE Table 1 layout for one mode: rows are PEs, column groups are sizes, columns lengths."""

    mode: str
    policy: str = "fastest"  # backend_policy of its cells
    pes: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # size -> (timed, total)
    backends: dict[str, str] = field(default_factory=dict)
    entries: dict[tuple[str, str, int], TableEntry] = field(default_factory=dict)
    reference: str | None = None
    devices: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)

    @property
    def policy_text(self) -> str:
        """What the backend policy means, for table titles."""
        return POLICY_TEXT.get(self.policy, f"{self.policy} backend forced for every PE")

    def sliced(self, size: str) -> bool:
        timed, total = self.layers[size]
        return timed < total


def _reference(pes: list[str]) -> str | None:
    for wanted in REFERENCE_PES:
        for pe in pes:
            if pe.split(":", 1)[0] == wanted:
                return pe
    return None


def timing_tables(records: list[dict[str, Any]]) -> list[TimingTable]:
    """Tables (one per mode and backend policy; fwd first, fastest before paper) from stored timing
    records alone; ``--check-estimate`` slices are left to :func:`estimate_checks`."""
    tables: dict[tuple[str, str], TimingTable] = {}
    raw: dict[tuple[str, str], dict[tuple[str, str, int], dict[str, Any]]] = {}
    for rec in records:
        metric = str(rec.get("metric", ""))
        if rec.get("suite") != name or not metric.startswith("ms_") or rec.get("estimate_check"):
            continue
        mode, policy = metric[3:], str(rec.get("backend_policy") or "fastest")
        t = tables.setdefault((mode, policy), TimingTable(mode, policy))
        pe, size, n = rec["pe"], rec["size"], int(rec["eval_len"])
        if pe not in t.pes:
            t.pes.append(pe)
        if size not in t.sizes:
            t.sizes.append(size)
        t.lengths[size] = sorted({*t.lengths.get(size, []), n})
        t.layers[size] = (int(rec["layers_timed"]), int(rec["layers"]))
        if rec.get("device") and rec["device"] not in t.devices:
            t.devices.append(rec["device"])
        if rec.get("precision") and rec["precision"] not in t.precisions:
            t.precisions.append(rec["precision"])
        if rec.get("backend"):
            seen = t.backends.get(pe, "").split("/") if t.backends.get(pe) else []
            if rec["backend"] not in seen:
                t.backends[pe] = "/".join([*seen, rec["backend"]])
        raw.setdefault((mode, policy), {})[(pe, size, n)] = rec
    for key, t in tables.items():
        t.reference = _reference(t.pes)
        base = {k: TableEntry(r.get("value"), r.get("estimated_full_ms"), None, r.get("status") == "oom")
                for k, r in raw[key].items()}
        for (pe, size, n), entry in base.items():
            ref = base.get((t.reference, size, n)) if t.reference else None
            ratio = None
            if ref is not None and ref.headline and entry.headline is not None:
                ratio = entry.headline / ref.headline
            t.entries[(pe, size, n)] = replace(entry, ratio=ratio)

    def order(key: tuple[str, str]) -> tuple[int, int, str]:
        mode, policy = key
        return ((MODES + (mode,)).index(mode), (POLICIES + (policy,)).index(policy), policy)

    return [tables[k] for k in sorted(tables, key=order)]


@dataclass(frozen=True)
class EstimateCheck:
    """``K``-layer slice time scaled to ``M`` layers against the measured ``M``-layer slice."""

    pe: str
    size: str
    eval_len: int
    mode: str
    policy: str
    k: int
    m: int
    k_ms: float
    m_ms: float
    k_iqr: float | None
    m_iqr: float | None

    @property
    def predicted_ms(self) -> float:
        """``K-layer time x M / K``, the extrapolation the full-model estimate uses."""
        return self.k_ms * self.m / self.k

    @property
    def rel_error(self) -> float:
        """``(predicted - measured) / measured``."""
        return (self.predicted_ms - self.m_ms) / self.m_ms


def estimate_checks(records: list[dict[str, Any]]) -> list[EstimateCheck]:
    """Every (K < M) pair of slice depths timed at one (PE, size, length, mode, policy, precision)."""
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for rec in records:
        metric = str(rec.get("metric", ""))
        if rec.get("suite") != name or not metric.startswith("ms_") or rec.get("value") is None:
            continue
        if rec.get("status") not in (None, "ok", "done") or int(rec["layers_timed"]) >= int(rec["layers"]):
            continue
        key = (rec["pe"], rec["size"], int(rec["eval_len"]), metric[3:], str(rec.get("backend_policy") or "fastest"),
               rec.get("precision"), rec.get("device"))
        groups.setdefault(key, {})[int(rec["layers_timed"])] = rec
    out = []
    for (pe, size, n, mode, policy, _, _), by_k in groups.items():
        for k in sorted(by_k):
            for m in sorted(by_k):
                if k < m:
                    a, b = by_k[k], by_k[m]
                    out.append(EstimateCheck(pe, size, n, mode, policy, k, m, float(a["value"]), float(b["value"]),
                                             a.get("iqr"), b.get("iqr")))
    return out


def memory_table(records: list[dict[str, Any]]) -> dict[tuple[str, str, int, str], float | None]:
    """Peak memory (MiB) per (PE, size, length, mode); None where OOM or not measured."""
    return {
        (r["pe"], r["size"], int(r["eval_len"]), r["mode"]): r.get("value")
        for r in records
        if r.get("suite") == name and r.get("metric") == "peak_mem_mb" and not r.get("estimate_check")
    }
