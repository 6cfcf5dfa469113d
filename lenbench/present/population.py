"""The rules every CHE and ppl table cell follows (docs/statistics.md): one population, the learning
rate chosen on in-distribution data, bold from paired tests.

- **Population** (:func:`in_population`): the runs that fit their training lengths (CHE's ``fit``
  flag: in-distribution accuracy >= ``eval.fit_threshold``); a run without the flag (ppl, or a cell
  that predates it) counts. Means, bold, plots, tests and the rate choice all use it; the mean over
  every run is shown apart, labelled as such.
- **Learning rate** (:func:`choose_lr`): per (table, PE), the rate whose runs fit most often, then
  with the best population mean of the in-distribution score (CHE ``train_score``; ppl: perplexity at
  the training length), compared at display precision, then the smaller rate. Never a test length.
- **Bold** (:func:`bold_by_tests`): the best population mean and every mean that a two-sided paired
  t-test against the best (over the seeds both populations share, each PE at its chosen rate),
  Holm-corrected over the row's comparisons (Holm 1979), does not find worse at p < ``ALPHA``.
  Fewer than :data:`MIN_PAIRS` paired seeds: that value is not bold (best only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lenbench.present.stats import ALPHA, holm, paired_test

MIN_PAIRS = 3  # paired seeds below which only the best is bold ("n < 3: best only")
NOT_CHOSEN = "not chosen"  # several rates and no in-distribution score to choose among them


def _blank(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def in_population(fit: Any) -> bool:
    """A run counts unless it is flagged as not fitting its training lengths (unknown: it counts)."""
    return _blank(fit) or bool(fit)


@dataclass(frozen=True)
class SeedStats:
    """The finished runs of one table cell (one per seed) and how many failed.

    ``fits``: each run's fit flag (None: unknown, counts as fitted; empty: no flag, as in ppl);
    ``ses``: each run's test-sampling SE (model fixed); ``seeds``: each run's seed (for pairing).
    """

    values: tuple[float, ...]
    failed: int = 0
    ses: tuple[float | None, ...] = ()
    fits: tuple[bool | None, ...] = ()
    seeds: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof 1); None for a single run."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def max(self) -> float:
        return float(np.max(self.values))

    @property
    def min(self) -> float:
        return float(np.min(self.values))

    @property
    def se(self) -> float | None:
        """Test-sampling SE (model fixed) of a single run's value; None for several runs or unknown."""
        if self.n != 1 or not self.ses or self.ses[0] is None or not math.isfinite(self.ses[0]):
            return None
        return float(self.ses[0])

    @property
    def flagged(self) -> bool:
        """Whether the runs carry fit flags at all (CHE), so ``k/n fit`` means something."""
        return any(f is not None for f in self.fits)

    @property
    def unfit(self) -> int:
        """Runs flagged "did not fit" (their in-distribution score stayed below the threshold)."""
        return sum(1 for f in self.fits if f is False)

    @property
    def k(self) -> int:
        """Runs in the population (those that fit, or carry no flag)."""
        return self.n - self.unfit

    @property
    def all_unfit(self) -> bool:
        return self.n > 0 and self.k == 0

    def _pick(self, keep: Sequence[int]) -> SeedStats:
        def part(t: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(t[i] for i in keep) if len(t) == self.n else ()

        return SeedStats(tuple(self.values[i] for i in keep), self.failed, part(self.ses), part(self.fits),
                         part(self.seeds))

    def population(self) -> SeedStats:
        """The runs that count (:func:`in_population`), with this cell's failed count."""
        return self._pick([i for i in range(self.n) if i >= len(self.fits) or in_population(self.fits[i])])

    def by_seed(self) -> dict[int, float]:
        """``{seed: value}`` of these runs (pairing key of the paired tests)."""
        return dict(zip(self.seeds, self.values, strict=True)) if len(self.seeds) == self.n else {}

    def argmax(self) -> int:
        return int(np.argmax(self.values))


def pooled(cells: Sequence[SeedStats]) -> SeedStats | None:
    """Every run of several cells together (e.g. all rates of one PE, for the max over runs)."""
    if not cells:
        return None

    def join(attr: str) -> tuple[Any, ...]:
        parts = [getattr(s, attr) for s in cells]
        complete = all(len(p) == s.n for p, s in zip(parts, cells, strict=True))
        return tuple(v for p in parts for v in p) if complete else ()

    return SeedStats(join("values"), sum(s.failed for s in cells), join("ses"), join("fits"), join("seeds"))


def choose_lr(options: Mapping[Any, tuple[SeedStats | None, SeedStats | None]], higher: bool, digits: int) -> Any:
    """The learning rate of one (table, PE) from ``{lr: (test-score runs, in-distribution runs)}``.

    Ranked by the share of runs that fit, then the population mean of the in-distribution score
    (``higher`` is better or not) rounded to ``digits``, then the smaller rate. One rate: that
    rate. Several and no in-distribution score at all: :data:`NOT_CHOSEN` (never a test score).
    """
    if not options:
        return None
    if len(options) == 1:
        return next(iter(options))
    if not any(ind is not None and ind.population().n for _, ind in options.values()):
        return NOT_CHOSEN
    sign = 1.0 if higher else -1.0

    def rank(lr: Any) -> tuple[float, float, float]:
        score, ind = options[lr]
        share = score.k / score.n if score is not None and score.n else 0.0
        pop = ind.population() if ind is not None else None
        mean = sign * round(pop.mean, digits) if pop is not None and pop.n else -math.inf
        return (share, mean, -float(lr) if not _blank(lr) else -math.inf)

    return max(options, key=rank)


@dataclass(frozen=True)
class Bold:
    """Which values of a row or column are bold, and whether the n < 3 rule decided any of them."""

    flags: list[bool]
    few_pairs: bool = False


def bold_by_tests(cells: Sequence[SeedStats | None], higher: bool, digits: int) -> Bold:
    """Bold the best population mean and every mean the paired, Holm-corrected test cannot call worse.

    Each candidate is compared with the best over the seeds both populations share (paired t-test,
    :func:`lenbench.present.stats.paired_test`), the row's p-values Holm-adjusted together. A
    candidate is not bold when it has fewer than :data:`MIN_PAIRS` shared seeds (best only), or when
    ``p_holm < ALPHA`` and it is on the worse side; a zero-variance difference (no t-test) counts as
    separated unless the values are identical. Values equal to the best at display precision are
    bold (ties). Rows with fewer than two candidates (population n >= 1) have no bold; a cell
    whose population is empty (DNF) is never bold.
    """
    pops = [s.population() if s is not None else None for s in cells]
    live = [i for i, p in enumerate(pops) if p is not None and p.n]
    flags = [False] * len(cells)
    if len(live) < 2:
        return Bold(flags)
    sign = 1.0 if higher else -1.0
    best = max(live, key=lambda i: sign * pops[i].mean)  # type: ignore[union-attr]
    top = round(pops[best].mean, digits)  # type: ignore[union-attr]
    few = False
    tests: list[tuple[int, float, float | None]] = []  # (index, diff = candidate - best, p)
    for i in live:
        if round(pops[i].mean, digits) == top:  # type: ignore[union-attr]
            flags[i] = True
            continue
        a, b = pops[i].by_seed(), pops[best].by_seed()  # type: ignore[union-attr]
        shared = sorted(set(a) & set(b))
        if len(shared) < MIN_PAIRS:
            few = True
            continue
        test = paired_test([a[s] for s in shared], [b[s] for s in shared])
        tests.append((i, test.diff, test.p_t))
    adjusted = holm([p for *_, p in tests])
    for (i, diff, p), p_holm in zip(tests, adjusted, strict=True):
        worse = sign * diff < 0
        if p is None:  # zero-variance difference: identical (tie) or a constant, separated shift
            flags[i] = diff == 0 or not worse
        else:
            flags[i] = not (worse and p_holm is not None and p_holm < ALPHA)
    return Bold(flags, few)
