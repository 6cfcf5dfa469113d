"""Report figures (matplotlib, Agg), PNG and SVG, sized for a paper column or page.

Every figure draws a PE with :func:`pe_style`, so a PE has the same colour in every figure of
every report: fixed colours for the registered PEs, a stable hash for others; options (e.g.
``dape:hidden=64``) keep the colour of their PE and change the line style.

- CHE, per protocol fingerprint: accuracy vs length per task, each PE at its chosen learning rate
  under the tables' population rule (docs/statistics.md): the mean over the runs that fit with their
  min..max band; runs that did not fit drawn faint and thin, out of the mean and band (a PE none of
  whose runs fit: faint only, labelled DNF); the training range shaded, chance dashed and the
  majority baseline (a constant answer per output position, per length) dash-dotted; and a grid
  overview of every task.
- ppl: perplexity vs evaluation length per dataset, training length, protocol and fingerprint,
  log-log, each PE at its chosen rate (every finished run counts).
- timing: ms vs length per model size (one panel each), log-log, per mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from lenbench.errors import LenbenchError  # noqa: E402
from lenbench.present.population import NOT_CHOSEN, in_population  # noqa: E402
from lenbench.present.stats import pe_name  # noqa: E402
from lenbench.report.tables import (  # noqa: E402
    CheView,
    PplView,
    che_views,
    pe_order,
    ppl_frames,
    ppl_views,
    task_info,
    task_order,
    timing_data,
)
from lenbench.results import slug  # noqa: E402

PE_COLORS = {
    "nope": "#7f7f7f",
    "sinusoidal": "#8c564b",
    "learned": "#bcbd22",
    "rope": "#2ca02c",
    "yarn": "#98df8a",
    "randomized-rope": "#17becf",
    "t5": "#9467bd",
    "alibi": "#ff7f0e",
    "kerple": "#1f77b4",
    "fire": "#e377c2",
    "cope": "#aec7e8",
    "transformer-xl": "#c5b0d5",
    "dape-kerple": "#d62728",
    "dape-alibi": "#8b0000",
    "dape-fire": "#9c0a7a",
    "kerple-power": "#6baed6",
    "rope-pi": "#74c476",
    "rope-ntk": "#006d2c",
    "randomized-sinusoidal": "#c49c94",
    "randomized-learned": "#dbdb8d",
    "randomized-alibi": "#ffbb78",
    "dape-v2-kerple": "#fb6a4a",
    "dape-v2-alibi": "#fd8d3c",
    "dape-v2-fire": "#dd3497",
    "randomized-relative": "#9edae5",
}
EXTRA_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1",
                "#e6550d", "#636363"]  # fmt: skip
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "none",
}
COLUMN_WIDTH, PAGE_WIDTH = 3.4, 7.0  # inches


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def pe_style(label: str) -> dict[str, Any]:
    """Colour, line style and marker of a PE label, the same in every figure (the one mapping)."""
    name = pe_name(label)
    color = PE_COLORS.get(name, EXTRA_COLORS[_digest(name) % len(EXTRA_COLORS)])
    options = label.split(":", 1)[1] if ":" in label else ""
    linestyle = LINESTYLES[_digest(options) % (len(LINESTYLES) - 1) + 1] if options else "-"
    known = list(PE_COLORS)
    marker = MARKERS[(known.index(name) if name in known else _digest(name)) % len(MARKERS)]
    return {"color": color, "linestyle": linestyle, "marker": marker}


@contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(RC):
        yield


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` (200 dpi) and ``stem.svg``; closes the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _curve(ax: Any, rows: pd.DataFrame, label: str, scale: float = 1.0) -> None:
    """The population rule drawn: mean over the runs that fit per x, with their min..max band over
    seeds; runs that did not fit (``fit`` False) faint and thin, out of the mean and band. A PE with
    no fitted run: faint runs only, labelled "(DNF)"."""
    style = pe_style(label)
    fit = rows["fit"] if "fit" in rows else pd.Series([None] * len(rows), index=rows.index, dtype=object)
    counted = rows[[in_population(f) for f in fit]]
    for k, (_, run) in enumerate(rows[~rows.index.isin(counted.index)].groupby("cell", sort=True)):
        run = run.sort_values("eval_len")
        ax.plot(run["eval_len"].astype(float), run["value"] * scale, color=style["color"], linestyle=":",
                linewidth=0.7, alpha=0.35, label=f"{label} (DNF)" if counted.empty and k == 0 else None)
    if counted.empty:
        return
    g = counted.groupby("eval_len")["value"]
    x = np.array(sorted(counted["eval_len"].dropna().unique()), dtype=float)
    mean, lo, hi = (g.mean().reindex(x).to_numpy() * scale, g.min().reindex(x).to_numpy() * scale,
                    g.max().reindex(x).to_numpy() * scale)  # fmt: skip
    ax.plot(x, mean, label=label, **style)
    if counted["seed"].nunique() > 1:
        ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, linewidth=0)


def _failed_handle(ax: Any, label: str) -> None:
    """A legend entry (no data) saying that every seed of this PE failed."""
    ax.plot([], [], label=f"{label}: FAILED", color=pe_style(label)["color"], linestyle="none", marker="x")


def legend_below(fig: Figure, ncol: int = 3) -> None:
    """One legend for every labelled artist of ``fig``, hung below the figure's bottom edge: call it
    after ``tight_layout``; ``bbox_inches='tight'`` at save time takes it in, so it never covers a
    curve or the x labels, however tall the axes or the legend."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(ncol, len(handles)), frameon=False)


def log_axes(ax: Any, xticks: list[int]) -> None:
    """Log-log axes with plain numbers: x ticks at the given lengths, y labels as ``%g``."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if xticks:
        ax.set_xticks(xticks)
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(ax, v)))


def _few_decades(ax: Any) -> bool:
    lo, hi = ax.get_ylim()
    return lo > 0 and hi / lo < 20


def _minor_label(ax: Any, v: float) -> str:
    """Minor log ticks get a label only at 2x and 5x a power of ten (3x too within one decade), and
    only when the axis spans few decades: every minor tick labelled would overlap its neighbours."""
    if not _few_decades(ax) or v <= 0:
        return ""
    lo, hi = ax.get_ylim()
    mantissa = round(v / 10 ** np.floor(np.log10(v) + 1e-9), 6)
    wanted = (2.0, 3.0, 5.0) if hi / lo < 10 else (2.0, 5.0)
    return f"{v:g}" if mantissa in wanted else ""


# --------------------------------------------------------------------------- CHE


def _chosen_rows(rows: pd.DataFrame, lr: Any) -> pd.DataFrame:
    """The rows of one learning rate (all rows when the cells stored none)."""
    if lr is None or lr == NOT_CHOSEN or "lr" not in rows:
        return rows if lr != NOT_CHOSEN else rows.iloc[0:0]
    return rows[pd.to_numeric(rows["lr"], errors="coerce") == float(lr)]


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
    (:func:`_curve`), with chance and the majority baseline."""
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
        chosen = _chosen_rows(acc[acc["pe"] == pe], view.chosen.get((task, pe)))
        if len(chosen):
            _curve(ax, chosen, pe, scale=100.0)
        elif legend:
            _failed_handle(ax, pe)
        else:
            all_failed.append(pe)
    if all_failed:  # in a grid the legend is shared, so say it in the panel
        ax.text(0.02, 0.03, "FAILED: " + ", ".join(all_failed), transform=ax.transAxes, fontsize=6, color="0.2")
    ax.set_xlim(left=0)
    ax.set_ylim(-2, 102)
    ax.set_title(task.replace("_", " "))


def _one_view(views: list[Any], fingerprint: str | None, what: str) -> Any:
    """The view of ``fingerprint`` (None: the only one; several: a one-line error naming them)."""
    if fingerprint is not None:
        found = [v for v in views if v.fingerprint == fingerprint]
        if not found:
            raise LenbenchError(f"{what}: no cells of protocol fingerprint {fingerprint}")
        return found[0]
    if len(views) > 1:
        names = ", ".join(str(v.fingerprint) for v in views)
        raise LenbenchError(f"{what} has results of several protocol fingerprints ({names}); name one")
    if not views:
        raise LenbenchError(f"{what}: no results")
    return views[0]


def che_task_figure(frame: pd.DataFrame, task: str, fingerprint: str | None = None) -> Figure:
    """Accuracy (%) vs length for one CHE task; training range shaded, chance dashed, majority dash-dotted."""
    view = _one_view(che_views(frame), fingerprint, f"CHE {task}")
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
    view = _one_view(che_views(frame), fingerprint, "CHE")
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


# --------------------------------------------------------------------------- ppl


def ppl_figure(frame: pd.DataFrame, dataset: str, train_len: int, protocol: str | None = None,
               fingerprint: str | None = None) -> Figure:
    """Perplexity (last 256 tokens) vs evaluation length, log-log; the training length marked.

    ``protocol``/``fingerprint``: which cells (None: the group's only one, named in the title)."""
    views = [v for v in ppl_views(frame) if (v.dataset, v.train_len) == (dataset, train_len)]
    if protocol is None:
        protocols = sorted({v.protocol for v in views})
        if len(protocols) > 1:
            raise LenbenchError(f"{dataset} T={train_len} has results of several protocols {protocols}; name one")
    else:
        views = [v for v in views if v.protocol == protocol]
    view: PplView = _one_view(views, fingerprint, f"{dataset} T={train_len}")
    done, failed = ppl_frames(frame)
    d = done[(done["dataset"] == dataset) & (done["train_len"] == train_len) & (done["protocol"] == view.protocol)]
    if view.fingerprint is not None:
        d = d[d["fingerprint"] == view.fingerprint]
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.5))
        ax.axvline(train_len, color="0.4", linestyle=":", linewidth=1.0, label="training length")
        for pe in view.pes:
            rows = _chosen_rows(d[d["pe"] == pe], view.chosen.get(pe))
            if len(rows):
                _curve(ax, rows, pe)
            else:
                _failed_handle(ax, pe)
        log_axes(ax, view.lengths)
        ax.set_xlabel("evaluation length L (tokens)")
        ax.set_ylabel("perplexity (last 256 tokens)")
        ax.set_title(f"{dataset}, trained at {train_len} ({view.protocol} protocol)")
        fig.tight_layout()
        legend_below(fig)
    return fig


# --------------------------------------------------------------------------- timing


def timing_figures(frame: pd.DataFrame) -> dict[str, Figure]:
    """Per mode and backend policy (keys ``fwd``, ``train``, ``fwd_paper``, ...): ms vs length, one
    panel per model size, smallest first (full-model times; estimates for slices)."""
    tables, _ = timing_data(frame)
    titles = {"fwd": "forward", "train": "forward + backward"}
    out = {}
    for t in tables:
        with paper_style():
            fig, axes = plt.subplots(1, len(t.sizes), figsize=(min(PAGE_WIDTH, 2.5 * len(t.sizes) + 0.5), 2.4),
                                     squeeze=False)
            for ax, size in zip(axes[0], t.sizes, strict=True):
                for pe in pe_order(t.pes):
                    pts = [(n, t.entries[(pe, size, n)].headline) for n in t.lengths[size]
                           if (pe, size, n) in t.entries and t.entries[(pe, size, n)].headline is not None]
                    if pts:
                        x, y = zip(*pts, strict=True)
                        ax.plot(x, y, label=pe, **pe_style(pe))
                log_axes(ax, t.lengths[size])
                ax.set_title(f"{size}" + (" (estimated from a slice)" if t.sliced(size) else ""))
                ax.set_xlabel("sequence length")
            axes[0, 0].set_ylabel(f"ms, {titles.get(t.mode, t.mode)}, backend {t.policy}")
            fig.tight_layout()
            legend_below(fig, ncol=6 if len(t.sizes) > 1 else 3)
        out[t.mode + ("" if t.policy == "fastest" else f"_{slug(t.policy)}")] = fig
    return out


# --------------------------------------------------------------------------- all


def report_figures(frame: pd.DataFrame, plots_dir: Path) -> dict[str, list[tuple[str, list[Path]]]]:
    """Draw and save every figure the results support -> {suite: [(caption, [png, svg])]}."""
    saved: dict[str, list[tuple[str, list[Path]]]] = {"che": [], "ppl": [], "timing": []}
    views = che_views(frame)
    for view in views:
        suffix = f"_{view.fingerprint}" if len(views) > 1 else ""
        where = f" (protocol {view.fingerprint}: {view.differs})" if view.differs else ""
        tasks = task_order(view.rows["task"].dropna().unique())
        if not tasks:
            continue
        fp = view.fingerprint
        grid = che_grid_figure(frame, tasks, fingerprint=fp)
        saved["che"].append((f"CHE overview: accuracy vs length, every task{where}",
                             save_figure(grid, plots_dir / f"che_overview{suffix}")))
        for task in tasks:
            fig = che_task_figure(frame, task, fp)
            saved["che"].append((f"CHE {task}: accuracy vs length{where}",
                                 save_figure(fig, plots_dir / f"che_{slug(task)}{suffix}")))
    for view in ppl_views(frame):
        where = f", protocol {view.fingerprint}: {view.differs}" if view.differs else ""
        caption = (f"{view.dataset}, trained at {view.train_len}: perplexity vs evaluation length "
                   f"({view.protocol} protocol{where})")
        fig = ppl_figure(frame, view.dataset, view.train_len, view.protocol, view.fingerprint)
        saved["ppl"].append((caption, save_figure(fig, plots_dir / view.key)))
    for mode, fig in timing_figures(frame).items():
        saved["timing"].append((f"timing ({mode.replace('_', ', backend ')}): ms vs sequence length per model size",
                                save_figure(fig, plots_dir / f"timing_{mode}")))
    return saved
