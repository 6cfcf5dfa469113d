"""The timing suite: ms per forward and per forward+backward at batch 1, per PE, model size and length.

What is timed (DAPE Table 1, docs/dape.md §3(c), §4.1): a causal GPT decoder (pre-LN blocks, GELU FFN,
final LN, untied head) with the GPT-2 vocabulary of 50257 tokens, batch 1, trained length 512
(PEs that depend on it see 512), D_DAPE = 32 (DAPE's default hidden width). The paper does not say
whether its times are forward-only or forward+backward, so both are measured: ``fwd`` is inference
under ``no_grad``; ``train`` is forward, cross-entropy and backward (no optimizer step).

**A cell is a group.** One cell is (size, length, mode, backend policy, slice depth) and holds
every PE of the run (config ``pes``, sorted, the identical-work control pair included). Its PEs
are timed together in interleaved rounds (:func:`lenbench.bench.interleaved_rounds`: a discarded
warm-up round, then ``repeats`` rounds, each running every PE once in a fresh random order, each
repeat at least ``min_repeat_ms`` long), because a ratio only means something between times taken
side by side. The group's folder holds one timing record and one peak-memory record per PE, each
timing record with its per-round times (``times_ms``, round ``r`` of every record of the group
is the same round), and ``DONE`` written last. So, as for every suite: a rerun skips a finished
group; an interrupted group is measured again from its start (its rounds only mean something
together, so there is no partial result to resume); a different PE list or setting is a different
group with its own folder; and a report rebuilds every ratio from the stored records alone.

Ratio (:func:`lenbench.suites.timing.ratios.timing_tables`): per round, the PE's time divided by the
reference PE's time in the same round; shown as the median over rounds with a bootstrap 95% interval
(:func:`lenbench.bench.ratio_stat`), always from measured times of the timed slice or model, never
from the full-model estimate. The reference is ``--reference-pe`` (default: dape-kerple when it
was timed). Identical-work control (``control``; default ``rope`` and ``rope:base=10001``, which
run the same operations on different rotation angles): timed in every group, its ratio's interval
is the group's *noise floor*: a ratio whose interval contains 1, or whose median is within the
noise floor of 1, is shown as ``≈ 1``.

Backend policy (``--backend``, stored as ``backend_policy`` in every cell's config and record):

- ``fastest`` (default): each PE on the fastest exact kernel the model picks for it (fused SDPA or
  FlexAttention for the baselines, the fused DAPE kernel for DAPE-Kerple). Its Ratio mixes each
  PE's own cost with the difference between kernels.
- ``paper``: every PE through the one unfused path of DAPE's NeoX code (``baddbmm`` logits, PE
  on the full ``[H, N, N]`` scores, ``finfo.min`` mask, softmax; :meth:`Attention.paper`), so
  Ratio isolates each PE's own cost, as DAPE Table 1 measures it.
- any backend name of :data:`lenbench.model.attention.BACKENDS` (e.g. ``explicit``): forced for
  every PE where it applies.

Precision (``--precision``): fp32 on CPU; on CUDA bf16 by default, or fp16 (the paper's
precision, docs/dape.md §3(d)) or fp32. Stored per cell and shown in every table title.

- CUDA: the full model. When the group's models do not all fit on the device at once, each waits
  in host memory between its turns (moved untimed; :func:`measure_group`).
- CPU: a slice of K consecutive blocks of the real shape (K = ``--layers``, default 1) is
  timed on hidden states, and the full model is estimated as
  ``K-layer time x layers / K + embedding-and-head time``. The embedding-and-head part (token
  embedding, final LN, vocabulary projection, and in train mode the loss and their backward) does
  not depend on the PE: it is timed once per (size, length, mode) in a run and shared by every
  PE's estimate. Absolute PEs' O(N x E) input addition is not part of the estimate.

Estimate check (``--check-estimate``): the same groups are also timed as slices of 1, 2 and 4
blocks (those shallower than the model); :func:`estimate_checks` compares ``K-layer x M / K`` with
the measured M-layer slice, the error of the full-model extrapolation's slice part.

Peak memory: the PE's call's peak above the memory held before it (CUDA: max allocated; CPU: peak
RSS delta, see :mod:`lenbench.bench`); for slices, of the K timed blocks.

Out of memory, per PE: a pre-check skips a PE whose lower-bound memory estimate exceeds the
available memory; an allocation failure is caught; on CPU groups run in a spawned worker process,
so a PE during whose turn the kernel's OOM killer ends the worker is recorded too. Each is stored as
``oom`` and the group is measured again without it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lenbench.config import SuiteFile
from lenbench.errors import LenbenchError
from lenbench.pe.registry import pe_label, resolve_pes
from lenbench.results import CellDir
from lenbench.suites.base import Cell, Reporter, RunContext
from lenbench.suites.timing.config import DEFAULT_PES, TimingCellConfig, name
from lenbench.suites.timing.measure import (
    dape_width,
    estimate_full_ms,
    is_full,
    measure_group,
    measure_group_isolated,
    order_seed,
)
from lenbench.suites.timing.ratios import (
    default_reference,
)


def reference_and_pes(suite_file: SuiteFile, pes: str | None, reference: str | None) -> tuple[str, str, bool]:
    """(the Ratio's reference PE as tables label it, the grid's PEs with it, whether it had to be
    added). Default reference: dape-kerple when timed, else the first PE given. A reference must be
    timed in the same rounds as the rest, so one not among ``pes`` is added to them."""
    value = pes if pes is not None else suite_file.grid.get("pes", DEFAULT_PES)
    given = resolve_pes(value)
    specs = [str(s) for s in given]
    if reference is None:
        return default_reference([s.label for s in given]) or given[0].label, ",".join(specs), False
    refs = resolve_pes(reference)
    if len(refs) != 1:
        raise LenbenchError(f"--reference-pe takes one PE, got {reference!r}")
    ref = refs[0]
    if str(ref) in specs:
        return ref.label, ",".join(specs), False
    return ref.label, ",".join([*specs, str(ref)]), True


# --------------------------------------------------------------------------- cells and records

# Embedding-and-head measurements of this run, shared by every group at the same shape and length.
_EMBED_HEAD: dict[str, dict[str, Any]] = {}


def _embed_head_key(cfg: TimingCellConfig) -> str:
    keys = ("dim", "vocab_size", "eval_len", "mode", "precision", "device", "repeats", "warmup", "min_warmup_ms",
            "min_repeat_ms")
    return json.dumps([getattr(cfg, k) for k in keys])


def control_role(cfg: TimingCellConfig, pe: str) -> str | None:
    """``base`` or ``twin`` for the two PEs of the group's identical-work control, else None."""
    control = cfg.control or []
    return {control[0]: "base", control[1]: "twin"}.get(pe) if len(control) == 2 else None


def group_records(cfg: TimingCellConfig, result: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """Long-format records of one group: per PE its time (with the per-round times) and its peak memory."""
    mode = cfg.mode
    shared = {
        "suite": name,
        "size": cfg.size,
        "train_len": cfg.train_len,
        "eval_len": cfg.eval_len,
        "mode": mode,
        "layers": cfg.layers,
        "layers_timed": cfg.layers_timed,
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
        "device": cfg.device,
        "backend_policy": cfg.backend_policy,
        "estimate_check": cfg.estimate_check,
        "group": group,
        "group_pes": list(cfg.pes),
        "control": cfg.control,
        "rounds": result.get("rounds"),
        "repeats": cfg.repeats,
        "budget_limited": bool(result.get("budget_limited", False)),
        "max_seconds": cfg.max_seconds,
        "min_repeat_ms": cfg.min_repeat_ms,
        "order_seed": order_seed(cfg),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    eh = result.get("embed_head") or {}
    eh_ok = eh.get("status") == "ok"
    records = []
    for pe in cfg.pes:
        r = result["pes"][pe]
        label = pe_label({"pe": pe, "pe_identity": cfg.pe_identities.get(pe)})
        common = {**shared, "pe": label, "spec": pe, "d_dape": dape_width(pe), "status": r["status"],
                  "control_role": control_role(cfg, pe)}
        if r["status"] != "ok":
            why = {"value": None, "backend": None, "reason": r.get("reason", "")}
            records += [{**common, "metric": f"ms_{mode}", "iqr": None, "estimated_full_ms": None, **why},
                        {**common, "metric": "peak_mem_mb", **why}]
            continue
        est = None
        if not is_full(cfg) and eh_ok:
            est = estimate_full_ms(r["ms"], cfg.layers, cfg.layers_timed, eh["ms"])
        records.append({
            **common,
            "metric": f"ms_{mode}",
            "value": r["ms"],
            "iqr": r["iqr"],
            "times_ms": r["times_ms"],
            "round_position": r["round_position"],
            "calls_per_repeat": r["calls_per_repeat"],
            "warmup_calls": r["warmup_calls"],
            "backend": r["backend"],
            "estimated_full_ms": est,
            "embed_head_ms": eh["ms"] if eh_ok else None,
            "embed_head_iqr": eh["iqr"] if eh_ok else None,
            "embed_head_status": eh.get("status"),
            "threads": result["threads"],
            "params": r["params"],
        })
        records.append({**common, "metric": "peak_mem_mb", "value": r["peak_mem_mb"], "method": r["mem_method"],
                        "backend": r["backend"]})
    return records


class GroupProgress:
    """Turns a group's measurement events into :class:`Reporter` calls: a warm-up bar over the PEs
    (each PE's typical call in seconds as its info), then a bar over the measured rounds."""

    def __init__(self, label: str, reporter: Reporter, n_pes: int) -> None:
        self.label, self.reporter, self.n_pes = label, reporter, n_pes
        self.warmed: int | None = None  # PEs warmed up in the open warm-up bar; None: no bar open

    def __call__(self, event: dict[str, Any]) -> None:
        phase = event.get("phase")
        if phase == "warmup" and self.warmed is None:
            self.warmed = 0
            self.reporter.eval_start(f"{self.label} warm-up", self.n_pes)
        elif phase == "warmed" and self.warmed is not None:
            self.warmed += 1
            self.reporter.eval_step(min(self.warmed, self.n_pes - 1), f"{event['pe']} s per call", event["seconds"])
        elif phase == "plan":
            if self.warmed is not None:
                self.reporter.eval_step(self.n_pes, "warmed up", float(self.warmed))  # closes the bar
            self.warmed = None
            self.reporter.eval_start(f"{self.label} rounds", event["rounds"])
        elif phase == "round":
            self.reporter.eval_step(event["round"], "s per round", event["seconds"] / event["round"])


def run_cell(cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
    """Time one group (in the worker process when ``isolate``) and write its metric records."""
    reporter = ctx.reporter
    cfg: TimingCellConfig = cell.spec
    key = _embed_head_key(cfg)
    measure = measure_group_isolated if cfg.isolate else measure_group
    progress = GroupProgress(cell.label, reporter, len(cfg.pes))
    result = measure(cfg, {}, _EMBED_HEAD.get(key), progress)
    if (result.get("embed_head") or {}).get("status") == "ok":
        _EMBED_HEAD[key] = result["embed_head"]
    records = group_records(cfg, result, cell_dir.cell_id)
    cell_dir.write_metrics(records)
    timed = {r["pe"]: r for r in records if r["metric"].startswith("ms_")}
    ok = [pe for pe, r in timed.items() if r["status"] == "ok"]
    parts = [f"{pe} {timed[pe]['value']:.1f}" for pe in ok] + [f"{pe} OOM" for pe in timed if pe not in ok]
    rounds = result.get("rounds")
    note = f"; {rounds} of {cfg.repeats} rounds (budget {cfg.max_seconds:g} s)" if result.get(
        "budget_limited") else ""
    reporter.message(f"{cell.label}: ms {', '.join(parts)}{note}")
    for pe in (pe for pe in timed if pe not in ok):
        reporter.message(f"{cell.label}: {pe} OOM ({timed[pe].get('reason', '')})")
    return {
        "status": "ok" if ok else "oom",
        "ms": {pe: timed[pe]["value"] for pe in ok},
        "oom": [pe for pe in timed if pe not in ok],
        "rounds": rounds,
        "budget_limited": bool(result.get("budget_limited", False)),
    }


