"""Paired significance tests over seeds: DAPE-X against X, and any ``--compare A,B``.

Samples are paired by seed (the same seed trained with A and with B), per CHE task (the cell's
score) or per evaluation length (ppl_last256). For the differences ``d = a - b`` of n pairs:

- **paired t-test** (two-sided): ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of
  freedom, ``sd`` the sample standard deviation (ddof 1); ``p = I_{df/(df+t^2)}(df/2, 1/2)``, the
  regularized incomplete beta function, computed here by its continued fraction (no SciPy).
  When all differences are equal (sd = 0, a constant shift or identical samples) there is no
  test: t's limit (+-inf, p = 0) would claim certainty that n seeds cannot give.
- **exact sign-flip permutation test** (two-sided, distribution-free): the share of the ``2^n``
  sign assignments of ``d`` whose ``|mean|`` reaches the observed one. Its smallest possible p is
  ``2 / 2^n`` (0.25 for three seeds), so with few seeds only the t-test can reach 0.05, at the
  price of assuming normal differences.
- **effect size**: the mean difference and Cohen's ``d_z = mean(d) / sd(d)``.

With fewer than two pairs, or a constant difference, no test is done, and the result says so
instead of a number (``t``, ``p_t``, ``p_sign_flip`` are None).

**Multiple comparisons**: :func:`holm` adjusts the t-test p-values of one table's rows (Holm 1979,
step-down Bonferroni: ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))`` over the m testable
rows sorted by p); a row names a winner only when its adjusted p is below :data:`ALPHA`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lenbench.errors import LenbenchError

EXACT_SIGN_FLIP_MAX_N = 16  # 65536 sign assignments; beyond, a seeded Monte Carlo estimate
MONTE_CARLO_DRAWS = 100_000
ALPHA = 0.05  # a test names a winner only below this (Holm-adjusted) p


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def sign_flip_p(d: Sequence[float]) -> float:
    """Two-sided p of the sign-flip permutation test of mean(d) = 0 (exact up to 16 pairs)."""
    diffs = np.asarray(d, dtype=float)
    n = len(diffs)
    observed = abs(diffs.mean())
    tol = 1e-12 * max(1.0, float(np.abs(diffs).max()))
    if n <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(MONTE_CARLO_DRAWS, n))
    means = np.abs(signs @ diffs) / n
    return float(np.mean(means >= observed - tol))


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of A and B over n seeds (``diff`` = A - B)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    sd: float | None  # sample sd of the differences
    d_z: float | None
    t: float | None
    df: int | None
    p_t: float | None
    p_sign_flip: float | None
    note: str = ""

    @property
    def testable(self) -> bool:
        return self.p_t is not None


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test and sign-flip test of ``a`` against ``b`` (same length, paired by position)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(x)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, None, None, None, None, None, None, "no paired seeds")
    d = x - y
    diff = float(d.mean())
    if n < 2:
        return PairedTest(
            n, float(x.mean()), float(y.mean()), diff, None, None, None, None, None, None,
            "n = 1 seed: no test possible (needs >= 2 paired seeds)",
        )  # fmt: skip
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        note = "identical samples: no test" if diff == 0 else "constant difference (sd = 0): no test"
        return PairedTest(n, float(x.mean()), float(y.mean()), diff, 0.0, None, None, None, None, None, note)
    t = diff / (sd / math.sqrt(n))
    p, d_z, note = t_two_sided_p(t, n - 1), diff / sd, ""
    return PairedTest(n, float(x.mean()), float(y.mean()), diff, sd, d_z, t, n - 1, p, sign_flip_p(d), note)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (Holm 1979), in input order; None (no test) stays None and is not
    counted in m. ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` for p sorted ascending."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def t_quantile(p_two_sided: float, df: float) -> float:
    """``t`` with ``P(|T| >= t) = p_two_sided`` for Student's t with ``df`` degrees of freedom
    (bisection on :func:`t_two_sided_p`; e.g. 12.706 for p = 0.05, df = 1)."""
    if not 0.0 < p_two_sided < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p_two_sided}, df={df}")
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > p_two_sided:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > p_two_sided else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- which pairs


def pe_name(label: str) -> str:
    """The registry name of a PE label (options dropped), an alias as the name it stands for
    (``dape`` -> ``dape-kerple``, :func:`lenbench.pe.registry.canonical_pe_name`)."""
    from lenbench.pe.registry import canonical_pe_name

    return canonical_pe_name(label.split(":", 1)[0].strip().lower())


def dape_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Every (A, B) pair among ``labels`` where B is the PE that A's class names as its baseline
    (DAPE-X and X, :func:`lenbench.pe.registry.pe_baseline`)."""
    from lenbench.pe.registry import pe_baseline

    pairs = []
    for a in labels:
        base = pe_baseline(a)
        if base is not None:
            pairs += [(a, b) for b in labels if b != a and pe_name(b) == base]
    return pairs


def resolve_label(wanted: str, labels: Sequence[str]) -> str:
    """A ``--compare`` name -> the PE label in the results (exact, else by registry name)."""
    if wanted in labels:
        return wanted
    matches = [lab for lab in labels if pe_name(lab) == pe_name(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LenbenchError(f"--compare {wanted!r} is ambiguous: {', '.join(matches)}; write the full label")
    raise LenbenchError(f"--compare: PE {wanted!r} is not in the results (have: {', '.join(labels)})")


def parse_compare(text: str | None) -> tuple[str, str] | None:
    """``A,B`` (PE specs as ``--pe`` writes them, options allowed) -> (A, B); None stays None."""
    if text is None:
        return None
    from lenbench.pe.registry import parse_pe_list

    specs = parse_pe_list(text)
    if len(specs) != 2:
        raise LenbenchError(f"--compare takes two PEs written A,B; got {text!r}")
    return str(specs[0]), str(specs[1])
