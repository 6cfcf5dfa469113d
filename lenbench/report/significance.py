"""The report's significance table: every suite's comparisons (``suite.comparisons(frame)``) under
the paired tests of :func:`lenbench.present.significance.significance_table` (docs/statistics.md)."""

from __future__ import annotations

import pandas as pd

from lenbench.present.significance import significance_table
from lenbench.present.table import Table
from lenbench.suites import registered


def significance(frame: pd.DataFrame, compare: tuple[str, str] | None = None) -> tuple[Table | None, pd.DataFrame]:
    """Paired tests over seeds for every (DAPE-X, X) pair and ``compare`` (an unmatched ``compare`` is
    a one-line error naming the PEs of ``frame``), suite by suite in registration order."""
    comparisons = [c for suite in registered() for c in suite.comparisons(frame)]
    notes = [suite.comparison_notes for suite in registered() if suite.comparison_notes]
    return significance_table(comparisons, compare, notes, known=frame["pe"].dropna().unique().tolist())
