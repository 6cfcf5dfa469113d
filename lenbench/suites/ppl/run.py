"""The perplexity-extrapolation suite: train a causal LM at one length, report perplexity at many.

Protocol (docs/dape.md §4.2, §3(d); docs/architecture.md): a pre-LN GPT decoder (``model/`` blocks, causal
attention, GELU, final LN, N(0, 0.02) init) trained with AdamW (betas 0.9/0.95, weight decay 0.1
on weights only), warmup then cosine decay to 0.1 x lr, gradient clipping 1.0, on windows of
``train_length + 1`` tokens drawn uniformly from the contiguous token stream of the training split
with the cell's numpy ``Generator`` (so a resumed run draws the same batches). ``train.batch_size``
is the global batch per optimizer step (DAPE: 32 per GPU x 8 GPUs = 256); each rank (one process,
or ``world_size`` under torchrun) runs it as ``accumulation`` forward/backward passes of
``micro_batch_size`` sequences (:func:`lenbench.train.parallel.split_batch`), the same update as one
batch; ``tokens_per_step = batch_size x train length`` is stored in the config and ``DONE``.

Evaluation at each length L scores target tokens of the validation split chosen by
``eval.protocol`` (:mod:`lenbench.suites.ppl.protocols`): ``fixed_targets`` (default: the same
targets at every length, each scored with L tokens of context), ``dape`` (DAPE's random windows
of the packed stream) or ``documents`` (the first L + 1 tokens of long documents). Two
perplexities are stored, pooled over all rows:

    ppl_last256 = exp(mean CE over the scored targets: the last K = min(256, L) predicted tokens
                  of each row, or under fixed_targets the same min(256, max L) targets at every L)
    ppl_all     = exp(mean CE over all L predicted tokens of every row)

with the unigram perplexity of exactly those tokens beside each (a content baseline: constant
over L under fixed_targets).

Logits and labels are sliced alike (position t predicts token t + 1), fixing the released DAPE
eval step (docs/dape.md §4.2). bf16 autocast on CUDA (once its self-check passed there,
:mod:`lenbench.model.selfcheck`), fp32 on CPU. Every metrics record carries the precision and the
attention backends that evaluated the length (``precision``, ``backend``) and, with a randomized
PE, whether the length overflowed its range (``overflow``); ``DONE`` adds the training backends
(``run``) and the self-checks relied on.
``model.pt`` holds the final weights only (tensors), ``model.json`` beside it the model config.
PE defaults per training length (FIRE's ``l0``) are resolved at expand time
(:mod:`lenbench.pe.defaults`), so each cell's PE spec carries the number. On CPU, PEs with a static bias are
evaluated with FlexAttention from 1024 tokens and query-blocked SDPA below (``model.attention``),
``scores`` PEs with query-blocked explicit attention: memory O(block * L), never O(H * L^2), so
L = 8192 fits a 24 GB machine for every PE. The batch per length is ``tokens_per_batch // L``
sequences with the fp32 logits capped at 1 GiB (:func:`eval_batch_size`), halved again while a
forward runs out of memory (:func:`adaptive_perplexity`); the batch used is stored.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lenbench.bench import is_oom, release_memory
from lenbench.data.corpora import (
    DatasetSpec,
    TokenizedCorpus,
    TokenSplit,
    load_corpus,
    tokenize_corpus,
)
from lenbench.data.tokenizer import load_tokenizer, spec_vocab_size
from lenbench.devices import autocast_for, compute_device, device_and_autocast, effective_precision
from lenbench.errors import LenbenchError
from lenbench.model import selfcheck
from lenbench.model.attention import backends_used, reset_backends
from lenbench.model.transformer import ModelConfig, Transformer, cross_entropy
from lenbench.pe.base import overflow_lengths, position_limits, reset_overflow
from lenbench.pe.registry import parse_pe_spec, pe_label
from lenbench.progress import forward_cost
from lenbench.results import CellDir, atomic_write_bytes, atomic_write_json, safe_torch_load
from lenbench.suites.base import Cell, Reporter, RunContext, Work
from lenbench.suites.ppl.config import PplCellConfig, PplShape, name
from lenbench.suites.ppl.protocols import (
    EvalPlan,
    EvalSet,
)
from lenbench.train import CompileClock, OptimConfig, train
from lenbench.train.parallel import rank_split, split_batch

LOGIT_BUDGET = 1 << 28  # fp32 logits elements per evaluation batch (1 GiB)
EVAL_FIELDS = ("protocol", "n_sequences", "n_targets", "concatenated", "long_documents", "batch_size",
               "unigram_ppl_last256", "unigram_ppl_all")


def model_config(shape: PplShape, length: int, eval_lengths: Sequence[int], vocab_size: int) -> ModelConfig:
    """The GPT-style decoder of the LM protocol (docs/dape.md §3(d)): ``shape`` trained at ``length``
    tokens and evaluated up to ``max(eval_lengths)``."""
    return ModelConfig.gpt(vocab_size, shape.dim, shape.layers, shape.heads, shape.dropout, length,
                           max([length, *eval_lengths]))


def sample_windows(tokens: np.ndarray, rng: np.random.Generator, batch: int, length: int) -> torch.Tensor:
    """``[batch, length + 1]`` windows at uniform start offsets in ``[0, len(tokens) - length - 1]``."""
    starts = rng.integers(0, len(tokens) - length, size=batch)
    index = starts[:, None] + np.arange(length + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def eval_batch_size(length: int, vocab_size: int, tokens_per_batch: int, samples: int) -> int:
    """Sequences per evaluation batch: ``tokens_per_batch // L``, capped so logits stay under 1 GiB."""
    by_tokens = tokens_per_batch // length
    by_logits = LOGIT_BUDGET // max(1, length * vocab_size)
    return max(1, min(samples, by_tokens, by_logits))


def perplexity(
    model: nn.Module,
    windows: np.ndarray,
    batch_size: int,
    last_tokens: int = 256,
    device: torch.device | None = None,
    autocast: Any = contextlib.nullcontext,
    scored: np.ndarray | None = None,
) -> tuple[float, float]:
    """``(ppl_last, ppl_all)`` of ``model`` (ids ``[B, L]`` -> logits ``[B, L, V]``) on ``windows`` ``[n, L+1]``.

    Position t's logits are scored against token t + 1; ``ppl_last = exp(mean CE)`` over the last
    ``scored[i]`` positions of row i (default ``K = min(last_tokens, L)`` for every row),
    ``ppl_all`` over all L positions of every row.
    """
    device = device or torch.device("cpu")
    n, width = windows.shape
    length = width - 1
    if scored is None:
        scored = np.full(n, min(last_tokens, length), dtype=np.int64)
    total_all = total_last = 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size])).to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            with autocast():
                logits = model(inputs)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            first = torch.from_numpy(length - scored[start : start + batch_size]).to(nll.device)
            last = torch.arange(length, device=nll.device)[None, :] >= first[:, None]
            total_all += float(nll.double().sum())
            total_last += float(nll.double()[last].sum())
    return math.exp(total_last / int(scored.sum())), math.exp(total_all / (n * length))


def adaptive_perplexity(
    model: nn.Module,
    windows: np.ndarray,
    batch_size: int,
    last_tokens: int = 256,
    device: torch.device | None = None,
    autocast: Any = contextlib.nullcontext,
    note: Callable[[str], None] | None = None,
    scored: np.ndarray | None = None,
) -> tuple[float, float, int]:
    """:func:`perplexity` at ``batch_size``, halved after each out-of-memory error -> (last, all, batch used).

    The planned batch (:func:`eval_batch_size`) bounds the logits; this is the fallback when the
    machine has less memory than that plan assumes. One sequence that does not fit is a one-line
    :class:`LenbenchError`. Halving repeats the whole length, so the result equals a run at the
    smaller batch (the sums are batch-independent).
    """
    length = windows.shape[1] - 1
    while True:
        try:
            last, full = perplexity(model, windows, batch_size, last_tokens, device, autocast, scored)
            return last, full, batch_size
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            if batch_size == 1:
                raise LenbenchError(
                    f"evaluation at length {length} runs out of memory with one sequence per batch ({reason}); "
                    "use shorter --eval-lengths or a machine with more memory"
                ) from exc
        # retried outside the except block, so the failed attempt's tensors are already freed
        batch_size = max(1, batch_size // 2)
        release_memory(device or torch.device("cpu"))
        if note is not None:
            note(f"L={length}: out of memory, evaluating {batch_size} sequence(s) per batch")


def describe_documents(results: dict[int, dict[str, Any]], last_tokens: int) -> str:
    """One line: per evaluation length, how many validation documents were used, or that they were joined."""
    parts = []
    for length, r in results.items():
        if r["concatenated"]:
            parts.append(
                f"{length}: {r['n_sequences']} windows of the joined documents "
                f"(only {r['long_documents']} of >= {length + 1} tokens)"
            )
        else:
            long_docs = f"the {r['long_documents']} documents of >= {length + 1} tokens"
            parts.append(f"{length}: {r['n_sequences']} of {long_docs}")
    return f"evaluation sequences (ppl over the last min({last_tokens}, L) tokens and over all): " + "; ".join(parts)


def unigram_logprobs(train: TokenSplit, vocab_size: int) -> np.ndarray:
    """``log p(token)`` from add-one-smoothed token frequencies of the training split."""
    counts = np.bincount(np.asarray(train.tokens), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_perplexity(logp: np.ndarray, tokens: np.ndarray) -> float:
    """``exp(-mean log p(token))`` of ``tokens`` under the unigram model ``logp`` (a baseline)."""
    counts = np.bincount(np.asarray(tokens).reshape(-1), minlength=len(logp))
    return float(math.exp(-(counts * logp).sum() / max(1, counts.sum())))


def evaluate(
    model: nn.Module,
    corpus: TokenizedCorpus,
    cfg: PplCellConfig,
    device: torch.device,
    autocast: Any,
    cell_dir: CellDir | None,
    reporter: Reporter,
    label: str,
    plan: EvalPlan | None = None,
) -> dict[int, dict[str, Any]]:
    """Per evaluation length under ``eval.protocol``: ppl_last256, ppl_all, protocol, n_sequences
    (rows run), n_targets (tokens in ppl_last256), concatenated, long_documents (documents
    protocol), batch_size (rows per forward after any out-of-memory halving), and the training
    unigram model's perplexity on the same tokens as each metric (unigram_ppl_last256: on the
    scored targets, constant over lengths under fixed_targets; unigram_ppl_all), a reference.

    Progress is saved after each length (``eval_partial.json``), so a killed cell resumes there.
    The reporter gets one line saying which tokens were scored.
    """
    ev = cfg.eval
    partial = cell_dir.path / "eval_partial.json" if cell_dir is not None else None
    done: dict[int, dict[str, Any]] = {}
    if partial is not None and partial.exists():
        with contextlib.suppress(json.JSONDecodeError, ValueError):
            done = {int(k): v for k, v in json.loads(partial.read_text()).items()}
    model.eval()
    vocab = corpus.tokenizer.vocab_size
    costs = [forward_cost(n, cfg.model.dim, cfg.model.layers, vocab) for n in cfg.lengths]
    reporter.eval_start(label, len(cfg.lengths), costs)
    logp = unigram_logprobs(corpus.train, vocab)
    plan = plan or eval_plan(corpus, cfg)
    for i, length in enumerate(cfg.lengths):
        if length not in done:
            rows: EvalSet = plan.at(length)
            batch = eval_batch_size(length, vocab, ev.tokens_per_batch, len(rows.windows))
            reset_overflow(model)
            reset_backends(model)
            last, full, batch = adaptive_perplexity(
                model, rows.windows, batch, ev.last_tokens, device, autocast, reporter.message, rows.scored
            )
            done[length] = {
                "overflow": bool(overflow_lengths(model)),  # a randomized PE fell back to 0..L-1 (L > its range)
                "backend": "+".join(backends_used(model)) or None,  # the attention backends of this length
                "ppl_last256": last,
                "ppl_all": full,
                "protocol": plan.protocol,
                "n_sequences": len(rows.windows),
                "n_targets": int(rows.scored.sum()),
                "concatenated": rows.concatenated,
                "long_documents": rows.long_documents,
                "batch_size": min(batch, len(rows.windows)),
                "unigram_ppl_last256": unigram_perplexity(logp, rows.targets()),
                "unigram_ppl_all": unigram_perplexity(logp, rows.windows[:, 1:]),
            }
            if partial is not None:
                atomic_write_json(partial, {str(k): v for k, v in done.items()})
        reporter.eval_step(i + 1, f"L={length} ppl", done[length]["ppl_last256"])
    results = {n: done[n] for n in cfg.lengths}
    said = describe_documents(results, ev.last_tokens) if plan.protocol == "documents" else plan.describe()
    reporter.message(f"{label}: {said}")
    return results


def eval_plan(corpus: TokenizedCorpus, cfg: PplCellConfig) -> EvalPlan:
    """The cell's evaluation sets (``eval.protocol``); a validation split too short is a LenbenchError."""
    ev = cfg.eval
    return EvalPlan(corpus.validation, ev.protocol, cfg.lengths, ev.samples, ev.min_sequences, ev.last_tokens)


MODEL_FILE, MODEL_META = "model.pt", "model.json"


def save_model(cell_dir: CellDir, model: Transformer, cfg: PplCellConfig, corpus: TokenizedCorpus) -> None:
    """``model.pt``: the final weights only (a state dict of tensors, read with ``weights_only=True``);
    ``model.json`` beside it: what :func:`load_model` needs to rebuild the model (config, PE, tokenizer)."""
    meta = {"model_config": asdict(model.cfg), "pe": cfg.pe, "tokenizer": corpus.tokenizer.name}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(cell_dir.path / MODEL_FILE, buf.getvalue())
    atomic_write_json(cell_dir.path / MODEL_META, meta)


def read_model_file(path: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, state dict) of a ``model.pt``: its ``model.json`` beside it, or the metadata stored
    inside the file by lenbench before issue 26 (plain data, also read with ``weights_only=True``)."""
    from pathlib import Path

    path = Path(path)
    state = safe_torch_load(path, "model file")
    meta_path = path.with_name(MODEL_META)
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise LenbenchError(f"corrupted {meta_path}: {exc}") from exc
        return meta, state
    if isinstance(state, dict) and "model_config" in state and "state_dict" in state:
        return {k: state[k] for k in ("model_config", "pe", "tokenizer") if k in state}, state["state_dict"]
    raise LenbenchError(f"{path} has no {MODEL_META} beside it and no model config inside")


def load_model(cell_dir: CellDir) -> Transformer:
    """Rebuild a finished cell's trained decoder from its ``model.pt`` (for plots of learned biases)."""
    path = cell_dir.path / MODEL_FILE
    if not path.exists():
        raise LenbenchError(f"{path} does not exist; the cell has not finished training")
    meta, state = read_model_file(path)
    model = Transformer(ModelConfig(**meta["model_config"]), parse_pe_spec(meta["pe"]))
    model.load_state_dict(state)
    return model.eval()


def record_corpus(cell_dir: CellDir, info: dict[str, Any]) -> None:
    """Add the corpus description (documents, split, Python version) to the cell's manifest."""
    manifest: dict[str, Any] = {}
    if cell_dir.manifest_path.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            manifest = json.loads(cell_dir.manifest_path.read_text())
    if manifest.get("corpus") != info:
        atomic_write_json(cell_dir.manifest_path, {**manifest, "corpus": info})


def load_cell_corpus(cfg: PplCellConfig) -> TokenizedCorpus:
    """The cell's corpus (``data``: source, split rule) through its tokenizer (a bpe one trains on the
    training split)."""
    data = cfg.data
    spec = DatasetSpec(**{k: data[k] for k in ("name", "kind", "source", "config", "split", "field")})
    corpus = load_corpus(spec, data["validation_fraction"])
    return tokenize_corpus(corpus, load_tokenizer(data["tokenizer"], corpus))  # bpe trains on corpus.train


def run_cell(cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
    """Train (resuming from the cell's checkpoint), save ``model.pt``, evaluate, write metrics."""
    reporter = ctx.reporter
    cfg: PplCellConfig = cell.spec
    t = cfg.train
    length = cfg.length
    corpus = load_cell_corpus(cfg)
    record_corpus(cell_dir, corpus.info)
    stream = corpus.train.tokens
    if len(stream) < length + 2:
        raise LenbenchError(f"the training split has {len(stream)} tokens, too few for length {length}")
    plan = eval_plan(corpus, cfg)  # before training: a validation split too short fails at once
    device = compute_device()
    precision = effective_precision(t.precision, device)  # bf16 only once proven on this device
    autocast = autocast_for(precision, device)
    vocab = corpus.tokenizer.vocab_size
    torch.manual_seed(cfg.seed)
    model = Transformer(model_config(cfg.model, length, cfg.lengths, vocab), parse_pe_spec(cfg.pe)).to(device)

    # the global batch over this launch's ranks (one without torchrun), in micro-batches
    split = rank_split(t.batch_size, t.micro_batch_size, ctx.parallel)

    def step_fn(model: nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = sample_windows(stream, rng, split.micro, length).to(device)
        with autocast():
            logits = model(batch[:, :-1])
        return cross_entropy(logits, batch[:, 1:]), {}

    resumed = {"from": 0}

    def on_start(step: int) -> None:
        resumed["from"] = step
        cell_dir.truncate_log(step)
        reporter.train_start(cell.label, t.steps, step)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        # the step's loss is the mean over its micro-batches (and ranks): its perplexity, not a mean of them
        metrics = {"loss": metrics["loss"], "ppl": math.exp(min(metrics["loss"], 50.0)), **metrics}
        reporter.train_step(step, metrics)
        if step % t.log_every == 0 or step == t.steps:
            cell_dir.append_log({"step": step, **metrics})

    optim = OptimConfig(
        steps=t.steps,
        lr=t.lr,
        grad_clip=t.grad_clip,
        weight_decay=t.weight_decay,
        beta1=t.beta1,
        beta2=t.beta2,
        schedule="cosine",
        warmup_frac=t.warmup_frac,
        min_lr_ratio=t.min_lr_ratio,
    )
    clock = CompileClock() if t.compile else None
    started = time.perf_counter()
    reset_overflow(model)
    train(model, step_fn, optim, cfg.seed, cell_dir, t.checkpoint_every, on_step, on_start,
          compile_clock=clock, accumulation=split.accumulation, parallel=ctx.parallel)
    train_seconds = time.perf_counter() - started
    train_backends, train_overflow = backends_used(model), overflow_lengths(model)
    save_model(cell_dir, model, cfg, corpus)
    started = time.perf_counter()
    results = evaluate(model, corpus, cfg, device, autocast, cell_dir, reporter, cell.label, plan)
    eval_seconds = time.perf_counter() - started
    evaluated = sorted({b for r in results.values() if r.get("backend") for b in r["backend"].split("+")})
    run = {"device": device.type, "precision": precision, "precision_requested": t.precision,
           "train_backend": "+".join(train_backends) or None, "backend": "+".join(evaluated) or None}
    randomized = bool(position_limits(model))
    common = {"suite": name, "dataset": cfg.dataset, "pe": pe_label(cell.config), "seed": cfg.seed, "train_len": length,
              "precision": precision}
    records = [
        {
            **common,
            "eval_len": n,
            "metric": metric,
            "value": r[metric],
            "protocol": r["protocol"],
            "n_sequences": r["n_sequences"],
            "concatenated": r["concatenated"],
            "unigram_ppl": r[f"unigram_{metric}"],  # the training unigram model on the tokens this metric scored
            "backend": r.get("backend"),  # kept with the length's partial result, so a resumed run writes the same
            **({"overflow": bool(r.get("overflow", False))} if randomized else {}),
        }
        for n, r in results.items()
        for metric in ("ppl_last256", "ppl_all")
    ]
    cell_dir.write_metrics(records)
    checks = selfcheck.cell_record()
    for line in checks["warnings"]:
        reporter.message(f"{cell.label}: {line}")
    return {
        "protocol": cfg.eval.protocol,
        "ppl_last256": {str(n): r["ppl_last256"] for n, r in results.items()},
        "ppl_all": {str(n): r["ppl_all"] for n, r in results.items()},
        "eval": {str(n): {k: r.get(k) for k in EVAL_FIELDS} for n, r in results.items()},
        "unigram_ppl": unigram_perplexity(unigram_logprobs(corpus.train, vocab), corpus.validation.tokens),
        "corpus": corpus.info,
        "train_len": length,
        "tokens_per_step": t.batch_size * length,
        "batch": {"global": t.batch_size, "per_rank": split.per_rank, "micro": split.micro,
                  "accumulation": split.accumulation, "world_size": t.batch_size // split.per_rank},
        "params": model.num_parameters(),
        "resumed_from": resumed["from"],
        "train_seconds_this_run": round(train_seconds, 2),
        "compile_seconds_this_run": round(clock.seconds if clock is not None else 0.0, 2),
        "eval_seconds_this_run": round(eval_seconds, 2),
        "run": run,
        "selfcheck": checks,
        "randomized_overflow": {"range": position_limits(model), "train_sequence_lengths": train_overflow,
                                "eval_lengths": [n for n, r in results.items() if r.get("overflow")]}
        if randomized else None,
    }


def workload(cell: Cell) -> list[Work]:
    """The cell's work for ``run --dry-run`` (:mod:`lenbench.execute.estimate`): ``steps`` optimizer
    steps of ``accumulation`` micro-batches at the training length, and per evaluation length at most
    ``eval.samples`` sequences in batches of :func:`eval_batch_size`; costs are batch x forward cost."""
    cfg: PplCellConfig = cell.spec
    t, ev, m = cfg.train, cfg.eval, cfg.model
    vocab = spec_vocab_size(cfg.data["tokenizer"])

    def item(kind: str, n: int, batch: int, repeats: float) -> Work:
        return Work(kind, n, batch, batch * forward_cost(n, m.dim, m.layers, vocab), repeats)

    split = split_batch(t.batch_size, t.micro_batch_size, 1)
    works = [item("train", cfg.length, split.micro, t.steps * split.accumulation)]
    for n in cfg.lengths:
        batch = eval_batch_size(n, vocab, ev.tokens_per_batch, ev.samples)
        full, rest = divmod(ev.samples, batch)
        works.append(item("eval", n, batch, full))
        if rest:
            works.append(item("eval", n, rest, 1))
    return works


def probe(cell: Cell) -> Callable[[Work], None]:
    """One training micro-step (forward, backward, clipping, AdamW) or one evaluation forward of a
    :class:`Work` item on a decoder of the cell's shape, with uniformly random token ids."""
    cfg: PplCellConfig = cell.spec
    t = cfg.train
    vocab = spec_vocab_size(cfg.data["tokenizer"])
    device, autocast = device_and_autocast(t.precision)
    model = Transformer(model_config(cfg.model, cfg.length, cfg.lengths, vocab), parse_pe_spec(cfg.pe)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    generator = torch.Generator().manual_seed(0)

    def run(work: Work) -> None:
        ids = torch.randint(0, vocab, (work.batch, work.size + 1), generator=generator).to(device)
        if work.kind == "train":
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model(ids[:, :-1])
            cross_entropy(logits, ids[:, 1:]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
        else:
            model.eval()
            with torch.no_grad(), autocast():
                model(ids[:, :-1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run
