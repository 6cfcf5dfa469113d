"""The paired significance table over seeds (docs/statistics.md): for every (DAPE-X, X) pair and an
optional ``--compare A,B``, per comparison place a suite names (a CHE task, a ppl evaluation
length, ...), a two-sided paired t-test with Holm's correction over every tested row, and an exact
sign-flip test (:mod:`lenbench.present.stats`).

Generic over the suites' comparisons: each carries its suite, a label, each PE's runs at its
chosen rate with that rate, the metric's direction and a baseline (None: none); a mean worse than
the baseline is marked ``†``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lenbench.errors import LenbenchError
from lenbench.present.cells import BELOW, DOCS, MISSING, below, fmt_num, lr_text, pe_order
from lenbench.present.population import SeedStats
from lenbench.present.stats import ALPHA, PairedTest, dape_pairs, holm, paired_test, resolve_label
from lenbench.present.table import Section, Table, TCell


@dataclass(frozen=True)
class Comparison:
    """One place where the significance table compares PEs over paired seeds (a suite's
    ``comparisons(frame)`` gives them): ``cells`` maps a PE label to ``(SeedStats or None, chosen
    learning rate)``, ``higher`` the metric's direction, ``baseline`` a chance/majority value
    (None: none)."""

    suite: str
    scope: str
    cells: Mapping[str, tuple[SeedStats | None, Any]]
    higher: bool
    baseline: float | None = None


def significance_table(
    comparisons: Sequence[Comparison],
    compare: tuple[str, str] | None = None,
    suite_notes: Sequence[tuple[str, str]] = (),
    known: Sequence[str] | None = None,
) -> tuple[Table | None, pd.DataFrame]:
    """Paired tests over seeds for every (DAPE-X, X) pair and ``compare``, per comparison, suite by
    suite (in the order they first appear). ``suite_notes``: per suite, (what is compared and its
    direction, what ``†`` means there); ``known``: the PE labels an unmatched ``compare`` names
    (None: those compared).

    Each PE is taken at its chosen learning rate (named in ``lr A``/``lr B``), over its population
    (the runs that fit), paired on the seeds both share; Holm over every tested row."""
    results = []
    compare_found = False
    for suite in dict.fromkeys(c.suite for c in comparisons):
        scopes = [c for c in comparisons if c.suite == suite]
        labels = pe_order([pe for s in scopes for pe in s.cells])
        pairs = dape_pairs(labels)
        if compare is not None and labels:
            try:
                pair = (resolve_label(compare[0], labels), resolve_label(compare[1], labels))
            except LenbenchError:
                pair = None
            if pair is not None:
                compare_found = True
                if pair not in pairs:
                    pairs.append(pair)
        for scope in scopes:
            for a, b in pairs:
                (sa, lr_a), (sb, lr_b) = scope.cells.get(a, (None, None)), scope.cells.get(b, (None, None))
                if sa is None or sb is None or not sa.n or not sb.n:
                    continue
                va, vb = sa.population().by_seed(), sb.population().by_seed()
                seeds = sorted(set(va) & set(vb))
                test = paired_test([va[k] for k in seeds], [vb[k] for k in seeds])
                results.append((scope, a, b, lr_a, lr_b, test, seeds))
    if compare is not None and not compare_found:
        labels = sorted(set(known if known is not None else [pe for c in comparisons for pe in c.cells]))
        raise LenbenchError(
            f"--compare {compare[0]},{compare[1]}: both PEs must be in the same suite's results "
            f"(have: {', '.join(labels)})"
        )
    if not results:
        return None, pd.DataFrame()
    body, tidy = [], []
    adjusted = holm([r[5].p_t for r in results])
    for (scope, a, b, lr_a, lr_b, test, seeds), p_holm in zip(results, adjusted, strict=True):
        cells = significance_cells(test, scope.higher, a, b, p_holm)
        for i, mean in ((1, test.mean_a), (2, test.mean_b)):
            if test.n and below(mean, scope.baseline, scope.higher):
                cells[i] = TCell(f"{cells[i].text} {BELOW}")
        body.append([TCell(scope.suite), TCell(scope.scope), TCell(f"{a} vs {b}"), TCell(lr_text(lr_a) or MISSING),
                     TCell(lr_text(lr_b) or MISSING), *cells])
        tidy.append({
            "suite": scope.suite, "scope": scope.scope, "a": a, "b": b, "lr_a": lr_a, "lr_b": lr_b,
            "seeds": ",".join(map(str, seeds)), "n": test.n, "mean_a": test.mean_a, "mean_b": test.mean_b,
            "diff": test.diff, "sd_diff": test.sd, "d_z": test.d_z, "t": test.t, "df": test.df, "p_t": test.p_t,
            "p_holm": p_holm, "p_sign_flip": test.p_sign_flip, "favours": cells[-1].text, "note": test.note,
        })  # fmt: skip
    header = ["suite", "task / eval", "A vs B", "lr A", "lr B", "n", "mean A", "mean B", "Δ (A−B)", "d_z", "t (df)",
              "p (t-test)", "p (Holm)", "p (sign-flip)", "favours"]
    m = sum(p is not None for p in adjusted)
    notes = [
        "each PE at its chosen learning rate (lr A, lr B: chosen on in-distribution data, as in the tables); paired "
        "by seed over the seeds where both runs are in the population (CHE: both fit); n: paired seeds; mean A, "
        "mean B: over those seeds",
        "; ".join(what for what, _ in suite_notes),
        "t-test: two-sided paired t-test (Student t, n−1 df); sign-flip: exact two-sided permutation test "
        "(smallest possible p = 2/2^n); d_z = mean(Δ)/sd(Δ)",
        f"multiple comparisons: Holm's step-down correction of the t-test p over this table's {m} tested rows "
        f"(p (Holm)); favours names a PE only when p (Holm) < {ALPHA:g}, else n.s. (not significant)",
        "no test: n < 2 paired seeds, or a constant Δ (sd 0: the t-test is undefined)",
        f"{BELOW}: " + " or ".join(worse for _, worse in suite_notes),
        DOCS,
    ]
    return Table("significance", "Paired significance over seeds", header, [Section(None, body)], notes,
                 left=5), pd.DataFrame(tidy)


def _fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    return f"{p:.1e}" if 0 < p < 0.001 else f"{p:.3f}"


def _fmt_stat(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return fmt_num(v, digits)


def significance_cells(
    test: PairedTest, higher: bool, a: str, b: str, p_holm: float | None = None, alpha: float = ALPHA
) -> list[TCell]:
    """n, means, difference, d_z, t (df), p (t-test), p (Holm), p (sign-flip) and ``favours``.

    ``favours`` names the better PE only when the test's p (``p_holm`` when given, else the raw
    t-test p) is below ``alpha``; ``n.s.`` otherwise; ``no test`` when no test was possible.
    """
    p_decide = p_holm if p_holm is not None else test.p_t
    if not test.testable:
        favours = "no test"
    elif p_decide is None or not p_decide < alpha:
        favours = "n.s."
    else:
        favours = a if (test.diff > 0) == higher else b
    if test.testable:
        t_text = f"{_fmt_stat(test.t)} ({test.df})"
        p_t, p_h, p_sf = _fmt_p(test.p_t), _fmt_p(p_holm), _fmt_p(test.p_sign_flip)
    else:
        t_text, p_t, p_h, p_sf = MISSING, f"no test ({test.note.split(':')[0]})", "no test", "no test"
    return [
        TCell(str(test.n)), TCell(_fmt_stat(test.mean_a)), TCell(_fmt_stat(test.mean_b)),
        TCell(_fmt_stat(test.diff)), TCell(_fmt_stat(test.d_z)), TCell(t_text), TCell(p_t), TCell(p_h),
        TCell(p_sf), TCell(favours),
    ]  # fmt: skip

