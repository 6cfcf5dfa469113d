"""The ppl suite's figures: perplexity vs evaluation length per dataset, training length, protocol
and fingerprint, log-log, each PE at its chosen rate (every finished run counts; docs/statistics.md).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lenbench.errors import LenbenchError  # noqa: E402
from lenbench.present.figures import (  # noqa: E402
    COLUMN_WIDTH,
    chosen_rows,
    curve,
    failed_handle,
    legend_below,
    log_axes,
    one_view,
    paper_style,
    save_figure,
)
from lenbench.suites.ppl.views import PplView, ppl_frames, ppl_views  # noqa: E402


def figures(frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
    """Draw and save one figure per ppl table -> [(caption, [png, svg])]."""
    saved = []
    for view in ppl_views(frame):
        where = f", protocol {view.fingerprint}: {view.differs}" if view.differs else ""
        caption = (f"{view.dataset}, trained at {view.train_len}: perplexity vs evaluation length "
                   f"({view.protocol} protocol{where})")
        fig = ppl_figure(frame, view.dataset, view.train_len, view.protocol, view.fingerprint)
        saved.append((caption, save_figure(fig, plots_dir / view.key)))
    return saved


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
    view: PplView = one_view(views, fingerprint, f"{dataset} T={train_len}")
    done, failed = ppl_frames(frame)
    d = done[(done["dataset"] == dataset) & (done["train_len"] == train_len) & (done["protocol"] == view.protocol)]
    if view.fingerprint is not None:
        d = d[d["fingerprint"] == view.fingerprint]
    with paper_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.5))
        ax.axvline(train_len, color="0.4", linestyle=":", linewidth=1.0, label="training length")
        for pe in view.pes:
            rows = chosen_rows(d[d["pe"] == pe], view.chosen.get(pe))
            if len(rows):
                curve(ax, rows, pe)
            else:
                failed_handle(ax, pe)
        log_axes(ax, view.lengths)
        ax.set_xlabel("evaluation length L (tokens)")
        ax.set_ylabel("perplexity (last 256 tokens)")
        ax.set_title(f"{dataset}, trained at {train_len} ({view.protocol} protocol)")
        fig.tight_layout()
        legend_below(fig)
    return fig
