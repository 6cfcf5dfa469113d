"""The timing suite's figures: ms vs length per model size (one panel each), log-log, per mode and
backend policy (docs/timing.md).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lenbench.present.cells import pe_order  # noqa: E402
from lenbench.present.figures import PAGE_WIDTH, legend_below, log_axes, paper_style, pe_style, save_figure  # noqa: E402
from lenbench.results import slug  # noqa: E402
from lenbench.suites.timing.tables import timing_data  # noqa: E402


def figures(frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
    """Draw and save one figure per mode and backend policy -> [(caption, [png, svg])]."""
    return [(f"timing ({mode.replace('_', ', backend ')}): ms vs sequence length per model size",
             save_figure(fig, plots_dir / f"timing_{mode}")) for mode, fig in timing_figures(frame).items()]


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
