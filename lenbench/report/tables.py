"""The long table -> report tables (format-neutral; :mod:`lenbench.report.render` writes them out).

- CHE: tasks grouped by Chomsky level (with chance accuracy) x PEs; the score (mean accuracy over
  test lengths, %) as mean ± sample std over seeds, and in a second table the max over seeds.
- ppl: per dataset, training length and evaluation protocol, PEs x evaluation lengths of
  ppl_last256 (DAPE's layout); the title names the protocol and a note says what it scores.
- timing: DAPE Table 1 per mode and model size, PEs x lengths in ms (``KL ms`` for a K-layer CPU
  slice, with its full-model ``est. ms``) and ``Ratio (PE/dape-kerple)`` (built by
  :func:`lenbench.suites.timing.timing_tables` from the stored records); then peak memory per size.
- significance: the paired tests of :mod:`lenbench.report.stats`.

A cell never run shows ``—``; a cell whose every seed failed shows ``FAILED``; some failed seeds
add ``(k FAILED)`` to the statistics of the others. Missing values are never shown as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lenbench.report.conditions import run_conditions
from lenbench.report.stats import (
    ALPHA,
    PairedTest,
    dape_pairs,
    holm,
    paired_test,
    pe_name,
    resolve_label,
    t_quantile,
)
from lenbench.results import slug
from lenbench.suites.ppl_protocols import LEGACY_PROTOCOL, PROTOCOL_TEXT
from lenbench.tasks.che import TASKS

MISSING = "—"
FAILED = "FAILED"
DNF = "DNF"  # did not fit: the cell's in-distribution score stayed below its fit threshold
LEVELS = {"regular": "Regular (R)", "dcf": "Deterministic context-free (DCF)", "cs": "Context-sensitive (CS)"}
LEVEL_SHORT = {"regular": "R", "dcf": "DCF", "cs": "CS"}


@dataclass
class TCell:
    """One table cell: display text, and whether it is the best of its row (or column)."""

    text: str
    bold: bool = False


@dataclass
class Section:
    """A group of rows under an optional label (e.g. a Chomsky level)."""

    label: str | None
    rows: list[list[TCell]]


@dataclass
class Table:
    """A format-neutral table: ``key`` names its files, every row has ``len(header)`` cells."""

    key: str
    title: str
    header: list[str]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    left: int = 1  # leading columns aligned left (labels); the rest are right-aligned numbers

    @property
    def rows(self) -> list[list[TCell]]:
        return [row for s in self.sections for row in s.rows]


@dataclass(frozen=True)
class SeedStats:
    """The finished seeds' values of one table cell and how many seeds failed.

    CHE cells also carry each seed's standard error of its score (``ses``) and whether it fitted
    its training lengths (``fits``; None where the cell predates the flag).
    """

    values: tuple[float, ...]
    failed: int = 0
    ses: tuple[float | None, ...] = ()
    fits: tuple[bool | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof 1); None for a single seed."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def max(self) -> float:
        return float(np.max(self.values))

    @property
    def min(self) -> float:
        return float(np.min(self.values))

    @property
    def se(self) -> float | None:
        """The standard error of a single seed's value (None for several seeds or when unknown)."""
        if self.n != 1 or not self.ses or self.ses[0] is None or not math.isfinite(self.ses[0]):
            return None
        return float(self.ses[0])

    @property
    def unfit(self) -> int:
        """Seeds flagged "did not fit" (their in-distribution score stayed below the threshold)."""
        return sum(1 for f in self.fits if f is False)

    @property
    def all_unfit(self) -> bool:
        return self.n > 0 and self.unfit == self.n


# --------------------------------------------------------------------------- helpers


def pe_order(labels: Sequence[str]) -> list[str]:
    """PE labels in a stable order: registered non-DAPE PEs, then DAPE PEs, then others by name."""
    from lenbench.pe import PES

    names = PES.names()

    def key(label: str) -> tuple[int, int, str]:
        name = label.split(":", 1)[0]
        rank = names.index(name) if name in names else len(names)
        return (1 if pe_name(label).startswith("dape") else 0, rank, label)

    return sorted(dict.fromkeys(labels), key=key)


def _nan(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def seed_stats(done: pd.DataFrame, failed: pd.DataFrame, keys: list[str], scale: float = 1.0) -> dict[tuple, SeedStats]:
    """``{key tuple: SeedStats}`` from done rows (``value`` per seed) and failed-cell rows."""
    out: dict[tuple, SeedStats] = {}
    for key, group in done.groupby(keys, sort=False, dropna=False):
        vals = tuple(float(v) * scale for v in group.sort_values("seed")["value"] if not _nan(v))
        out[key if isinstance(key, tuple) else (key,)] = SeedStats(vals)
    for key, group in failed.groupby(keys, sort=False, dropna=False):
        k = key if isinstance(key, tuple) else (key,)
        out[k] = SeedStats(out[k].values if k in out else (), len(group))
    return out


def fmt_num(v: float, digits: int) -> str:
    """Fixed ``digits`` decimals; exponent form for huge values (diverged perplexities)."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2e}" if abs(v) >= 1e6 else f"{v:.{digits}f}"


def stat_text(stats: SeedStats | None, how: str, digits: int) -> str:
    """``mean ± std`` (``how='mean'``) or ``max``; ``—`` for no cell, ``FAILED`` when no seed finished."""
    if stats is None:
        return MISSING
    if stats.n == 0:
        return FAILED if stats.failed else MISSING
    if how == "max":
        text = fmt_num(stats.max, digits)
    else:
        text = fmt_num(stats.mean, digits)
        spread = stats.std if stats.std is not None else stats.se
        if spread is not None:
            text += f" ± {fmt_num(spread, digits)}"
    if stats.unfit:
        text += f" ({DNF})" if stats.all_unfit else f" ({stats.unfit} {DNF})"
    return text + (f" ({stats.failed} {FAILED})" if stats.failed else "")


def half_width(stats: SeedStats | None, how: str = "mean") -> float | None:
    """Uncertainty half-width of a shown value, for bold marking.

    Several seeds, ``how='mean'``: the 95% confidence interval of the mean,
    ``t_{0.975, n-1} * std / sqrt(n)`` (Student t). One seed: the cell's standard error when its
    statistics carry one (``se``), else None. The max over seeds has no interval: None.
    """
    if stats is None or stats.n == 0 or how != "mean":
        return None
    if stats.n >= 2 and stats.std is not None:
        return t_quantile(0.05, stats.n - 1) * stats.std / math.sqrt(stats.n)
    se = getattr(stats, "se", None)
    return float(se) if se is not None and math.isfinite(float(se)) else None


def best_flags(values: Sequence[float | None], widths: Sequence[float | None], higher: bool) -> list[bool]:
    """Which values are bold: the best and every value whose interval ``[v - w, v + w]`` overlaps the
    best's (``w`` None: the value itself, so exact ties). None when fewer than two finite values,
    or when every value is bold (nothing stands out: the row ties)."""
    finite = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return [False] * len(values)
    sign = 1.0 if higher else -1.0
    best = max(finite, key=lambda i: sign * float(values[i]))  # type: ignore[arg-type]
    w_best = widths[best] or 0.0
    reach = sign * float(values[best]) - w_best  # the best interval's worse end
    flags = [i in finite and sign * float(values[i]) + (widths[i] or 0.0) >= reach for i in range(len(values))]
    return [False] * len(values) if all(flags[i] for i in finite) else flags


BOLD_NOTE = ("bold: the best value and every value whose 95% interval (several seeds: t-based CI of the "
             "mean; one seed: ± 1 SE) overlaps the best's; no interval: equal at display precision; "
             "no bold where every value ties")


def mark_best(
    cells: list[TCell],
    stats: list[SeedStats | None],
    how: str,
    digits: int,
    higher: bool,
    widths: Sequence[float | None] | None = None,
) -> None:
    """Bold the best value among ``cells`` and every value within its uncertainty (:func:`best_flags`).

    Values are compared at display precision (``digits``); ``widths`` are the half-widths of their
    intervals (default: :func:`half_width` of each cell's statistics; None entries: exact).
    """
    shown = [
        round(s.max if how == "max" else s.mean, digits) if s is not None and s.n else None for s in stats
    ]
    hw = list(widths) if widths is not None else [half_width(s, how) for s in stats]
    for cell, flag in zip(cells, best_flags(shown, hw, higher), strict=True):
        cell.bold = flag


def _seed_note(stats: dict[tuple, SeedStats]) -> str:
    ns = sorted({s.n for s in stats.values() if s.n})
    return "seeds per cell: " + ("/".join(str(n) for n in ns) if ns else "none")


# --------------------------------------------------------------------------- CHE


@dataclass(frozen=True)
class TaskInfo:
    level: str | None
    chance: float | None


def task_info(task: str) -> TaskInfo:
    """Chomsky level and chance accuracy (1/C) from the task registry; unknown tasks get None."""
    try:
        cls = TASKS.get(task)
    except Exception:
        return TaskInfo(None, None)
    inst = cls()
    return TaskInfo(inst.level, inst.chance)


def task_order(tasks: Sequence[str]) -> list[str]:
    names = TASKS.names()
    return sorted(dict.fromkeys(tasks), key=lambda t: (names.index(t) if t in names else len(names), t))


def che_frames(frame: pd.DataFrame, metric: str = "score") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(done rows of ``metric``, failed-cell rows) of the CHE suite."""
    che = frame[frame["suite"] == "che"]
    return che[(che["status"] == "done") & (che["metric"] == metric)], che[che["status"] == "failed"]


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series([None] * len(rows), index=rows.index, dtype=object)


def che_stats(done: pd.DataFrame, failed: pd.DataFrame) -> dict[tuple, SeedStats]:
    """``{(task, pe, lr): SeedStats}`` of CHE cells in %: values, per-seed SEs and fit flags."""
    done = done.assign(lr=pd.to_numeric(_column(done, "lr"), errors="coerce"))
    failed = failed.assign(lr=pd.to_numeric(_column(failed, "lr"), errors="coerce"))
    out: dict[tuple, SeedStats] = {}
    def norm(key: tuple) -> tuple:  # NaN (no rate stored) -> None, so keys from both frames compare equal
        return (key[0], key[1], None if _nan(key[2]) else float(key[2]))

    for key, group in done.groupby(["task", "pe", "lr"], sort=False, dropna=False):
        key = norm(key)
        group = group[group["value"].notna()].sort_values("seed")
        ses = tuple(None if _nan(v) else 100.0 * float(v) for v in _column(group, "se"))
        fits = tuple(None if _nan(v) else bool(v) for v in _column(group, "fit"))
        out[key] = SeedStats(tuple(100.0 * float(v) for v in group["value"]), 0, ses, fits)
    for key, group in failed.groupby(["task", "pe", "lr"], sort=False, dropna=False):
        key = norm(key)
        have = out.get(key, SeedStats(()))
        out[key] = SeedStats(have.values, len(group), have.ses, have.fits)
    return out


def _lr_text(lr: Any) -> str:
    return "" if _nan(lr) else f"{float(lr):g}"


def best_lr(stats: dict[tuple, SeedStats], task: str, pe: str) -> Any:
    """The learning rate of (task, PE) with the highest mean score over its runs that fit (more fitted
    runs break ties; a rate none of whose runs fit ranks last)."""
    options = [(lr, s) for (t, p, lr), s in stats.items() if t == task and p == pe]
    if not options:
        return None

    def rank(item: tuple[Any, SeedStats]) -> tuple[bool, float, int]:
        s = item[1]
        fitted = [v for i, v in enumerate(s.values) if i >= len(s.fits) or s.fits[i] is not False]
        return (bool(fitted), float(np.mean(fitted)) if fitted else -math.inf, len(fitted))

    return max(options, key=rank)[0]


def pooled_stats(stats: dict[tuple, SeedStats], task: str, pe: str) -> SeedStats | None:
    """Every run of (task, PE) over seeds and learning rates together (for the max over both)."""
    runs = [s for (t, p, _), s in stats.items() if t == task and p == pe]
    if not runs:
        return None
    return SeedStats(tuple(v for s in runs for v in s.values), sum(s.failed for s in runs),
                     tuple(v for s in runs for v in s.ses), tuple(v for s in runs for v in s.fits))


def fitted_max(stats: SeedStats | None) -> SeedStats | None:
    """The runs that fitted their training lengths (unknown counts as fitted), for the max table."""
    if stats is None or not stats.fits:
        return stats
    keep = [i for i, f in enumerate(stats.fits) if f is not False]
    if not keep:
        return stats  # every run did not fit: shown as DNF
    return SeedStats(tuple(stats.values[i] for i in keep), stats.failed, tuple(stats.ses[i] for i in keep),
                     tuple(stats.fits[i] for i in keep))


def _majority(frame: pd.DataFrame) -> dict[str, float]:
    """Mean majority-baseline score (%) per task over its cells (measured on each cell's test samples)."""
    done, _ = che_frames(frame, "majority_score")
    return {str(t): 100.0 * float(g["value"].mean()) for t, g in done.groupby("task") if g["value"].notna().any()}


def che_tables(frame: pd.DataFrame) -> tuple[list[Table], pd.DataFrame]:
    """The CHE tables: mean over seeds (± std, or ± SE for one seed), the max over seeds and learning
    rates (the papers' statistic), and in-distribution accuracy; plus their tidy summary."""
    done, failed = che_frames(frame)
    if done.empty and failed.empty:
        return [], pd.DataFrame()
    stats = che_stats(done, failed)
    train_done, _ = che_frames(frame, "train_score")
    train_stats = che_stats(train_done, failed.iloc[0:0])
    tasks = task_order([k[0] for k in stats])
    pes = pe_order([k[1] for k in stats])
    several_lrs = len({_lr_text(k[2]) for k in stats}) > 1
    majority = _majority(frame)
    acc = frame[(frame["suite"] == "che") & (frame["metric"] == "accuracy") & (frame["status"] == "done")]
    lengths = sorted(int(n) for n in acc["eval_len"].dropna().unique())
    che = frame[frame["suite"] == "che"]
    train_max = sorted(int(n) for n in che["train_len"].dropna().unique())
    train_min = sorted(int(n) for n in che["train_min_len"].dropna().unique())
    training = f"{'/'.join(map(str, train_min))}..{'/'.join(map(str, train_max))}"
    protocol = f"trained on lengths {training}; " + (
        f"tested on {len(lengths)} lengths {lengths[0]}..{lengths[-1]}" if lengths else "no test lengths"
    )
    thresholds = sorted({float(v) for v in _column(done, "fit_threshold") if not _nan(v)})
    fit_note = (
        f"{DNF}: did not fit: accuracy on the training lengths {training} stayed below "
        + "/".join(f"{100 * t:.0f}%" for t in thresholds)
        + "; its score is not extrapolation, and it is never bold"
        if thresholds else f"{DNF}: did not fit its training lengths"
    )
    chosen = {(task, pe): best_lr(stats, task, pe) for task in tasks for pe in pes}
    specs = [
        ("mean", "che_mean", "CHE score (%): mean accuracy over test lengths, mean ± std over seeds (± SE for one)",
         lambda t, p: stats.get((t, p, chosen[(t, p)])), "mean"),
        ("max", "che_max", "CHE score (%): max over seeds and learning rates of the runs that fit (the papers' "
         "statistic)", lambda t, p: fitted_max(pooled_stats(stats, t, p)), "max"),
        ("train", "che_train", f"CHE in-distribution accuracy (%): training lengths {training}, mean ± std over "
         "seeds (± SE for one)", lambda t, p: train_stats.get((t, p, chosen[(t, p)])), "mean"),
    ]
    tables = []
    ran = run_conditions(che[che["status"] == "done"])  # precision / backends, when they matter
    for kind, key, title, lookup, how in specs:
        title += ran
        by_level: dict[str | None, list[list[TCell]]] = {}
        for task in tasks:
            info = task_info(task)
            row_stats = [lookup(task, pe) for pe in pes]
            cells = [TCell(stat_text(s, how, 1) + (f" @{_lr_text(chosen[(task, pe)])}"
                                                   if several_lrs and kind != "max" and s is not None and s.n else ""))
                     for s, pe in zip(row_stats, pes, strict=True)]
            eligible = [None if s is None or s.all_unfit else s for s in row_stats] if kind != "train" else row_stats
            mark_best(cells, eligible, how, 1, higher=True)
            chance = MISSING if info.chance is None else f"{100 * info.chance:.0f}%"
            base = f"{majority[task]:.1f}%" if task in majority else MISSING
            by_level.setdefault(info.level, []).append([TCell(task), TCell(chance), TCell(base), *cells])
        sections = [Section(LEVELS.get(lv, "other tasks") if lv is not None else "other tasks", rows)
                    for lv, rows in sorted(by_level.items(), key=lambda kv: _level_rank(kv[0]))]
        notes = [
            protocol,
            {"mean": "mean ± sample std (ddof 1) over seeds; one seed: mean ± the standard error of its score "
                     "(per-length binomial/ratio SE over the test samples, lengths pooled)",
             "max": "max over seeds and learning rates (CHE: the max over 10 seeds, che.md §2.6), taken over the "
                    "runs that fit; DNF: no run fit",
             "train": "in-distribution: fresh samples at the training lengths, scored like the test lengths"}[kind],
            _seed_note({k: v for k, v in stats.items()}),
            f"{BOLD_NOTE} (per row; " + ("every cell, as this table measures the fit" if kind == "train"
                                         else "runs that did not fit excluded") + "); chance: 1/C (uniform guess); "
            "majority: a constant class per output position, fitted on an independent draw and scored on the test "
            "samples",
            fit_note.replace(", and it is never bold", "") if kind == "train" else fit_note,
            f"{MISSING}: not run; {FAILED}: every seed failed; (k {FAILED}): k seeds failed, statistics over the rest",
        ]
        if several_lrs and kind != "max":
            notes.append("@lr: the learning rate with the highest mean score over the seeds that fit")
        tables.append(Table(key, title, ["task", "chance", "majority", *pes], sections, notes, left=3))
    summary = pd.DataFrame([
        {
            "task": task, "level": task_info(task).level, "chance": task_info(task).chance,
            "majority": majority.get(task), "pe": pe, "lr": None if _nan(lr) else float(lr), "n": s.n,
            "failed": s.failed, "did_not_fit": s.unfit,
            "mean": s.mean if s.n else None, "std": s.std, "se": s.se,
            "max": s.max if s.n else None, "min": s.min if s.n else None,
            "train_mean": train_stats[(task, pe, lr)].mean if train_stats.get((task, pe, lr)) and
            train_stats[(task, pe, lr)].n else None,
            "chosen_lr": _lr_text(chosen.get((task, pe))) == _lr_text(lr),
        }
        for (task, pe, lr), s in stats.items()
    ])  # fmt: skip
    return tables, summary


def _level_rank(level: str | None) -> int:
    order = list(LEVELS)
    return order.index(level) if level in order else len(order)


# --------------------------------------------------------------------------- ppl


def ppl_frames(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[pd.DataFrame, pd.DataFrame]:
    ppl = frame[frame["suite"] == "ppl"]
    protocol = ppl["protocol"] if "protocol" in ppl else pd.Series(None, index=ppl.index, dtype=object)
    ppl = ppl.assign(protocol=protocol.astype(object).where(protocol.notna(), LEGACY_PROTOCOL))  # as ``collect``
    return ppl[(ppl["status"] == "done") & (ppl["metric"] == metric)], ppl[ppl["status"] == "failed"]


def protocol_note(protocol: str) -> str:
    """What a ppl table's evaluation protocol scored (unknown names are shown as they are)."""
    return PROTOCOL_TEXT.get(protocol, f"{protocol} protocol")


def ppl_groups(done: pd.DataFrame, failed: pd.DataFrame) -> list[tuple[str, int, str, str]]:
    """(dataset, training length, protocol, file key) of every ppl table or plot, sorted; the key is
    ``ppl_<dataset>_T<len>``, with ``_<protocol>`` added where one dataset and length has several."""
    both = pd.concat([done, failed])
    groups = sorted({(str(d), int(t), str(p)) for d, t, p in
                     zip(both["dataset"], both["train_len"], both["protocol"], strict=True)})
    count: dict[tuple[str, int], int] = {}
    for d, t, _ in groups:
        count[(d, t)] = count.get((d, t), 0) + 1
    return [(d, t, p, f"ppl_{slug(d)}_T{t}" + (f"_{p}" if count[(d, t)] > 1 else "")) for d, t, p in groups]


def ppl_tables(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[list[Table], pd.DataFrame]:
    """Per (dataset, training length): PEs x evaluation lengths, mean ± std over seeds; best bold."""
    done, failed = ppl_frames(frame, metric)
    if done.empty and failed.empty:
        return [], pd.DataFrame()
    tables, summary = [], []
    for dataset, train_len, protocol, key in ppl_groups(done, failed):
        d = done[(done["dataset"] == dataset) & (done["train_len"] == train_len) & (done["protocol"] == protocol)]
        f = failed[(failed["dataset"] == dataset) & (failed["train_len"] == train_len)
                   & (failed["protocol"] == protocol)]
        lengths = sorted(int(n) for n in d["eval_len"].dropna().unique())
        per = seed_stats(d, d.iloc[0:0], ["pe", "eval_len"])
        failed_seeds = f.groupby("pe").size().to_dict()
        pes = pe_order([*d["pe"].unique(), *f["pe"].unique()])
        rows = []
        for pe in pes:
            cells = []
            for n in lengths:
                s = per.get((pe, n))
                n_failed = int(failed_seeds.get(pe, 0))
                s = SeedStats(s.values if s else (), n_failed) if (s or n_failed) else None
                cells.append(s)
                if s is not None:
                    summary.append({
                        "dataset": dataset, "train_len": train_len, "protocol": protocol, "pe": pe, "eval_len": n,
                        "metric": metric,
                        "n": s.n, "failed": s.failed, "mean": s.mean if s.n else None, "std": s.std,
                        "max": s.max if s.n else None, "min": s.min if s.n else None,
                    })  # fmt: skip
            rows.append((pe, cells))
        if not lengths:  # every cell of this group failed: no evaluation length to show
            body = [[TCell(pe), TCell(FAILED)] for pe in pes]
            title = f"{dataset}, trained at {train_len}: perplexity (last 256 tokens), {protocol} protocol"
            tables.append(Table(key, title, ["PE", "all lengths"], [Section(None, body)],
                                [f"{FAILED}: every seed failed", protocol_note(protocol)]))
            continue
        body = [[TCell(pe), *[TCell(stat_text(s, "mean", 2)) for s in cells]] for pe, cells in rows]
        for j in range(len(lengths)):
            column = [row[1 + j] for row in body]
            mark_best(column, [cells[j] for _, cells in rows], "mean", 2, higher=False)
        header = ["PE", *[f"{n}" + (" (train)" if n == train_len else "") for n in lengths]]
        notes = [
            f"perplexity over the last min(256, L) tokens ({metric}) at evaluation length L; trained at {train_len}",
            protocol_note(protocol),
            "mean ± sample std (ddof 1) over seeds",
            f"{BOLD_NOTE} (lowest per column)",
            _seed_note(per),
            f"{MISSING}: not evaluated; {FAILED}: every seed failed; (k {FAILED}): k seeds failed",
        ]
        title = (f"{dataset}, trained at {train_len}: perplexity (last 256 tokens) by evaluation length, "
                 f"{protocol} protocol{run_conditions(d)}")
        tables.append(Table(key, title, header, [Section(None, body)], notes))
    return tables, pd.DataFrame(summary)


# --------------------------------------------------------------------------- timing


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if _nan(v) else v) for k, v in row.items()}


def _flag(value: Any) -> bool:
    """A stored boolean column (NaN where the record has no such field) as a bool."""
    return not _nan(value) and bool(value)


def _policy(r: dict[str, Any]) -> str:
    """A timing record's backend policy; records from before the option are ``fastest``."""
    value = r.get("backend_policy")
    return "fastest" if _nan(value) else str(value)


def timing_data(frame: pd.DataFrame) -> tuple[list[Any], set[tuple[str, str, int, str, str]]]:
    """(:class:`~lenbench.suites.timing.TimingTable` per mode and backend policy, failed
    (pe, size, length, mode, policy) keys)."""
    from lenbench.suites.timing import timing_tables as build

    timing = frame[frame["suite"] == "timing"]
    records = [_record(r) for r in timing[timing["status"] != "failed"].to_dict("records")]
    failed = {
        (str(r["pe"]), str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
        for r in timing[timing["status"] == "failed"].to_dict("records")
        if not _flag(r.get("estimate_check"))
    }
    return build(records), failed


def _memory_cells(frame: pd.DataFrame) -> dict[tuple[str, str, int, str, str], tuple[str, float | None]]:
    """``{(pe, size, length, mode, policy): (status, MiB)}`` of the timing suite's peak-memory records
    (estimate-check slices left out); status ``done`` (MiB None: not measured on this platform),
    ``oom`` or ``failed``."""
    timing = frame[frame["suite"] == "timing"]
    out: dict[tuple[str, str, int, str, str], tuple[str, float | None]] = {}
    for r in timing.to_dict("records"):
        if _nan(r.get("eval_len")) or _nan(r.get("mode")) or _flag(r.get("estimate_check")):
            continue
        key = (str(r["pe"]), str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
        if r["status"] == "failed":
            out[key] = ("failed", None)
        elif r.get("metric") == "peak_mem_mb":
            out[key] = (str(r["status"]), None if _nan(r.get("value")) else float(r["value"]))
    return out


def _memory_text(cell: tuple[str, float | None] | None) -> str:
    if cell is None:
        return MISSING
    status, mib = cell
    if status == "oom":
        return "OOM"
    if status == "failed":
        return FAILED
    return "n/a" if mib is None else (f"{mib:.0f}" if mib >= 10 else f"{mib:.1f}")


def _policy_suffix(policy: str) -> str:
    """Table-key suffix of a backend policy: none for ``fastest`` (the default), ``_<policy>`` else."""
    return "" if policy == "fastest" else f"_{slug(policy)}"


def timing_memory_tables(frame: pd.DataFrame, layers: dict[str, tuple[int, int]]) -> list[Table]:
    """Peak memory per model size and backend policy: PE rows, per length and mode the MiB the
    timed call added."""
    from lenbench.suites.timing import POLICY_TEXT

    cells = _memory_cells(frame)
    if not cells:
        return []
    timing = frame[frame["suite"] == "timing"]
    mem_rows = timing[timing["metric"] == "peak_mem_mb"]
    methods = sorted({str(m) for m in mem_rows.get("method", pd.Series(dtype=object)).dropna().unique()})
    tables = []
    for size, policy in list(dict.fromkeys((k[1], k[4]) for k in cells)):
        keys = [k for k in cells if k[1] == size and k[4] == policy]
        lengths = sorted({k[2] for k in keys})
        modes = [m for m in ("fwd", "train") if any(k[3] == m for k in keys)]
        modes += sorted({k[3] for k in keys} - set(modes))
        header = ["PE"] + [f"N={n} {mode} MiB" for n in lengths for mode in modes]
        rows = [
            [TCell(pe)]
            + [TCell(_memory_text(cells.get((pe, size, n, mode, policy)))) for n in lengths for mode in modes]
            for pe in pe_order([k[0] for k in keys])
        ]
        timed, total = layers.get(size, (0, 0))
        part = f" (of the {timed} timed block(s) of {total})" if 0 < timed < total else ""
        part = " (the full model)" if 0 < timed == total else part
        notes = [
            f"peak memory of one timed call above the memory held before it{part}; "
            "CUDA: max allocated; CPU: peak RSS delta",
            "methods: " + (", ".join(methods) if methods else "?") + "; n/a: not measurable on this platform",
            f"OOM: did not fit in memory; {FAILED}: the cell failed; {MISSING}: not run",
        ]
        what = POLICY_TEXT.get(policy, f"{policy} backend forced for every PE")
        tables.append(Table(f"timing_memory_{slug(size)}{_policy_suffix(policy)}",
                            f"{size}: peak memory (MiB), batch 1, backend {what}", header,
                            [Section(None, rows)], notes))
    return tables


def _dape_width(frame: pd.DataFrame, pe: str) -> int | None:
    """D_DAPE of a timed PE: as its records stored it, else from the PE registry (None: no DAPE MLP)."""
    if "d_dape" in frame:
        stored = frame[(frame["suite"] == "timing") & (frame["pe"] == pe)]["d_dape"].dropna()
        if len(stored):
            return int(stored.iloc[0])
    from lenbench.suites.timing import dape_width

    try:
        return dape_width(pe)
    except Exception:  # a plugin PE this process cannot build: say nothing rather than guess
        return None


def timing_report_tables(frame: pd.DataFrame) -> tuple[list[Table], pd.DataFrame]:
    """DAPE Table 1 per (mode, backend policy, size): PE rows, per length ms (and the full-model
    estimate) and the Ratio to DAPE-Kerple (its direction in every Ratio header); then peak memory
    per size, and the estimate check where ``--check-estimate`` slices exist."""
    from lenbench.suites.timing import TimingTable

    tables_by_mode, failed = timing_data(frame)
    titles = {"fwd": "forward (inference)", "train": "forward + backward (training step)"}
    tables, summary = [], []
    memory = _memory_cells(frame)
    layers: dict[str, tuple[int, int]] = {}
    for t in tables_by_mode:
        layers.update(t.layers)
    built = {(t.mode, t.policy): t for t in tables_by_mode}
    for mode, policy in sorted({(m, p) for *_, m, p in failed} - set(built)):
        built[(mode, policy)] = TimingTable(mode, policy)
    for (mode, policy), t in built.items():
        fails = {(p, s, n) for p, s, n, m, pol in failed if m == mode and pol == policy}
        sizes = list(t.sizes) + sorted({s for _, s, _ in fails if s not in t.sizes})
        ref = t.reference
        ratio_name = f"Ratio (PE/{ref or 'dape-kerple'})"
        for size in sizes:
            lengths = sorted({*t.lengths.get(size, []), *(n for _, s, n in fails if s == size)})
            sliced = size in t.layers and t.sliced(size)
            timed = t.layers[size][0] if sliced else 0
            pes = pe_order([*t.pes, *(p for p, s, _ in fails if s == size)])
            header = ["PE", "backend"]
            for n in lengths:
                header += [f"N={n} {timed}L ms" if sliced else f"N={n} ms"]
                header += ([f"N={n} est. ms"] if sliced else []) + [f"N={n} {ratio_name}"]
            rows = []
            iqr = _iqr_by_cell(frame, mode, policy)
            for pe in pes:
                row = [TCell(pe), TCell(t.backends.get(pe, MISSING))]
                for n in lengths:
                    e = t.entries.get((pe, size, n))
                    width = 3 if sliced else 2
                    if (pe, size, n) in fails and e is None:
                        row += [TCell(FAILED)] * (width - 1) + [TCell(MISSING)]
                    elif e is None:
                        row += [TCell(MISSING)] * width
                    elif e.oom:
                        row += [TCell("OOM")] * (width - 1) + [TCell(MISSING)]
                    else:
                        row += [TCell(_fmt_ms(e.ms))] + ([TCell(_fmt_ms(e.est_ms))] if sliced else [])
                        row.append(TCell(MISSING if e.ratio is None else f"{e.ratio:.2f}"))
                    if e is not None:
                        mem = memory.get((pe, size, n, mode, policy))
                        summary.append({"mode": mode, "backend_policy": policy, "size": size, "pe": pe,
                                        "eval_len": n, "precision": "/".join(t.precisions) or None, "ms": e.ms,
                                        "iqr_ms": iqr.get((pe, size, n)), "est_full_ms": e.est_ms,
                                        "ratio": e.ratio, "oom": e.oom, "peak_mem_mb": mem[1] if mem else None})
                rows.append(row)
            notes = [f"backend: {t.policy_text}" + (
                " (Ratio isolates each PE's own cost, as DAPE Table 1)" if policy == "paper" else
                " (Ratio mixes the PE's cost with fused-vs-unfused kernel differences; --backend paper "
                "times DAPE Table 1's quantity)" if policy == "fastest" else "")]
            notes.append(f"Ratio = PE time / {ref or 'dape-kerple (not in these results)'} time at the same "
                         "length (full-model times; DAPE Table 1); below 1: faster than the reference")
            if sliced:
                total = t.layers[size][1]
                notes.append(f"{timed}L ms: {timed} of {total} blocks measured; est. ms: full model estimated as "
                             f"{timed}L ms x {total}/{timed} + the measured embedding and head "
                             "(an estimate, not a measurement; its error: `lenbench timing --check-estimate`, "
                             "README Timing)")
            widths = [f"{pe} {w}" for pe in pes if (w := _dape_width(frame, pe)) is not None]
            if widths:
                notes.append("D_DAPE (DAPE's MLP width; the paper times 32): " + ", ".join(widths))
            notes.append("kernel per PE (flex: fused FlexAttention; sdpa: fused SDPA; sdpa_bias, blocked_bias, "
                         "explicit: materialized bias or logits; paper: DAPE's unfused NeoX path); a/b: a at "
                         "some lengths, b at others")
            notes.append(f"median over repeats (IQR: iqr_ms in timing_summary.csv, iqr in results_long); "
                         f"OOM: did not fit in memory; {MISSING}: not run")
            devices = "/".join(t.devices) if t.devices else "?"
            precision = "/".join(t.precisions) if t.precisions else "?"
            title = (f"{size}: ms per sequence, {titles.get(mode, mode)}, batch 1, {devices} {precision}, "
                     f"backend {policy}")
            key = f"timing_{mode}_{slug(size)}{_policy_suffix(policy)}"
            tables.append(Table(key, title, header, [Section(None, rows)], notes, left=2))
    tables += timing_memory_tables(frame, layers)
    check = estimate_check_table(frame)
    if check is not None:
        tables.append(check)
    return tables, pd.DataFrame(summary)


def _iqr_by_cell(frame: pd.DataFrame, mode: str, policy: str) -> dict[tuple[str, str, int], float | None]:
    """IQR (ms) of each shown timing cell (the table's uncertainty, a column of the summary)."""
    timing = frame[(frame["suite"] == "timing") & (frame["metric"] == f"ms_{mode}")]
    out: dict[tuple[str, str, int], float | None] = {}
    for r in timing.to_dict("records"):
        if _policy(r) == policy and not _flag(r.get("estimate_check")) and not _nan(r.get("eval_len")):
            out[(str(r["pe"]), str(r["size"]), int(r["eval_len"]))] = None if _nan(r.get("iqr")) else float(r["iqr"])
    return out


def estimate_check_table(frame: pd.DataFrame) -> Table | None:
    """The measured error of ``K-layer x M/K`` (:func:`lenbench.suites.timing.estimate_checks`)."""
    from lenbench.suites.timing import estimate_checks

    timing = frame[(frame["suite"] == "timing") & (frame["status"] == "done")]
    checks = estimate_checks([_record(r) for r in timing.to_dict("records")])
    if not checks:
        return None
    header = ["PE", "size", "N", "mode", "backend", "K", "M", "K ms", "predicted M ms (K ms x M/K)",
              "measured M ms", "error"]
    rows = [[TCell(c.pe), TCell(c.size), TCell(str(c.eval_len)), TCell(c.mode), TCell(c.policy), TCell(str(c.k)),
             TCell(str(c.m)), TCell(_fmt_ms(c.k_ms)), TCell(_fmt_ms(c.predicted_ms)), TCell(_fmt_ms(c.m_ms)),
             TCell(f"{100 * c.rel_error:+.1f}%")] for c in checks]
    notes = ["error = (predicted - measured) / measured: how well scaling a K-block slice predicts a deeper "
             "M-block slice (the full-model estimate scales the timed slice the same way)",
             "median over repeats of each slice; IQRs in results_long"]
    return Table("timing_estimate_check", "Timing: error of the slice-to-full-model extrapolation", header,
                 [Section(None, rows)], notes, left=5)


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


# --------------------------------------------------------------------------- significance


def _paired_values(rows: pd.DataFrame, pe: str) -> dict[int, float]:
    sel = rows[(rows["pe"] == pe) & rows["value"].notna()]
    return {int(s): float(v) for s, v in zip(sel["seed"], sel["value"], strict=True)}


def _scopes(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, bool, float]]:
    """(suite, scope label, done rows of that scope, higher is better, display scale)."""
    out = []
    done, _ = che_frames(frame)
    for task in task_order(done["task"].dropna().unique()):
        out.append(("che", str(task), done[done["task"] == task], True, 100.0))
    done, _ = ppl_frames(frame)
    several = done["protocol"].nunique() > 1
    for (dataset, train_len, protocol, n), rows in done.groupby(["dataset", "train_len", "protocol", "eval_len"],
                                                                 sort=True):
        where = f" ({protocol})" if several else ""
        out.append(("ppl", f"{dataset} T={train_len} L={n}{where}", rows, False, 1.0))
    return out


def significance(frame: pd.DataFrame, compare: tuple[str, str] | None = None) -> tuple[Table | None, pd.DataFrame]:
    """Paired tests over seeds for every (DAPE-X, X) pair and ``compare``, per task or eval length."""
    from lenbench.errors import LenbenchError

    results = []
    compare_found = False
    for suite in ("che", "ppl"):
        sub = frame[(frame["suite"] == suite) & (frame["status"] == "done")]
        labels = pe_order(sub["pe"].dropna().unique())
        pairs = dape_pairs(labels)
        if compare is not None:
            try:
                pair = (resolve_label(compare[0], labels), resolve_label(compare[1], labels))
            except LenbenchError:
                pair = None
            if pair is not None:
                compare_found = True
                if pair not in pairs:
                    pairs.append(pair)
        for s, scope, rows, higher, scale in (x for x in _scopes(frame) if x[0] == suite):
            for a, b in pairs:
                va, vb = _paired_values(rows, a), _paired_values(rows, b)
                if not va or not vb:
                    continue
                seeds = sorted(set(va) & set(vb))
                test = paired_test([va[k] * scale for k in seeds], [vb[k] * scale for k in seeds])
                results.append((s, scope, a, b, higher, test, seeds))
    if compare is not None and not compare_found:
        labels = sorted(frame["pe"].dropna().unique())
        raise LenbenchError(
            f"--compare {compare[0]},{compare[1]}: both PEs must be in the same suite's results "
            f"(have: {', '.join(labels)})"
        )
    if not results:
        return None, pd.DataFrame()
    body, tidy = [], []
    adjusted = holm([test.p_t for *_, test, _ in results])
    for (suite, scope, a, b, higher, test, seeds), p_holm in zip(results, adjusted, strict=True):
        cells = significance_cells(test, higher, a, b, p_holm)
        body.append([TCell(suite), TCell(scope), TCell(f"{a} vs {b}"), *cells])
        tidy.append({
            "suite": suite, "scope": scope, "a": a, "b": b, "seeds": ",".join(map(str, seeds)), "n": test.n,
            "mean_a": test.mean_a, "mean_b": test.mean_b, "diff": test.diff, "sd_diff": test.sd, "d_z": test.d_z,
            "t": test.t, "df": test.df, "p_t": test.p_t, "p_holm": p_holm, "p_sign_flip": test.p_sign_flip,
            "favours": cells[-1].text, "note": test.note,
        })  # fmt: skip
    header = ["suite", "task / eval", "A vs B", "n", "mean A", "mean B", "Δ (A−B)", "d_z", "t (df)",
              "p (t-test)", "p (Holm)", "p (sign-flip)", "favours"]
    m = sum(p is not None for p in adjusted)
    notes = [
        "paired by seed; CHE: score in %, higher is better; ppl: ppl_last256, lower is better",
        "t-test: two-sided paired t-test (Student t, n−1 df); sign-flip: exact two-sided permutation test "
        "(smallest possible p = 2/2^n); d_z = mean(Δ)/sd(Δ)",
        f"multiple comparisons: Holm's step-down correction of the t-test p over this table's {m} tested rows "
        f"(p (Holm)); favours names a PE only when p (Holm) < {ALPHA:g}, else n.s. (not significant)",
        "no test: n < 2 paired seeds, or a constant Δ (sd 0: the t-test is undefined)",
    ]
    return Table("significance", "Paired significance over seeds", header, [Section(None, body)], notes,
                 left=3), pd.DataFrame(tidy)


def _fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    return f"{p:.1e}" if 0 < p < 0.001 else f"{p:.3f}"


def _fmt_stat(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return fmt_num(v, digits)


def significance_cells(
    test: PairedTest, higher: bool, a: str, b: str, p_holm: float | None = None, alpha: float = ALPHA
) -> list[TCell]:
    """n, means, difference, d_z, t (df), p (t-test), p (Holm), p (sign-flip) and ``favours``.

    ``favours`` names the better PE only when the test's p (``p_holm`` when given, else the raw
    t-test p) is below ``alpha``; ``n.s.`` otherwise; ``no test`` when no test was possible.
    """
    p_decide = p_holm if p_holm is not None else test.p_t
    if not test.testable:
        favours = "no test"
    elif p_decide is None or not p_decide < alpha:
        favours = "n.s."
    else:
        favours = a if (test.diff > 0) == higher else b
    if test.testable:
        t_text = f"{_fmt_stat(test.t)} ({test.df})"
        p_t, p_h, p_sf = _fmt_p(test.p_t), _fmt_p(p_holm), _fmt_p(test.p_sign_flip)
    else:
        t_text, p_t, p_h, p_sf = MISSING, f"no test ({test.note.split(':')[0]})", "no test", "no test"
    return [
        TCell(str(test.n)), TCell(_fmt_stat(test.mean_a)), TCell(_fmt_stat(test.mean_b)),
        TCell(_fmt_stat(test.diff)), TCell(_fmt_stat(test.d_z)), TCell(t_text), TCell(p_t), TCell(p_h),
        TCell(p_sf), TCell(favours),
    ]  # fmt: skip
