"""The CHE cells of a long table as views: one per protocol fingerprint, each (task, PE) with its
runs over seeds and its learning rate chosen on in-distribution data (docs/statistics.md; tasks and
their Chomsky levels: docs/che.md). The tables and figures of the suite read these views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lenbench.present.cells import (
    cell_stats,
    column,
    fingerprints,
    lr_text,
    mean_by,
    of_fingerprint,
    pe_order,
    pooled_rows,
)
from lenbench.present.population import NOT_CHOSEN, SeedStats, choose_lr, pooled
from lenbench.tasks.che import TASKS

LEVELS = {"regular": "Regular (R)", "dcf": "Deterministic context-free (DCF)", "cs": "Context-sensitive (CS)"}


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
    done = done.assign(lr=pd.to_numeric(column(done, "lr"), errors="coerce"))
    failed = failed.assign(lr=pd.to_numeric(column(failed, "lr"), errors="coerce"))
    return cell_stats(done, failed, ["task", "pe", "lr"], 100.0)


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
        return len({lr_text(k[2]) for k in self.stats}) > 1

    def cell(self, task: str, pe: str, train: bool = False) -> SeedStats | None:
        """The runs of (task, PE) at its chosen rate (test scores, or in-distribution ones)."""
        lr = self.chosen.get((task, pe))
        return None if lr == NOT_CHOSEN else (self.train if train else self.stats).get((task, pe, lr))

    def every_rate(self, task: str, pe: str) -> SeedStats | None:
        """Every run of (task, PE) over seeds and learning rates (the max over runs)."""
        return pooled([s for (t, p, _), s in self.stats.items() if t == task and p == pe])


def che_views(frame: pd.DataFrame) -> list[CheView]:
    """One :class:`CheView` per CHE protocol fingerprint."""
    che = pooled_rows(frame, "che")
    if che.empty:
        return []
    views = []
    for fp, differs in fingerprints(che):
        rows = of_fingerprint(che, fp)
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
        majority = mean_by(che_frames(rows, "majority_score")[0], "task", 100.0)
        train_majority = mean_by(che_frames(rows, "train_majority_score")[0], "task", 100.0)
        views.append(CheView(fp, differs, rows, stats, train, chosen, tasks, pes, majority, train_majority))
    return views


def level_rank(level: str | None) -> int:
    order = list(LEVELS)
    return order.index(level) if level in order else len(order)

