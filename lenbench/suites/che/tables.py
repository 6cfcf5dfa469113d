"""The CHE suite's tables and comparisons (docs/statistics.md, docs/che.md).

Per protocol fingerprint: tasks grouped by Chomsky level (with chance and majority) x PEs:
``che_mean`` (the primary statistic: mean ± seed std over the runs that fit, ``k/n fit``),
``che_all_runs`` (mean over every run, fitted or not; no bold), ``che_max`` (the papers' statistic:
the unfiltered max over seeds and learning rates) and ``che_train`` (in-distribution accuracy,
every run: the fit diagnostic). Cell texts and the bold rule: :mod:`lenbench.present.cells`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lenbench.present.cells import (
    BELOW,
    DNF,
    DOCS,
    FAILED,
    MISSING,
    NO_RATE,
    below,
    blank,
    bold_note,
    column,
    fingerprint_note,
    lr_text,
    mark_best,
    mark_max,
    max_did_not_fit,
    runs_text,
    seed_note,
    shown_value,
    title_suffix,
)
from lenbench.present.conditions import run_conditions
from lenbench.present.population import NOT_CHOSEN
from lenbench.present.significance import Comparison
from lenbench.present.table import Section, Table, TCell
from lenbench.suites.che.views import LEVELS, CheView, che_views, level_rank, task_info

# what the significance table compares for this suite, and what its † means here


def suite_tables(frame: pd.DataFrame, options: Mapping[str, Any] | None = None) -> tuple[list[Table], pd.DataFrame]:
    """The suite's report tables and tidy summary (no options)."""
    return che_tables(frame)


def comparisons(frame: pd.DataFrame) -> list[Comparison]:
    """One per (fingerprint, task): each PE's runs at its chosen rate, higher is better, the task's
    majority baseline (%)."""
    out = []
    views = che_views(frame)
    for view in views:
        where = f" [{view.fingerprint}]" if len(views) > 1 else ""
        for task in view.tasks:
            cells = {pe: (view.cell(task, pe), view.chosen.get((task, pe))) for pe in view.pes}
            out.append(Comparison("che", f"{task}{where}", cells, True, view.majority.get(task)))
    return out


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
    thresholds = sorted({float(v) for v in column(view.rows, "fit_threshold") if not blank(v)})
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
        fingerprint_note(view.fingerprint, view.differs),
        seed_note(view.stats.values()),
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
                    text += f" @{lr_text(lr)}"
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
                    for lv, rows in sorted(by_level.items(), key=lambda kv: level_rank(kv[0]))]
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
        suffix_title = ran + title_suffix(view.fingerprint, view.differs)
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
