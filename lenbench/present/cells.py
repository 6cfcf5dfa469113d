"""Suite-neutral pieces of a results table: the cell texts (``—``, ``FAILED``, ``DNF``, ``†``), a
table cell's runs over seeds (:class:`~lenbench.present.population.SeedStats`) and their text, the
bold rule, PE order, and the notes every pooled table carries (docs/statistics.md).

A cell never run shows ``—``; a cell whose every seed failed shows ``FAILED``; some failed seeds
add ``k FAILED`` to the statistics of the others; a cell none of whose runs fit shows ``DNF``; a
value worse than the suite's baseline is marked ``†``. Missing values are never shown as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from lenbench.present.population import MIN_PAIRS, NOT_CHOSEN, Bold, SeedStats, bold_by_tests
from lenbench.present.stats import ALPHA, pe_name
from lenbench.present.table import TCell

MISSING = "—"
FAILED = "FAILED"
DNF = "DNF"  # did not fit: no run of the cell reached its fit threshold on the training lengths
BELOW = "†"  # worse than the suite's baseline (e.g. a majority class, a unigram model)
NO_RATE = "rate not chosen"  # several rates, no in-distribution score to choose among them
DOCS = "method and sources: docs/statistics.md"


def pe_order(labels: Sequence[str]) -> list[str]:
    """PE labels in a stable order: registered non-DAPE PEs, then DAPE PEs, then others by name."""
    from lenbench.pe import PES

    names = PES.names()

    def key(label: str) -> tuple[int, int, str]:
        name = label.split(":", 1)[0]
        rank = names.index(name) if name in names else len(names)
        return (1 if pe_name(label).startswith("dape") else 0, rank, label)

    return sorted(dict.fromkeys(labels), key=key)


def blank(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def plain(v: Any) -> Any:
    """A group-by key part as a plain, comparable Python value (NaN -> None, numpy -> int/float)."""
    if blank(v):
        return None
    if isinstance(v, bool | str):
        return v
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, float) else v


def column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows else pd.Series([None] * len(rows), index=rows.index, dtype=object)


def pooled_rows(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    """A suite's rows that tables use: folders marked ``superseded`` (a newer folder of the same table
    cell and seed) left out."""
    rows = frame[frame["suite"] == suite]
    return rows[~column(rows, "superseded").fillna(False).astype(bool)]


def cell_stats(done: pd.DataFrame, failed: pd.DataFrame, keys: list[str], scale: float = 1.0) -> dict[tuple, SeedStats]:
    """``{key tuple: SeedStats}``: each finished run's value (x ``scale``), test-sampling SE, fit flag
    and seed, sorted by seed; failed-cell rows add to ``failed``."""
    out: dict[tuple, SeedStats] = {}
    done = done[done["value"].notna()]
    for key, group in done.groupby(keys, sort=False, dropna=False):
        group = group.sort_values("seed")
        k = tuple(plain(v) for v in (key if isinstance(key, tuple) else (key,)))
        ses = tuple(None if blank(v) else scale * float(v) for v in column(group, "se"))
        fits = tuple(None if blank(v) else bool(v) for v in column(group, "fit"))
        out[k] = SeedStats(tuple(scale * float(v) for v in group["value"]), 0, ses, fits,
                           tuple(int(s) for s in group["seed"]))
    for key, group in failed.groupby(keys, sort=False, dropna=False):
        k = tuple(plain(v) for v in (key if isinstance(key, tuple) else (key,)))
        have = out.get(k, SeedStats(()))
        out[k] = SeedStats(have.values, have.failed + len(group), have.ses, have.fits, have.seeds)
    return out


def fmt_num(v: float, digits: int) -> str:
    """Fixed ``digits`` decimals; exponent form for huge values (diverged perplexities)."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.2e}" if abs(v) >= 1e6 else f"{v:.{digits}f}"


def lr_text(lr: Any) -> str:
    return "" if blank(lr) or lr == NOT_CHOSEN else f"{float(lr):g}"


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


def seed_note(stats: Iterable[SeedStats | None]) -> str:
    ns = sorted({s.n for s in stats if s is not None and s.n})
    return "finished runs (seeds) per cell: " + ("/".join(str(n) for n in ns) if ns else "none")


def fingerprint_note(fingerprint: str | None, differs: str) -> str:
    where = f"protocol fingerprint {fingerprint}" if fingerprint else "protocol fingerprint ?"
    extra = f"; differs from the other protocols of these results in {differs}" if differs else ""
    return (f"{where} (config minus seed, learning rate, PE, task and operational keys; ppl: plus the "
            f"evaluation-window signature): only cells of one fingerprint are pooled{extra}")


def title_suffix(fingerprint: str | None, differs: str) -> str:
    return f" [protocol {fingerprint}: {differs}]" if differs else ""


def mean_by(rows: pd.DataFrame, key: str, scale: float = 1.0, value: str = "value") -> dict[Any, float]:
    """Mean of ``value`` per ``key`` over the rows where it is known (one number per cell row)."""
    if value not in rows:
        return {}
    rows = rows[rows[value].notna()]
    return {plain(k): scale * float(g[value].astype(float).mean()) for k, g in rows.groupby(key, sort=True)}



def fingerprints(rows: pd.DataFrame) -> list[tuple[str | None, str]]:
    """(fingerprint, what differs) of the given rows, sorted; one ``(None, "")`` when unknown."""
    if "fingerprint" not in rows or rows["fingerprint"].isna().all():
        return [(None, "")]
    diffs = column(rows, "fingerprint_diff")
    found = {str(fp): ("" if blank(d) else str(d)) for fp, d in zip(rows["fingerprint"], diffs, strict=True)
             if not blank(fp)}
    return sorted(found.items())


def of_fingerprint(rows: pd.DataFrame, fingerprint: str | None) -> pd.DataFrame:
    return rows if fingerprint is None else rows[rows["fingerprint"] == fingerprint]


