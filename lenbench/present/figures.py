"""Figure style and drawing shared by every suite (matplotlib, Agg), PNG and SVG, sized for a paper
column or page.

Every figure draws a PE with :func:`pe_style`, so a PE has the same colour in every figure of
every report: fixed colours for the registered PEs, a stable hash for others; options (e.g.
``dape:hidden=64``) keep the colour of their PE and change the line style. :func:`curve` draws the
population rule of docs/statistics.md (the mean over the runs that fit, with their band).
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


def curve(ax: Any, rows: pd.DataFrame, label: str, scale: float = 1.0) -> None:
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


def failed_handle(ax: Any, label: str) -> None:
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


def chosen_rows(rows: pd.DataFrame, lr: Any) -> pd.DataFrame:
    """The rows of one learning rate (all rows when the cells stored none)."""
    if lr is None or lr == NOT_CHOSEN or "lr" not in rows:
        return rows if lr != NOT_CHOSEN else rows.iloc[0:0]
    return rows[pd.to_numeric(rows["lr"], errors="coerce") == float(lr)]


def one_view(views: list[Any], fingerprint: str | None, what: str) -> Any:
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
