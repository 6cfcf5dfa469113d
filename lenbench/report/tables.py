"""The long table -> report tables (format-neutral; :mod:`lenbench.present.render` writes them out).

CHE and ppl tables follow the rules of :mod:`lenbench.present.population` (docs/statistics.md): one
population (the runs that fit), the learning rate chosen on in-distribution data, bold from
paired Holm-corrected tests, and one set of tables per protocol fingerprint (never pooled).

- CHE, per fingerprint: tasks grouped by Chomsky level (with chance and majority) x PEs:
  ``che_mean`` (the primary statistic: mean ± seed std over the runs that fit, ``k/n fit``),
  ``che_all_runs`` (mean over every run, fitted or not; no bold), ``che_max`` (the papers' statistic:
  the unfiltered max over seeds and learning rates) and ``che_train`` (in-distribution accuracy,
  every run: the fit diagnostic).
- ppl: per dataset, training length, evaluation protocol and fingerprint, PEs x evaluation lengths
  of ppl_last256 (DAPE's layout), with the unigram baseline as a last row.
- timing: DAPE Table 1 per mode and model size (smallest first), PEs x lengths in ms (``KL ms`` for a
  K-layer CPU slice, with its full-model ``est. ms``) and the paired ``Ratio PE/<reference>`` with its
  bootstrap 95% interval, ``≈ 1`` where it cannot be told from identical work (built by
  :func:`lenbench.suites.timing.ratios.timing_tables` from the stored records); the noise floor of
  the identical-work control under each table; then peak memory per size.
- significance: the paired tests of :mod:`lenbench.present.stats`, each PE at its chosen rate.

A cell never run shows ``—``; a cell whose every seed failed shows ``FAILED``; some failed seeds
add ``k FAILED`` to the statistics of the others; a cell none of whose runs fit shows ``DNF``; a
value below the majority baseline (CHE) or worse than the unigram model (ppl) is marked ``†``.
Missing values are never shown as 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lenbench.present.conditions import run_conditions
from lenbench.present.population import (
    MIN_PAIRS,
    NOT_CHOSEN,
    Bold,
    SeedStats,
    bold_by_tests,
    choose_lr,
    pooled,
)
from lenbench.present.stats import (
    ALPHA,
    PairedTest,
    dape_pairs,
    holm,
    paired_test,
    pe_name,
    resolve_label,
)
from lenbench.present.table import Section, Table, TCell
from lenbench.results import slug
from lenbench.suites.ppl.protocols import LEGACY_PROTOCOL, PROTOCOL_TEXT
from lenbench.tasks.che import TASKS

MISSING = "—"
FAILED = "FAILED"
DNF = "DNF"  # did not fit: no run of the cell reached its fit threshold on the training lengths
BELOW = "†"  # below the majority baseline (CHE) / worse than the unigram model (ppl)
NO_RATE = "rate not chosen"  # several rates, no in-distribution score to choose among them
LEVELS = {"regular": "Regular (R)", "dcf": "Deterministic context-free (DCF)", "cs": "Context-sensitive (CS)"}
LEVEL_SHORT = {"regular": "R", "dcf": "DCF", "cs": "CS"}
DOCS = "method and sources: docs/statistics.md"


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


def _plain(v: Any) -> Any:
    """A group-by key part as a plain, comparable Python value (NaN -> None, numpy -> int/float)."""
    if _nan(v):
        return None
    if isinstance(v, bool | str):
        return v
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, float) else v


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series([None] * len(rows), index=rows.index, dtype=object)


def pooled_rows(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    """A suite's rows that tables use: superseded duplicates (:mod:`lenbench.report.collect`) left out."""
    rows = frame[frame["suite"] == suite]
    return rows[~_column(rows, "superseded").fillna(False).astype(bool)]


def cell_stats(done: pd.DataFrame, failed: pd.DataFrame, keys: list[str], scale: float = 1.0) -> dict[tuple, SeedStats]:
    """``{key tuple: SeedStats}``: each finished run's value (x ``scale``), test-sampling SE, fit flag
    and seed, sorted by seed; failed-cell rows add to ``failed``."""
    out: dict[tuple, SeedStats] = {}
    done = done[done["value"].notna()]
    for key, group in done.groupby(keys, sort=False, dropna=False):
        group = group.sort_values("seed")
        k = tuple(_plain(v) for v in (key if isinstance(key, tuple) else (key,)))
        ses = tuple(None if _nan(v) else scale * float(v) for v in _column(group, "se"))
        fits = tuple(None if _nan(v) else bool(v) for v in _column(group, "fit"))
        out[k] = SeedStats(tuple(scale * float(v) for v in group["value"]), 0, ses, fits,
                           tuple(int(s) for s in group["seed"]))
    for key, group in failed.groupby(keys, sort=False, dropna=False):
        k = tuple(_plain(v) for v in (key if isinstance(key, tuple) else (key,)))
        have = out.get(k, SeedStats(()))
        out[k] = SeedStats(have.values, have.failed + len(group), have.ses, have.fits, have.seeds)
    return out


def fmt_num(v: float, digits: int) -> str:
    """Fixed ``digits`` decimals; exponent form for huge values (diverged perplexities)."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2e}" if abs(v) >= 1e6 else f"{v:.{digits}f}"


def _lr_text(lr: Any) -> str:
    return "" if _nan(lr) or lr == NOT_CHOSEN else f"{float(lr):g}"


def shown_value(stats: SeedStats | None, how: str) -> float | None:
    """The number a cell shows: ``mean`` over the population, ``all`` runs' mean, or their ``max``."""
    if stats is None or stats.n == 0:
        return None
    if how == "mean":
        pop = stats.population()
        return pop.mean if pop.n else None
    return stats.max if how == "max" else stats.mean


def runs_text(stats: SeedStats | None, how: str, digits: int) -> str:
    """A cell's text (``how`` as :func:`shown_value`).

    ``mean``/``all``: ``mean ± seed std`` (ddof 1), or for one run ``value [SE x]`` with x its
    test-sampling SE (model fixed); ``DNF`` when no run fits (``mean``). ``max``: the value, ``DNF
    run`` when that run did not fit. Then ``(k/n fit, m FAILED)`` as applicable; ``—`` for no cell,
    ``FAILED`` when no run finished.
    """
    if stats is None:
        return MISSING
    if stats.n == 0:
        return FAILED if stats.failed else MISSING
    tags = [f"{stats.k}/{stats.n} fit"] if stats.flagged else []
    if how == "max":
        text = fmt_num(stats.max, digits)
        if max_did_not_fit(stats):
            tags.insert(0, f"{DNF} run")
    else:
        use = stats.population() if how == "mean" else stats
        if use.n == 0:
            text = DNF
        else:
            text = fmt_num(use.mean, digits)
            if use.std is not None:
                text += f" ± {fmt_num(use.std, digits)}"
            elif use.se is not None:
                text += f" [SE {fmt_num(use.se, digits)}]"
    if stats.failed:
        tags.append(f"{stats.failed} {FAILED}")
    return text + (f" ({', '.join(tags)})" if tags else "")


def max_did_not_fit(stats: SeedStats | None) -> bool:
    """Whether the run with the highest value did not fit (its max is shown, never bold)."""
    return stats is not None and stats.n > 0 and len(stats.fits) == stats.n and stats.fits[stats.argmax()] is False


def below(value: float | None, baseline: float | None, higher: bool) -> bool:
    """Whether ``value`` is worse than the baseline (CHE: below majority; ppl: above unigram)."""
    if value is None or baseline is None or not math.isfinite(baseline):
        return False
    return value < baseline if higher else value > baseline


def mark_best(cells: list[TCell], stats: Sequence[SeedStats | None], higher: bool, digits: int) -> Bold:
    """Bold ``cells`` by :func:`lenbench.present.population.bold_by_tests`; returns the decision."""
    decision = bold_by_tests(stats, higher, digits)
    for cell, flag in zip(cells, decision.flags, strict=True):
        cell.bold = flag
    return decision


def mark_max(cells: list[TCell], values: Sequence[float | None], higher: bool, digits: int) -> None:
    """The max table's bold: the best value and its ties at display precision (a max has no test)."""
    shown = [None if v is None else round(v, digits) for v in values]
    live = [v for v in shown if v is not None]
    if len(live) < 2:
        return
    top = max(live) if higher else min(live)
    for cell, v in zip(cells, shown, strict=True):
        cell.bold = v == top


def bold_note(where: str, few: bool) -> str:
    """The bold rule, said under every table it applies to (``few``: the n < 3 rule decided cells)."""
    return (f"bold ({where}): the best value and every value that a two-sided paired t-test against it, over the "
            f"seeds both share (each PE at its chosen rate), Holm-corrected over the comparisons with the best, "
            f"does not find worse at p < {ALPHA:g}; fewer than {MIN_PAIRS} paired seeds: best only"
            + (f" (n < {MIN_PAIRS}: best only, applied here)" if few else "")
            + "; ties at display precision are bold; DNF is never bold")


def _seed_note(stats: Iterable[SeedStats | None]) -> str:
    ns = sorted({s.n for s in stats if s is not None and s.n})
    return "finished runs (seeds) per cell: " + ("/".join(str(n) for n in ns) if ns else "none")


def _fingerprint_note(fingerprint: str | None, differs: str) -> str:
    where = f"protocol fingerprint {fingerprint}" if fingerprint else "protocol fingerprint ?"
    extra = f"; differs from the other protocols of these results in {differs}" if differs else ""
    return (f"{where} (config minus seed, learning rate, PE, task and operational keys; ppl: plus the "
            f"evaluation-window signature): only cells of one fingerprint are pooled{extra}")


def _title_suffix(fingerprint: str | None, differs: str) -> str:
    return f" [protocol {fingerprint}: {differs}]" if differs else ""


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
    """(done rows of ``metric``, failed-cell rows) of the CHE suite, superseded folders left out."""
    che = pooled_rows(frame, "che")
    return che[(che["status"] == "done") & (che["metric"] == metric)], che[che["status"] == "failed"]


def che_stats(done: pd.DataFrame, failed: pd.DataFrame) -> dict[tuple, SeedStats]:
    """``{(task, pe, lr): SeedStats}`` of CHE cells in %: values, test-sampling SEs, fit flags, seeds."""
    done = done.assign(lr=pd.to_numeric(_column(done, "lr"), errors="coerce"))
    failed = failed.assign(lr=pd.to_numeric(_column(failed, "lr"), errors="coerce"))
    return cell_stats(done, failed, ["task", "pe", "lr"], 100.0)


def _mean_by(rows: pd.DataFrame, key: str, scale: float = 1.0, value: str = "value") -> dict[Any, float]:
    """Mean of ``value`` per ``key`` over the rows where it is known (one number per cell row)."""
    if value not in rows:
        return {}
    rows = rows[rows[value].notna()]
    return {_plain(k): scale * float(g[value].astype(float).mean()) for k, g in rows.groupby(key, sort=True)}


@dataclass
class CheView:
    """The CHE cells of one protocol fingerprint, with each (task, PE)'s chosen learning rate."""

    fingerprint: str | None
    differs: str  # "key=value, ..." where this protocol differs from the others; "" when alone
    rows: pd.DataFrame  # every CHE row of this fingerprint
    stats: dict[tuple, SeedStats]  # (task, pe, lr) -> test scores (%)
    train: dict[tuple, SeedStats]  # (task, pe, lr) -> in-distribution scores (%)
    chosen: dict[tuple[str, str], Any]  # (task, pe) -> lr, or NOT_CHOSEN
    tasks: list[str]
    pes: list[str]
    majority: dict[str, float]  # task -> majority baseline at the test lengths (%)
    train_majority: dict[str, float]  # task -> at the training lengths (%)

    @property
    def several_lrs(self) -> bool:
        return len({_lr_text(k[2]) for k in self.stats}) > 1

    def cell(self, task: str, pe: str, train: bool = False) -> SeedStats | None:
        """The runs of (task, PE) at its chosen rate (test scores, or in-distribution ones)."""
        lr = self.chosen.get((task, pe))
        return None if lr == NOT_CHOSEN else (self.train if train else self.stats).get((task, pe, lr))

    def every_rate(self, task: str, pe: str) -> SeedStats | None:
        """Every run of (task, PE) over seeds and learning rates (the max over runs)."""
        return pooled([s for (t, p, _), s in self.stats.items() if t == task and p == pe])


def fingerprints(rows: pd.DataFrame) -> list[tuple[str | None, str]]:
    """(fingerprint, what differs) of the given rows, sorted; one ``(None, "")`` when unknown."""
    if "fingerprint" not in rows or rows["fingerprint"].isna().all():
        return [(None, "")]
    diffs = _column(rows, "fingerprint_diff")
    found = {str(fp): ("" if _nan(d) else str(d)) for fp, d in zip(rows["fingerprint"], diffs, strict=True)
             if not _nan(fp)}
    return sorted(found.items())


def _of(rows: pd.DataFrame, fingerprint: str | None) -> pd.DataFrame:
    return rows if fingerprint is None else rows[rows["fingerprint"] == fingerprint]


def che_views(frame: pd.DataFrame) -> list[CheView]:
    """One :class:`CheView` per CHE protocol fingerprint."""
    che = pooled_rows(frame, "che")
    if che.empty:
        return []
    views = []
    for fp, differs in fingerprints(che):
        rows = _of(che, fp)
        done, failed = che_frames(rows)
        if done.empty and failed.empty:
            continue
        stats = che_stats(done, failed)
        train_done, _ = che_frames(rows, "train_score")
        train = che_stats(train_done, failed.iloc[0:0])
        tasks = task_order([k[0] for k in stats])
        pes = pe_order([k[1] for k in stats])
        chosen = {}
        for task in tasks:
            for pe in pes:
                options = {lr: (s, train.get((task, pe, lr)))
                           for (t, p, lr), s in stats.items() if (t, p) == (task, pe)}
                if options:
                    chosen[(task, pe)] = choose_lr(options, higher=True, digits=1)
        majority = _mean_by(che_frames(rows, "majority_score")[0], "task", 100.0)
        train_majority = _mean_by(che_frames(rows, "train_majority_score")[0], "task", 100.0)
        views.append(CheView(fp, differs, rows, stats, train, chosen, tasks, pes, majority, train_majority))
    return views


def _che_protocol(view: CheView) -> tuple[str, str]:
    """(training lengths text, "trained on ...; tested on ..." line) of a view."""
    acc = view.rows[(view.rows["metric"] == "accuracy") & (view.rows["status"] == "done")]
    lengths = sorted(int(n) for n in acc["eval_len"].dropna().unique())
    train_max = sorted(int(n) for n in view.rows["train_len"].dropna().unique())
    train_min = sorted(int(n) for n in view.rows["train_min_len"].dropna().unique())
    training = f"{'/'.join(map(str, train_min))}..{'/'.join(map(str, train_max))}"
    tested = f"tested on {len(lengths)} lengths {lengths[0]}..{lengths[-1]}" if lengths else "no test lengths"
    return training, f"trained on lengths {training}; {tested}"


def che_tables(frame: pd.DataFrame) -> tuple[list[Table], pd.DataFrame]:
    """The CHE tables of every protocol fingerprint (module docstring) and their tidy summary."""
    tables: list[Table] = []
    summary: list[dict[str, Any]] = []
    views = che_views(frame)
    for view in views:
        suffix = f"_{view.fingerprint}" if len(views) > 1 else ""
        got, rows = _che_view_tables(view, suffix)
        tables += got
        summary += rows
    return tables, pd.DataFrame(summary)


def _che_view_tables(view: CheView, suffix: str) -> tuple[list[Table], list[dict[str, Any]]]:
    training, protocol = _che_protocol(view)
    thresholds = sorted({float(v) for v in _column(view.rows, "fit_threshold") if not _nan(v)})
    fit_rule = (f"in-distribution accuracy on the training lengths {training} >= "
                + "/".join(f"{100 * t:.0f}%" for t in thresholds)) if thresholds else "its fit flag"
    several = view.several_lrs
    baseline_note = ("chance: 1/C (uniform guess); majority: a constant class per output position, fitted on an "
                     f"independent draw and scored on the same samples; {BELOW}: below the majority baseline "
                     "(a constant answer scores more)")
    lr_note = ("@lr: the rate chosen per task and PE on in-distribution data (the share of runs that fit, then their "
               "mean in-distribution accuracy at display precision, then the smaller rate), never on the test "
               f"lengths; {NO_RATE}: several rates, no in-distribution score")
    common_tail = [
        _fingerprint_note(view.fingerprint, view.differs),
        _seed_note(view.stats.values()),
        f"{MISSING}: not run; {FAILED}: every seed failed; k {FAILED}: k seeds failed, statistics over the rest",
        DOCS,
    ]
    tables = []
    ran = run_conditions(view.rows[view.rows["status"] == "done"])  # precision / backends, when they matter
    for kind in ("mean", "all", "max", "train"):
        by_level: dict[str | None, list[list[TCell]]] = {}
        few = False
        for task in view.tasks:
            info = task_info(task)
            if kind == "max":
                row = [view.every_rate(task, pe) for pe in view.pes]
            else:
                row = [view.cell(task, pe, train=kind == "train") for pe in view.pes]
            how = {"mean": "mean", "all": "all", "max": "max", "train": "all"}[kind]
            base = view.train_majority.get(task) if kind == "train" else view.majority.get(task)
            cells = []
            for s, pe in zip(row, view.pes, strict=True):
                lr = view.chosen.get((task, pe))
                if lr == NOT_CHOSEN and kind != "max":
                    cells.append(TCell(NO_RATE))
                    continue
                text = runs_text(s, how, 1)
                if several and kind != "max" and s is not None and s.n:
                    text += f" @{_lr_text(lr)}"
                if below(shown_value(s, how), base, higher=True):
                    text += f" {BELOW}"
                cells.append(TCell(text))
            if kind == "mean":
                few |= mark_best(cells, row, higher=True, digits=1).few_pairs
            elif kind == "max":
                mark_max(cells, [None if max_did_not_fit(s) else shown_value(s, "max") for s in row], True, 1)
            chance = MISSING if info.chance is None else f"{100 * info.chance:.0f}%"
            base_text = MISSING if base is None else f"{base:.1f}%"
            by_level.setdefault(info.level, []).append([TCell(task), TCell(chance), TCell(base_text), *cells])
        sections = [Section(LEVELS.get(lv, "other tasks") if lv is not None else "other tasks", rows)
                    for lv, rows in sorted(by_level.items(), key=lambda kv: _level_rank(kv[0]))]
        fit_tags = (f"k/n fit: k of the n finished runs fit ({fit_rule})")
        notes = {
            "mean": [protocol,
                     "primary statistic: mean ± sample std (ddof 1) over the seeds of the runs that fit; "
                     f"{fit_tags}; {DNF}: no run fit (no score, never bold); [SE x]: a single fitted run and x "
                     "its test-sampling SE (model fixed): the sampling error of its test samples, not "
                     "seed-to-seed variation, never an interval between PEs",
                     bold_note("per row", few), *([lr_note] if several else [])],
            "all": [protocol,
                    "mean ± sample std over every finished run at the chosen rate, fitted or not (a run that did "
                    "not fit is not extrapolation): context for the primary table, not a comparison; no bold; "
                    + fit_tags,
                    *([lr_note] if several else [])],
            "max": [protocol,
                    "the papers' statistic: the max over every finished run, all seeds and learning rates, without "
                    "a fit filter, as the CHE paper reports its table (the maximum over 10 seeds; docs/che.md §2.6); "
                    f"{DNF} run: the max is a run that did not fit (never bold); {fit_tags} (over every rate); bold: "
                    "the highest and its ties at display precision (a max has no test)"],
            "train": [protocol,
                      "in-distribution accuracy: fresh samples at the training lengths, scored like the test lengths; "
                      f"mean ± sample std over every finished run at the chosen rate; {fit_tags}; no bold (a "
                      f"diagnostic of the fit); majority here: at the training lengths",
                      *([lr_note] if several else [])],
        }[kind]
        notes += [baseline_note, *common_tail]
        suffix_title = ran + _title_suffix(view.fingerprint, view.differs)
        titles = {
            "mean": "CHE score (%): mean accuracy over test lengths, mean ± seed std over the runs that fit (k/n fit)",
            "all": "CHE score (%): mean ± seed std over all runs, fitted or not",
            "max": "CHE score (%): max over all runs (seeds x learning rates), unfiltered: the papers' statistic",
            "train": f"CHE in-distribution accuracy (%): training lengths {training}, mean ± seed std over all runs",
        }
        keys = {"mean": "che_mean", "all": "che_all_runs", "max": "che_max", "train": "che_train"}
        tables.append(Table(keys[kind] + suffix, titles[kind] + suffix_title, ["task", "chance", "majority", *view.pes],
                            sections, notes, left=3))
    summary = []
    for (task, pe, lr), s in view.stats.items():
        pop = s.population()
        every = view.every_rate(task, pe)
        fitted_every = every.population() if every is not None else None
        train = view.train.get((task, pe, lr))
        summary.append({
            "fingerprint": view.fingerprint, "task": task, "level": task_info(task).level,
            "chance": task_info(task).chance, "majority": view.majority.get(task), "pe": pe, "lr": lr,
            "chosen_lr": view.chosen.get((task, pe)) == lr, "n": s.n, "fit": s.k if s.flagged else None,
            "failed": s.failed, "mean": pop.mean if pop.n else None, "std": pop.std,
            "test_sampling_se_model_fixed": pop.se,
            "all_runs_mean": s.mean if s.n else None, "all_runs_std": s.std,
            "max_all_runs_all_rates": every.max if every is not None and every.n else None,
            "max_fitted_runs_all_rates": fitted_every.max if fitted_every is not None and fitted_every.n else None,
            "train_mean_all_runs": train.mean if train is not None and train.n else None,
            "below_majority": below(pop.mean if pop.n else None, view.majority.get(task), higher=True),
        })
    return tables, summary


def _level_rank(level: str | None) -> int:
    order = list(LEVELS)
    return order.index(level) if level in order else len(order)


# --------------------------------------------------------------------------- ppl


def ppl_frames(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(done rows of ``metric``, failed-cell rows) of the ppl suite, superseded folders left out."""
    ppl = pooled_rows(frame, "ppl")
    protocol = ppl["protocol"] if "protocol" in ppl else pd.Series(None, index=ppl.index, dtype=object)
    ppl = ppl.assign(protocol=protocol.astype(object).where(protocol.notna(), LEGACY_PROTOCOL))  # as ``collect``
    ppl = ppl.assign(lr=pd.to_numeric(_column(ppl, "lr"), errors="coerce"))
    return ppl[(ppl["status"] == "done") & (ppl["metric"] == metric)], ppl[ppl["status"] == "failed"]


def protocol_note(protocol: str) -> str:
    """What a ppl table's evaluation protocol scored (unknown names are shown as they are)."""
    return PROTOCOL_TEXT.get(protocol, f"{protocol} protocol")


@dataclass
class PplView:
    """The ppl cells of one table: dataset, training length, protocol and fingerprint."""

    dataset: str
    train_len: int
    protocol: str
    fingerprint: str | None
    differs: str
    key: str
    stats: dict[tuple, SeedStats]  # (pe, lr, eval_len) -> runs
    failed: dict[tuple, int]  # (pe, lr) -> failed seeds
    chosen: dict[str, Any]  # pe -> lr, or NOT_CHOSEN
    lengths: list[int]
    pes: list[str]
    unigram: dict[int, float]  # eval_len -> the unigram model's perplexity on the same targets
    conditions: str = ""  # precision / backends, when they matter (:func:`run_conditions`)

    @property
    def several_lrs(self) -> bool:
        return len({_lr_text(k[1]) for k in self.stats} | {_lr_text(k[1]) for k in self.failed}) > 1

    def cell(self, pe: str, length: int) -> SeedStats | None:
        """The runs of a PE at one length at its chosen rate (failed seeds of that rate included)."""
        lr = self.chosen.get(pe)
        if lr == NOT_CHOSEN:
            return None
        s = self.stats.get((pe, lr, length))
        n_failed = self.failed.get((pe, lr), 0)
        if s is None and not n_failed:
            return None
        s = s or SeedStats(())
        return SeedStats(s.values, n_failed, s.ses, s.fits, s.seeds)


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


def ppl_views(frame: pd.DataFrame, metric: str = "ppl_last256") -> list[PplView]:
    """One :class:`PplView` per (dataset, training length, protocol, fingerprint), sorted."""
    done, failed = ppl_frames(frame, metric)
    if done.empty and failed.empty:
        return []
    views = []
    for dataset, train_len, protocol, key in ppl_groups(done, failed):
        d = done[(done["dataset"] == dataset) & (done["train_len"] == train_len) & (done["protocol"] == protocol)]
        f = failed[(failed["dataset"] == dataset) & (failed["train_len"] == train_len)
                   & (failed["protocol"] == protocol)]
        prints = fingerprints(pd.concat([d, f]))
        for fp, differs in prints:
            dd, ff = _of(d, fp), _of(f, fp)
            stats = cell_stats(dd, dd.iloc[0:0], ["pe", "lr", "eval_len"])
            n_failed = {tuple(_plain(v) for v in k): len(g) for k, g in ff.groupby(["pe", "lr"], dropna=False)}
            lengths = sorted(int(n) for n in dd["eval_len"].dropna().unique())
            pes = pe_order([*dd["pe"].unique(), *ff["pe"].unique()])
            chosen = {}
            for pe in pes:
                lrs = {k[1] for k in stats if k[0] == pe} | {k[1] for k in n_failed if k[0] == pe}
                options = {}
                for lr in lrs:
                    runs = [s for (p, r, _), s in stats.items() if (p, r) == (pe, lr)]
                    options[lr] = (runs[0] if runs else None, stats.get((pe, lr, train_len)))
                chosen[pe] = choose_lr(options, higher=False, digits=2)
            unigram = _mean_by(dd, "eval_len", value="unigram_ppl")
            views.append(PplView(dataset, train_len, protocol, fp, differs,
                                 key + (f"_{fp}" if len(prints) > 1 else ""), stats, n_failed, chosen, lengths, pes,
                                 {int(k): v for k, v in unigram.items()}, run_conditions(dd)))
    return views


def ppl_tables(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[list[Table], pd.DataFrame]:
    """Per (dataset, training length, protocol, fingerprint): PEs x evaluation lengths, mean ± seed std,
    each PE at its chosen rate, bold from paired tests per column, the unigram baseline last."""
    tables, summary = [], []
    for view in ppl_views(frame, metric):
        title = (f"{view.dataset}, trained at {view.train_len}: perplexity (last 256 tokens) by evaluation length, "
                 f"{view.protocol} protocol{view.conditions}" + _title_suffix(view.fingerprint, view.differs))
        if not view.lengths:  # every cell of this group failed: no evaluation length to show
            body = [[TCell(pe), TCell(FAILED)] for pe in view.pes]
            tables.append(Table(view.key, title, ["PE", "all lengths"], [Section(None, body)],
                                [f"{FAILED}: every seed failed", protocol_note(view.protocol)]))
            continue
        several = view.several_lrs
        grid = {pe: [view.cell(pe, n) for n in view.lengths] for pe in view.pes}
        body = []
        for pe in view.pes:
            row = [TCell(pe)]
            for n, s in zip(view.lengths, grid[pe], strict=True):
                if view.chosen.get(pe) == NOT_CHOSEN:
                    row.append(TCell(NO_RATE))
                    continue
                text = runs_text(s, "mean", 2)
                if several and s is not None and s.n:
                    text += f" @{_lr_text(view.chosen[pe])}"
                if below(shown_value(s, "mean"), view.unigram.get(n), higher=False):
                    text += f" {BELOW}"
                row.append(TCell(text))
            body.append(row)
        few = False
        for j in range(len(view.lengths)):
            column = [row[1 + j] for row in body]
            few |= mark_best(column, [grid[pe][j] for pe in view.pes], higher=False, digits=2).few_pairs
        sections = [Section(None, body)]
        if view.unigram:
            sections.append(Section("baseline", [[TCell("unigram")] + [
                TCell(fmt_num(view.unigram[n], 2) if n in view.unigram else MISSING) for n in view.lengths]]))
        header = ["PE", *[f"{n}" + (" (train)" if n == view.train_len else "") for n in view.lengths]]
        notes = [
            f"perplexity over the last min(256, L) tokens ({metric}) at evaluation length L; (train): the "
            "training length",
            protocol_note(view.protocol),
            "mean ± sample std (ddof 1) over seeds; every finished run counts (ppl has no fit flag); one run: its "
            "value alone (no test-sampling SE is stored for perplexity)",
            bold_note("lowest per column", few),
            *(["@lr: the rate chosen per PE on in-distribution data (the lowest mean perplexity at the training "
               f"length, then the smaller rate), never on the longer lengths; {NO_RATE}: the training length was "
               "not evaluated"] if several else []),
            f"unigram: the training split's unigram model scored on the same targets; {BELOW}: worse than it",
            _fingerprint_note(view.fingerprint, view.differs),
            _seed_note(s for per in grid.values() for s in per),
            f"{MISSING}: not evaluated; {FAILED}: every seed failed; k {FAILED}: k seeds failed",
            DOCS,
        ]
        tables.append(Table(view.key, title, header, sections, notes))
        for (pe, lr, n), s in view.stats.items():
            summary.append({
                "fingerprint": view.fingerprint, "dataset": view.dataset, "train_len": view.train_len,
                "protocol": view.protocol, "pe": pe, "lr": lr, "chosen_lr": view.chosen.get(pe) == lr, "eval_len": n,
                "metric": metric, "n": s.n, "failed": view.failed.get((pe, lr), 0), "mean": s.mean if s.n else None,
                "std": s.std, "max": s.max if s.n else None, "min": s.min if s.n else None,
                "unigram": view.unigram.get(n),
            })  # fmt: skip
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


def _group_pes(r: dict[str, Any]) -> list[str]:
    """A timing row's PE, or for a failed group's row (no ``pe``) every PE of the group
    (``group_pes``, JSON text)."""
    if not _nan(r.get("pe")):
        return [str(r["pe"])]
    value = r.get("group_pes")
    return [str(p) for p in json.loads(value)] if isinstance(value, str) and value.startswith("[") else []


def timing_data(
    frame: pd.DataFrame, reference: str | None = None
) -> tuple[list[Any], set[tuple[str, str, int, str, str]]]:
    """(:class:`~lenbench.suites.timing.TimingTable` per mode and backend policy, failed
    (pe, size, length, mode, policy) keys); ``reference``: the Ratio's denominator (None: the default)."""
    from lenbench.suites.timing.ratios import timing_tables as build

    timing = frame[frame["suite"] == "timing"]
    records = [_record(r) for r in timing[timing["status"] != "failed"].to_dict("records")]
    failed = {
        (pe, str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
        for r in timing[timing["status"] == "failed"].to_dict("records")
        if not _flag(r.get("estimate_check"))
        for pe in _group_pes(r)
    }
    return build(records, reference), failed


def timing_duplicate_warnings(frame: pd.DataFrame) -> list[str]:
    """A PE timed at the same (size, length, mode, policy, slice) by several groups: the tables show
    the latest group's time and pair its Ratio within that group; say so."""
    timing = frame[(frame["suite"] == "timing") & frame["metric"].astype(str).str.startswith("ms_")]
    keys = [k for k in ("size", "mode", "pe", "eval_len", "backend_policy", "layers_timed") if k in timing]
    if timing.empty or "pe" not in timing:
        return []
    per = timing[keys + ["cell"]].drop_duplicates().groupby(keys, dropna=False)["cell"].nunique()
    return [f"{n} timing groups timed {', '.join(f'{k}={v}' for k, v in zip(keys, key, strict=True))}; "
            "the tables show the latest group's time, its Ratio paired within that group"
            for key, n in per[per > 1].items()]


def _memory_cells(frame: pd.DataFrame) -> dict[tuple[str, str, int, str, str], tuple[str, float | None]]:
    """``{(pe, size, length, mode, policy): (status, MiB)}`` of the timing suite's peak-memory records
    (estimate-check slices left out; the latest group where several timed a PE); status ``done``
    (MiB None: not measured on this platform), ``oom`` or ``failed``."""
    timing = frame[frame["suite"] == "timing"]
    out: dict[tuple[str, str, int, str, str], tuple[str, float | None]] = {}
    when: dict[tuple[str, str, int, str, str], str] = {}
    for r in timing.to_dict("records"):
        if _nan(r.get("eval_len")) or _nan(r.get("mode")) or _flag(r.get("estimate_check")):
            continue
        stamp = "" if _nan(r.get("measured_at")) else str(r["measured_at"])
        for pe in _group_pes(r):
            key = (pe, str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
            if key in when and when[key] > stamp:
                continue
            if r["status"] == "failed":
                out[key], when[key] = ("failed", None), stamp
            elif r.get("metric") == "peak_mem_mb":
                out[key], when[key] = (str(r["status"]), None if _nan(r.get("value")) else float(r["value"])), stamp
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
    """Peak memory per model size (smallest first) and backend policy: PE rows, per length and mode
    the MiB the timed call added."""
    from lenbench.suites.timing.ratios import POLICY_TEXT, size_order

    cells = _memory_cells(frame)
    if not cells:
        return []
    timing = frame[frame["suite"] == "timing"]
    mem_rows = timing[timing["metric"] == "peak_mem_mb"]
    methods = sorted({str(m) for m in mem_rows.get("method", pd.Series(dtype=object)).dropna().unique()})
    tables = []
    order = {s: i for i, s in enumerate(size_order([k[1] for k in cells]))}
    for size, policy in sorted(dict.fromkeys((k[1], k[4]) for k in cells), key=lambda sp: (order[sp[0]], sp[1])):
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
    from lenbench.suites.timing.measure import dape_width

    try:
        return dape_width(pe)
    except Exception:  # a plugin PE this process cannot build: say nothing rather than guess
        return None


def ratio_text(ratio: Any, floor: float | None) -> str:
    """``0.93 (0.90–0.97)``: the paired ratio's median and bootstrap 95% interval; ``≈ 1 (0.97–1.04)``
    where it cannot be told from identical work (:func:`lenbench.suites.timing.ratios.approx_one`)."""
    from lenbench.suites.timing.ratios import approx_one

    if ratio is None:
        return MISSING
    interval = f"({ratio.low:.2f}–{ratio.high:.2f})"
    return f"≈ 1 {interval}" if approx_one(ratio, floor) else f"{ratio.median:.2f} {interval}"


def _noise_note(t: Any, size: str, lengths: list[int]) -> str:
    if t.control is None:
        return "no identical-work control was timed (control: none), so no noise floor is known"
    base, twin = t.control
    parts = []
    for n in lengths:
        stat = t.noise.get((size, n))
        if stat is not None:
            parts.append(f"N={n} ±{100 * stat.reach:.1f}% ({stat.median:.2f}, {stat.low:.2f}–{stat.high:.2f})")
    if not parts:
        return f"identical-work control {twin} / {base}: not measured here, so no noise floor is known"
    return (f"noise floor = how far the identical-work control's interval ({twin} / {base}, the same operations "
            f"on other angles, timed in the same rounds) reaches from 1: " + "; ".join(parts))


def timing_report_tables(frame: pd.DataFrame, reference: str | None = None) -> tuple[list[Table], pd.DataFrame]:
    """DAPE Table 1 per (mode, backend policy, size), sizes smallest first: PE rows, per length the
    measured ms (and the full-model estimate) and the paired Ratio to the reference PE with its
    bootstrap 95% interval; then peak memory per size, and the estimate check where
    ``--check-estimate`` slices exist. ``reference`` None: DAPE-Kerple when timed."""
    from lenbench.suites.timing.ratios import TimingTable, approx_one, size_order

    tables_by_mode, failed = timing_data(frame, reference)
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
        sizes = size_order([*t.sizes, *(s for _, s, _ in fails)])
        ref = t.reference
        ratio_name = f"Ratio PE/{ref or '?'} (95% CI)"
        for size in sizes:
            lengths = sorted({*t.lengths.get(size, []), *(n for _, s, n in fails if s == size)})
            sliced = size in t.layers and t.sliced(size)
            timed = t.layers[size][0] if sliced else 0
            pes = pe_order([*(p for (p, s, _) in t.entries if s == size), *(p for p, s, _ in fails if s == size)])
            header = ["PE", "backend"]
            for n in lengths:
                header += [f"N={n} {timed}L ms" if sliced else f"N={n} ms"]
                header += ([f"N={n} est. ms"] if sliced else []) + [f"N={n} {ratio_name}"]
            rows = []
            rounds: dict[int, set[tuple[int | None, bool]]] = {}
            for pe in pes:
                label = pe
                row: list[TCell] = []
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
                        floor = t.floor(size, n)
                        row += [TCell(_fmt_ms(e.ms))] + ([TCell(_fmt_ms(e.est_ms))] if sliced else [])
                        row.append(TCell("1 (reference)" if pe == ref and e.ratio is not None
                                         else ratio_text(e.ratio, floor)))
                        rounds.setdefault(n, set()).add((e.rounds, e.budget_limited))
                    if e is not None:
                        label = f"{pe} (control)" if e.role == "twin" else pe
                        mem = memory.get((pe, size, n, mode, policy))
                        stat = e.ratio
                        floor = t.floor(size, n)
                        summary.append({
                            "mode": mode, "backend_policy": policy, "size": size, "pe": pe, "eval_len": n,
                            "precision": "/".join(t.precisions) or None, "ms": e.ms,
                            "iqr_ms": _iqr_of(frame, e.group, pe, mode), "est_full_ms": e.est_ms,
                            "reference_pe": ref, "ratio": stat.median if stat else None,
                            "ratio_ci95_low": stat.low if stat else None,
                            "ratio_ci95_high": stat.high if stat else None,
                            "ratio_approx_1": approx_one(stat, floor) if stat else None, "noise_floor": floor,
                            "rounds": e.rounds, "budget_limited": e.budget_limited, "control_role": e.role,
                            "oom": e.oom, "peak_mem_mb": mem[1] if mem else None, "group": e.group,
                        })
                rows.append([TCell(label), TCell(t.backends.get(pe, MISSING))] + row)
            notes = [f"backend: {t.policy_text}" + (
                " (Ratio isolates each PE's own cost, as DAPE Table 1)" if policy == "paper" else
                " (Ratio mixes the PE's cost with the difference between kernels; --backend paper times "
                "DAPE Table 1's quantity)" if policy == "fastest" else "")]
            what = f"{timed}-block slice" if sliced else "model"
            notes.append(
                f"Ratio = median over rounds of PE time / {ref or '(no reference PE timed)'} time measured in the "
                f"same round, with its bootstrap 95% interval; from the measured {what} times, never est. ms; "
                "below 1: faster than the reference; ≈ 1: the interval contains 1 or the median is within the "
                "noise floor of 1")
            notes.append(_noise_note(t, size, lengths))
            notes.append(_rounds_note(rounds))
            if sliced:
                total = t.layers[size][1]
                notes.append(f"{timed}L ms: {timed} of {total} blocks measured; est. ms: full model estimated as "
                             f"{timed}L ms x {total}/{timed} + the measured embedding and head "
                             "(an estimate, not a measurement; its error: `lenbench timing --check-estimate`, "
                             "docs/timing.md)")
            widths = [f"{pe} {w}" for pe in pes if (w := _dape_width(frame, pe)) is not None]
            if widths:
                notes.append("D_DAPE (DAPE's MLP width; the paper times 32): " + ", ".join(widths))
            notes.append("kernel per PE (flex: fused FlexAttention; sdpa: fused SDPA; dape_fused: the fused DAPE "
                         "kernel; sdpa_bias, blocked_bias, explicit: materialized bias or logits; paper: DAPE's "
                         "unfused NeoX path); a/b: a at some lengths, b at others")
            notes.append(f"ms: median over rounds (IQR: iqr_ms in timing_summary.csv, iqr in results_long); "
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


def _rounds_note(rounds: dict[int, set[tuple[int | None, bool]]]) -> str:
    """How many measured rounds each length's ratios rest on, and where a budget cut them."""
    counts = {r for per in rounds.values() for r, _ in per if r is not None}
    cut = sorted(n for n, per in rounds.items() if any(limited for _, limited in per))
    text = "rounds per group: " + ("/".join(str(c) for c in sorted(counts)) if counts else "?")
    text += " (after a discarded warm-up round; PEs in a fresh random order each round)"
    if cut:
        text += "; fewer than asked at N=" + ",".join(str(n) for n in cut) + " (the group's max_seconds budget)"
    if any(r is None for per in rounds.values() for r, _ in per):
        text += ("; times stored before interleaved groups (one PE per cell, repeats back to back) have no "
                 "paired Ratio: rerun them with lenbench timing")
    return text


def _iqr_of(frame: pd.DataFrame, group: str | None, pe: str, mode: str) -> float | None:
    """IQR (ms) of a shown timing entry (its record in its group)."""
    rows = frame[(frame["suite"] == "timing") & (frame["metric"] == f"ms_{mode}") & (frame["pe"] == pe)]
    if group is not None and "group" in rows:
        rows = rows[rows["group"] == group]
    values = rows["iqr"].dropna() if "iqr" in rows else []
    return float(values.iloc[-1]) if len(values) else None


def estimate_check_table(frame: pd.DataFrame) -> Table | None:
    """The measured error of ``K-layer x M/K`` (:func:`lenbench.suites.timing.estimate_checks`)."""
    from lenbench.suites.timing.ratios import estimate_checks

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
             "median over rounds of each slice; IQRs in results_long"]
    return Table("timing_estimate_check", "Timing: error of the slice-to-full-model extrapolation", header,
                 [Section(None, rows)], notes, left=5)


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


# --------------------------------------------------------------------------- significance


@dataclass(frozen=True)
class _Scope:
    """One row family of the significance table: its PEs' runs at their chosen rates."""

    suite: str
    label: str
    cells: dict[str, tuple[SeedStats | None, Any]]  # pe -> (runs at the chosen rate, that rate)
    higher: bool
    baseline: float | None  # CHE majority (%), ppl unigram; a mean worse than it is marked


def _scopes(frame: pd.DataFrame) -> list[_Scope]:
    """Every CHE (fingerprint, task) and ppl (table, evaluation length) with its PEs' chosen runs."""
    out = []
    views = che_views(frame)
    for view in views:
        where = f" [{view.fingerprint}]" if len(views) > 1 else ""
        for task in view.tasks:
            cells = {pe: (view.cell(task, pe), view.chosen.get((task, pe))) for pe in view.pes}
            out.append(_Scope("che", f"{task}{where}", cells, True, view.majority.get(task)))
    ppl = ppl_views(frame)
    several = len({v.protocol for v in ppl}) > 1
    prints = len({v.fingerprint for v in ppl}) > 1
    for view in ppl:
        where = (f" ({view.protocol})" if several else "") + (f" [{view.fingerprint}]" if prints else "")
        for n in view.lengths:
            cells = {pe: (view.cell(pe, n), view.chosen.get(pe)) for pe in view.pes}
            out.append(_Scope("ppl", f"{view.dataset} T={view.train_len} L={n}{where}", cells, False,
                              view.unigram.get(n)))
    return out


def significance(frame: pd.DataFrame, compare: tuple[str, str] | None = None) -> tuple[Table | None, pd.DataFrame]:
    """Paired tests over seeds for every (DAPE-X, X) pair and ``compare``, per CHE task or ppl length.

    Each PE is taken at its chosen learning rate (named in ``lr A``/``lr B``), over its population
    (CHE: the runs that fit), paired on the seeds both share; Holm over every tested row."""
    from lenbench.errors import LenbenchError

    results = []
    compare_found = False
    scopes = _scopes(frame)
    for suite in ("che", "ppl"):
        labels = pe_order([pe for s in scopes if s.suite == suite for pe in s.cells])
        pairs = dape_pairs(labels)
        if compare is not None and labels:
            try:
                pair = (resolve_label(compare[0], labels), resolve_label(compare[1], labels))
            except LenbenchError:
                pair = None
            if pair is not None:
                compare_found = True
                if pair not in pairs:
                    pairs.append(pair)
        for scope in (s for s in scopes if s.suite == suite):
            for a, b in pairs:
                (sa, lr_a), (sb, lr_b) = scope.cells.get(a, (None, None)), scope.cells.get(b, (None, None))
                if sa is None or sb is None or not sa.n or not sb.n:
                    continue
                va, vb = sa.population().by_seed(), sb.population().by_seed()
                seeds = sorted(set(va) & set(vb))
                test = paired_test([va[k] for k in seeds], [vb[k] for k in seeds])
                results.append((scope, a, b, lr_a, lr_b, test, seeds))
    if compare is not None and not compare_found:
        labels = sorted(frame["pe"].dropna().unique())
        raise LenbenchError(
            f"--compare {compare[0]},{compare[1]}: both PEs must be in the same suite's results "
            f"(have: {', '.join(labels)})"
        )
    if not results:
        return None, pd.DataFrame()
    body, tidy = [], []
    adjusted = holm([r[5].p_t for r in results])
    for (scope, a, b, lr_a, lr_b, test, seeds), p_holm in zip(results, adjusted, strict=True):
        cells = significance_cells(test, scope.higher, a, b, p_holm)
        for i, mean in ((1, test.mean_a), (2, test.mean_b)):
            if test.n and below(mean, scope.baseline, scope.higher):
                cells[i] = TCell(f"{cells[i].text} {BELOW}")
        body.append([TCell(scope.suite), TCell(scope.label), TCell(f"{a} vs {b}"), TCell(_lr_text(lr_a) or MISSING),
                     TCell(_lr_text(lr_b) or MISSING), *cells])
        tidy.append({
            "suite": scope.suite, "scope": scope.label, "a": a, "b": b, "lr_a": lr_a, "lr_b": lr_b,
            "seeds": ",".join(map(str, seeds)), "n": test.n, "mean_a": test.mean_a, "mean_b": test.mean_b,
            "diff": test.diff, "sd_diff": test.sd, "d_z": test.d_z, "t": test.t, "df": test.df, "p_t": test.p_t,
            "p_holm": p_holm, "p_sign_flip": test.p_sign_flip, "favours": cells[-1].text, "note": test.note,
        })  # fmt: skip
    header = ["suite", "task / eval", "A vs B", "lr A", "lr B", "n", "mean A", "mean B", "Δ (A−B)", "d_z", "t (df)",
              "p (t-test)", "p (Holm)", "p (sign-flip)", "favours"]
    m = sum(p is not None for p in adjusted)
    notes = [
        "each PE at its chosen learning rate (lr A, lr B: chosen on in-distribution data, as in the tables); paired "
        "by seed over the seeds where both runs are in the population (CHE: both fit); n: paired seeds; mean A, "
        "mean B: over those seeds",
        "CHE: score in %, higher is better; ppl: ppl_last256, lower is better",
        "t-test: two-sided paired t-test (Student t, n−1 df); sign-flip: exact two-sided permutation test "
        "(smallest possible p = 2/2^n); d_z = mean(Δ)/sd(Δ)",
        f"multiple comparisons: Holm's step-down correction of the t-test p over this table's {m} tested rows "
        f"(p (Holm)); favours names a PE only when p (Holm) < {ALPHA:g}, else n.s. (not significant)",
        "no test: n < 2 paired seeds, or a constant Δ (sd 0: the t-test is undefined)",
        f"{BELOW}: below the majority baseline (CHE) or worse than the unigram model (ppl)",
        DOCS,
    ]
    return Table("significance", "Paired significance over seeds", header, [Section(None, body)], notes,
                 left=5), pd.DataFrame(tidy)


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
