"""The ppl suite's tables and comparisons (docs/statistics.md).

Per dataset, training length, evaluation protocol and fingerprint: PEs x evaluation lengths of
``ppl_last256`` (DAPE's layout), each PE at its chosen rate, bold from paired tests per column, with
the unigram baseline as a last row. Cell texts and the bold rule: :mod:`lenbench.present.cells`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lenbench.present.cells import (
    BELOW,
    DOCS,
    FAILED,
    MISSING,
    NO_RATE,
    below,
    bold_note,
    fingerprint_note,
    fmt_num,
    lr_text,
    mark_best,
    runs_text,
    seed_note,
    shown_value,
    title_suffix,
)
from lenbench.present.population import NOT_CHOSEN
from lenbench.present.significance import Comparison
from lenbench.present.table import Section, Table, TCell
from lenbench.suites.ppl.protocols import PROTOCOL_TEXT
from lenbench.suites.ppl.views import ppl_views

# what the significance table compares for this suite, and what its † means here


def suite_tables(frame: pd.DataFrame, options: Mapping[str, Any] | None = None) -> tuple[list[Table], pd.DataFrame]:
    """The suite's report tables and tidy summary (no options)."""
    return ppl_tables(frame)


def comparisons(frame: pd.DataFrame) -> list[Comparison]:
    """One per (table, evaluation length): each PE's runs at its chosen rate, lower is better, the
    unigram model's perplexity on the same targets."""
    out = []
    views = ppl_views(frame)
    several = len({v.protocol for v in views}) > 1
    prints = len({v.fingerprint for v in views}) > 1
    for view in views:
        where = (f" ({view.protocol})" if several else "") + (f" [{view.fingerprint}]" if prints else "")
        for n in view.lengths:
            cells = {pe: (view.cell(pe, n), view.chosen.get(pe)) for pe in view.pes}
            out.append(Comparison("ppl", f"{view.dataset} T={view.train_len} L={n}{where}", cells, False,
                                  view.unigram.get(n)))
    return out


def protocol_note(protocol: str) -> str:
    """What a ppl table's evaluation protocol scored (unknown names are shown as they are)."""
    return PROTOCOL_TEXT.get(protocol, f"{protocol} protocol")


def ppl_tables(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[list[Table], pd.DataFrame]:
    """Per (dataset, training length, protocol, fingerprint): PEs x evaluation lengths, mean ± seed std,
    each PE at its chosen rate, bold from paired tests per column, the unigram baseline last."""
    tables, summary = [], []
    for view in ppl_views(frame, metric):
        title = (f"{view.dataset}, trained at {view.train_len}: perplexity (last 256 tokens) by evaluation length, "
                 f"{view.protocol} protocol{view.conditions}" + title_suffix(view.fingerprint, view.differs))
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
                    text += f" @{lr_text(view.chosen[pe])}"
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
            fingerprint_note(view.fingerprint, view.differs),
            seed_note(s for per in grid.values() for s in per),
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
