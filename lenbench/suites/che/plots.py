"""The CHE suite's figures (docs/statistics.md): per protocol fingerprint, accuracy vs length per
task, each PE at its chosen learning rate under the tables' population rule: the mean over the runs
that fit with their min..max band; runs that did not fit drawn faint and thin, out of the mean and
band (a PE none of whose runs fit: faint only, labelled DNF); the training range shaded, chance
dashed and the majority baseline (a constant answer per output position, per length) dash-dotted;
and a grid overview of every task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lenbench.present.cells import pe_order  # noqa: E402
from lenbench.present.figures import (  # noqa: E402
    COLUMN_WIDTH,
    PAGE_WIDTH,
    chosen_rows,
    curve,
    failed_handle,
    legend_below,
    one_view,
    paper_style,
    save_figure,
)
from lenbench.results import slug  # noqa: E402
from lenbench.suites.che.views import CheView, che_views, task_info, task_order  # noqa: E402


def figures(frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
    """Draw and save the suite's figures -> [(caption, [png, svg])]: per fingerprint the overview
    grid, then one figure per task."""
    saved = []
    views = che_views(frame)
    for view in views:
        suffix = f"_{view.fingerprint}" if len(views) > 1 else ""
        where = f" (protocol {view.fingerprint}: {view.differs})" if view.differs else ""
        tasks = task_order(view.rows["task"].dropna().unique())
        if not tasks:
            continue
        fp = view.fingerprint
        grid = che_grid_figure(frame, tasks, fingerprint=fp)
        saved.append((f"CHE overview: accuracy vs length, every task{where}",
                      save_figure(grid, plots_dir / f"che_overview{suffix}")))
        for task in tasks:
            fig = che_task_figure(frame, task, fp)
            saved.append((f"CHE {task}: accuracy vs length{where}",
                          save_figure(fig, plots_dir / f"che_{slug(task)}{suffix}")))
    return saved


def _majority_line(ax: Any, acc: pd.DataFrame) -> None:
    """The majority baseline per length (mean over cells of each record's ``majority``), in %."""
    if "majority" not in acc:
        return
    per = acc[acc["majority"].notna()].groupby("eval_len")["majority"].mean()
    if len(per):
        ax.plot(per.index.astype(float), 100.0 * per.to_numpy(dtype=float), color="0.25", linestyle="-.",
                linewidth=0.8, label="majority")


def _che_panel(ax: Any, view: CheView, task: str, legend: bool) -> None:
    """Accuracy vs length over the training and test lengths, one curve per PE at its chosen rate
    (:func:`curve`), with chance and the majority baseline."""
    rows = view.rows[view.rows["task"] == task]
    acc = rows[rows["metric"].isin(["accuracy", "train_accuracy"]) & (rows["status"] == "done")]
    failed = rows[rows["status"] == "failed"]
    lo, hi = rows["train_min_len"].dropna(), rows["train_len"].dropna()
    if len(hi):
        ax.axvspan(int(lo.min()) if len(lo) else 0, int(hi.max()), color="0.85", alpha=0.6, lw=0,
                   label="training range")
    info = task_info(task)
    if info.chance is not None:
        ax.axhline(100 * info.chance, color="0.4", linestyle="--", linewidth=0.8, label="chance")
    _majority_line(ax, acc)
    all_failed = []
    for pe in pe_order([*acc["pe"].unique(), *failed["pe"].unique()]):
        chosen = chosen_rows(acc[acc["pe"] == pe], view.chosen.get((task, pe)))
        if len(chosen):
            curve(ax, chosen, pe, scale=100.0)
        elif legend:
            failed_handle(ax, pe)
        else:
            all_failed.append(pe)
    if all_failed:  # in a grid the legend is shared, so say it in the panel
        ax.text(0.02, 0.03, "FAILED: " + ", ".join(all_failed), transform=ax.transAxes, fontsize=6, color="0.2")
    ax.set_xlim(left=0)
    ax.set_ylim(-2, 102)
    ax.set_title(task.replace("_", " "))


def che_task_figure(frame: pd.DataFrame, task: str, fingerprint: str | None = None) -> Figure:
    """Accuracy (%) vs length for one CHE task; training range shaded, chance dashed, majority dash-dotted."""
    view = one_view(che_views(frame), fingerprint, f"CHE {task}")
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.5))
        _che_panel(ax, view, task, legend=True)
        ax.set_xlabel("length N (training range shaded)")
        ax.set_ylabel("accuracy (%)")
        fig.tight_layout()
        legend_below(fig)
    return fig


def che_grid_figure(frame: pd.DataFrame, tasks: list[str], cols: int = 5, fingerprint: str | None = None) -> Figure:
    """Every CHE task in a grid, one shared legend below."""
    view = one_view(che_views(frame), fingerprint, "CHE")
    rows = -(-len(tasks) // cols)
    cols = min(cols, len(tasks))
    with paper_style():
        fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 1.55 * rows + 0.6), sharey=True, squeeze=False)
        for ax, task in zip(axes.flat, tasks, strict=False):
            _che_panel(ax, view, task, legend=False)
        for ax in list(axes.flat)[len(tasks):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("accuracy (%)")
        for ax in axes[-1, :]:
            ax.set_xlabel("length N (training range shaded)")
        fig.tight_layout()
        legend_below(fig, ncol=6)
    return fig
