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

Ratio (:func:`timing_tables`): per round, the PE's time divided by the reference PE's time in the
same round; shown as the median over rounds with a bootstrap 95% interval
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
from dataclasses import dataclass, field
from typing import Any

import torch

from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.errors import LenbenchError
from lenbench.model.sizes import SIZES, ModelSize
from lenbench.pe.defaults import split_rules, with_length_defaults
from lenbench.pe.registry import PESpec, pe_identity, pe_label, resolve_pes
from lenbench.results import CellDir
from lenbench.suites.base import Cell, Reporter, RunContext
from lenbench.suites.timing.measure import (
    DTYPES,
    dape_width,
    estimate_full_ms,
    is_full,
    measure_group,
    measure_group_isolated,
    order_seed,
)
from lenbench.suites.timing.ratios import (
    MODES,
    POLICIES,
    POLICY_TEXT,
    REFERENCE_PES,
    EstimateCheck,
    TableEntry,
    TimingTable,
    approx_one,
    default_reference,
    estimate_checks,
    size_order,
    size_params,
    timing_tables,
)

__all__ = [
    "MODES", "POLICIES", "POLICY_TEXT", "REFERENCE_PES", "EstimateCheck", "TableEntry", "TimingTable", "approx_one",
    "default_reference", "estimate_checks", "size_order", "timing_tables", "expand", "run_cell", "group_records",
]  # fmt: skip

name = "timing"
GPT2_VOCAB = 50257
DEFAULT_PES = "rope,t5,alibi,kerple,fire,dape-kerple"
DEFAULT_CONTROL = "rope,rope:base=10001"  # identical work: RoPE's base changes only the angles' values
CHECK_LAYERS = (1, 2, 4)  # slices timed by --check-estimate


@dataclass(frozen=True)
class TimingProfile:
    sizes: str | list[str] = "350m"
    lengths: str | list[int] = "512,1024,2048"
    modes: str | list[str] = "both"
    layers: int | None = None  # blocks timed; None: 1 on CPU, every layer on CUDA
    repeats: int = 10  # measured rounds (fewer only when max_seconds would be exceeded)
    warmup: int = 1  # warm-up calls per PE in the discarded warm-up round
    min_warmup_ms: float = 250.0  # and keep warming up until this much time has passed
    min_repeat_ms: float = 200.0  # calls per repeat so that one repeat lasts this long
    max_seconds: float | None = 600.0  # budget of one group's measured rounds; None: no budget
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vocab_size: int = GPT2_VOCAB
    train_length: int = 512
    isolate: str | bool = "auto"  # measure in a worker process; auto: on CPU only
    backend: str = "fastest"  # fastest, paper, or a backend name forced for every PE
    check_estimate: bool = False  # also time 1-, 2- and 4-block slices to measure the estimate's error
    control: str | list[str] = DEFAULT_CONTROL  # two PEs doing identical work, or "none"
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
    sizes = [SIZES.get(n.lower()) for n in names]
    return sorted(sizes, key=lambda s: (size_params(s.name), s.name))


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


def resolve_control(value: str | list[str]) -> tuple[PESpec, PESpec] | None:
    """``control``: two PE specs doing identical work (``"none"``: no control) -> the two specs."""
    if isinstance(value, str) and value.strip().lower() in ("none", ""):
        return None
    specs = list({str(s): s for s in resolve_pes(value)}.values())
    if len(specs) != 2:
        raise LenbenchError(f"control takes two different PEs doing identical work (e.g. {DEFAULT_CONTROL}) "
                            f"or 'none', got {value!r}")
    return specs[0], specs[1]


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
    for what, number in (("min_repeat_ms", prof.min_repeat_ms), ("min_warmup_ms", prof.min_warmup_ms)):
        if number < 0:
            raise LenbenchError(f"{what} must be >= 0, got {number}")
    if prof.max_seconds is not None and prof.max_seconds <= 0:
        raise LenbenchError(f"--max-seconds must be > 0, got {prof.max_seconds}")


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one group cell per (size, length, mode[, slice]),
    each timing every PE of the grid plus the control pair, sizes smallest first."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(TimingProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid = from_dict(TimingGrid, merge(suite_file.grid, overrides.get("grid", {})), f"{suite_file.path} grid")
    check_profile(prof)
    sizes, lengths, modes = resolve_sizes(prof.sizes), resolve_lengths(prof.lengths), resolve_modes(prof.modes)
    control = resolve_control(prof.control)
    plain_defaults, length_rules = split_rules(prof.pe_defaults)  # DAPE's NeoX l0 for the trained length
    timed = with_length_defaults(resolve_pes(grid.pes, plain_defaults), length_rules, prof.train_length)
    specs = {str(s): s for s in [*timed, *(control or ())]}
    pes = sorted(specs)
    identities = {pe: pe_identity(specs[pe]) for pe in pes}  # a plugin's code makes another group
    cuda = torch.cuda.is_available()
    precision, isolate = resolve_precision(prof.precision, cuda), resolve_isolate(prof.isolate, cuda)
    policy = resolve_backend(prof.backend)
    cells = []
    for size in sizes:
        timed = min(prof.layers or (size.layers if cuda else 1), size.layers)
        slices = [(timed, False)]
        if prof.check_estimate:
            slices += [(k, True) for k in CHECK_LAYERS if k < size.layers and k != timed]
        for n in lengths:
            for mode in modes:
                for k, check in slices:
                    config = {
                        "suite": name,
                        "size": size.name,
                        "layers": size.layers,
                        "dim": size.dim,
                        "heads": size.heads,
                        "pes": pes,
                        "pe_identities": identities,
                        "control": [str(c) for c in control] if control else None,
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
                        "min_repeat_ms": prof.min_repeat_ms,
                        "max_seconds": prof.max_seconds,
                        "isolate": isolate,
                        "backend_policy": policy,
                    }
                    if check:
                        config["estimate_check"] = True
                    tags = ("" if policy == "fastest" else f"-{policy}") + (f"-K{k}" if check else "")
                    cells.append(Cell(name, f"{size.name}-L{n}-{mode}{tags}", config))
    return cells


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


def _embed_head_key(cfg: dict[str, Any]) -> str:
    keys = ("dim", "vocab_size", "eval_len", "mode", "precision", "device", "repeats", "warmup", "min_warmup_ms",
            "min_repeat_ms")
    return json.dumps([cfg[k] for k in keys])


def control_role(cfg: dict[str, Any], pe: str) -> str | None:
    """``base`` or ``twin`` for the two PEs of the group's identical-work control, else None."""
    control = cfg.get("control") or []
    return {control[0]: "base", control[1]: "twin"}.get(pe) if len(control) == 2 else None


def group_records(cfg: dict[str, Any], result: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """Long-format records of one group: per PE its time (with the per-round times) and its peak memory."""
    mode = cfg["mode"]
    shared = {
        "suite": name,
        "size": cfg["size"],
        "train_len": cfg["train_len"],
        "eval_len": cfg["eval_len"],
        "mode": mode,
        "layers": cfg["layers"],
        "layers_timed": cfg["layers_timed"],
        "batch_size": cfg["batch_size"],
        "precision": cfg["precision"],
        "device": cfg["device"],
        "backend_policy": cfg.get("backend_policy", "fastest"),
        "estimate_check": bool(cfg.get("estimate_check", False)),
        "group": group,
        "group_pes": list(cfg["pes"]),
        "control": cfg.get("control"),
        "rounds": result.get("rounds"),
        "repeats": cfg["repeats"],
        "budget_limited": bool(result.get("budget_limited", False)),
        "max_seconds": cfg["max_seconds"],
        "min_repeat_ms": cfg["min_repeat_ms"],
        "order_seed": order_seed(cfg),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    eh = result.get("embed_head") or {}
    eh_ok = eh.get("status") == "ok"
    records = []
    for pe in cfg["pes"]:
        r = result["pes"][pe]
        label = pe_label({"pe": pe, "pe_identity": (cfg.get("pe_identities") or {}).get(pe)})
        common = {**shared, "pe": label, "spec": pe, "d_dape": dape_width(pe), "status": r["status"],
                  "control_role": control_role(cfg, pe)}
        if r["status"] != "ok":
            why = {"value": None, "backend": None, "reason": r.get("reason", "")}
            records += [{**common, "metric": f"ms_{mode}", "iqr": None, "estimated_full_ms": None, **why},
                        {**common, "metric": "peak_mem_mb", **why}]
            continue
        est = None
        if not is_full(cfg) and eh_ok:
            est = estimate_full_ms(r["ms"], cfg["layers"], cfg["layers_timed"], eh["ms"])
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
    cfg = cell.config
    key = _embed_head_key(cfg)
    measure = measure_group_isolated if cfg["isolate"] else measure_group
    progress = GroupProgress(cell.label, reporter, len(cfg["pes"]))
    result = measure(cfg, {}, _EMBED_HEAD.get(key), progress)
    if (result.get("embed_head") or {}).get("status") == "ok":
        _EMBED_HEAD[key] = result["embed_head"]
    records = group_records(cfg, result, cell_dir.cell_id)
    cell_dir.write_metrics(records)
    timed = {r["pe"]: r for r in records if r["metric"].startswith("ms_")}
    ok = [pe for pe, r in timed.items() if r["status"] == "ok"]
    parts = [f"{pe} {timed[pe]['value']:.1f}" for pe in ok] + [f"{pe} OOM" for pe in timed if pe not in ok]
    rounds = result.get("rounds")
    note = f"; {rounds} of {cfg['repeats']} rounds (budget {cfg['max_seconds']:g} s)" if result.get(
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


