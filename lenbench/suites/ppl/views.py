"""The ppl cells of a long table as views: one per (dataset, training length, evaluation protocol,
protocol fingerprint), each PE with its runs per evaluation length and its learning rate chosen on
in-distribution data (docs/statistics.md). The tables and figures of the suite read these views."""

from __future__ import annotations

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
    plain,
    pooled_rows,
)
from lenbench.present.conditions import run_conditions
from lenbench.present.population import NOT_CHOSEN, SeedStats, choose_lr
from lenbench.results import slug
from lenbench.suites.ppl.keys import LEGACY_PROTOCOL


def ppl_frames(frame: pd.DataFrame, metric: str = "ppl_last256") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(done rows of ``metric``, failed-cell rows) of the ppl suite, superseded folders left out."""
    ppl = pooled_rows(frame, "ppl")
    protocol = ppl["protocol"] if "protocol" in ppl else pd.Series(None, index=ppl.index, dtype=object)
    ppl = ppl.assign(protocol=protocol.astype(object).where(protocol.notna(), LEGACY_PROTOCOL))  # as keys.normalize
    ppl = ppl.assign(lr=pd.to_numeric(column(ppl, "lr"), errors="coerce"))
    return ppl[(ppl["status"] == "done") & (ppl["metric"] == metric)], ppl[ppl["status"] == "failed"]


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
        return len({lr_text(k[1]) for k in self.stats} | {lr_text(k[1]) for k in self.failed}) > 1

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
            dd, ff = of_fingerprint(d, fp), of_fingerprint(f, fp)
            stats = cell_stats(dd, dd.iloc[0:0], ["pe", "lr", "eval_len"])
            n_failed = {tuple(plain(v) for v in k): len(g) for k, g in ff.groupby(["pe", "lr"], dropna=False)}
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
            unigram = mean_by(dd, "eval_len", value="unigram_ppl")
            views.append(PplView(dataset, train_len, protocol, fp, differs,
                                 key + (f"_{fp}" if len(prints) > 1 else ""), stats, n_failed, chosen, lengths, pes,
                                 {int(k): v for k, v in unigram.items()}, run_conditions(dd)))
    return views
