"""What a table's cells ran under, for its title: precision and attention backends (issue 26).

Every CHE and ppl record stores the precision that actually ran (``precision``: ``fp32`` or ``bf16``
autocast, position terms fp32 either way) and the attention backends of its evaluation
(``backend``, "+"-joined). Different PEs take different exact backends by design (they agree to
float tolerance), so a title names:

- the precision, when any cell ran other than fp32, or the cells differ (with how many cells each);
- the backends of a PE, when that PE's cells ran under different ones (e.g. some cells on a GPU's
  fused kernel, others on ``explicit`` after a failed self-check).

Records written before these fields existed name nothing.
"""

from __future__ import annotations

import pandas as pd

PRECISION_TEXT = {"fp32": "fp32", "bf16": "bf16 autocast (position terms fp32)"}


def _per_cell(rows: pd.DataFrame, column: str) -> pd.Series:
    """One value of ``column`` per cell (its first non-null one); empty without the column."""
    if column not in rows or "cell" not in rows:
        return pd.Series(dtype=object)
    known = rows[rows[column].notna()]
    return known.groupby("cell")[column].first()


def run_conditions(rows: pd.DataFrame) -> str:
    """A title suffix (``""`` or ``"; ..."``) naming precision and backends where they matter (module doc)."""
    parts = []
    precision = _per_cell(rows, "precision")
    counts = precision.value_counts().sort_index()
    if len(counts) == 1 and counts.index[0] != "fp32":
        parts.append(PRECISION_TEXT.get(counts.index[0], str(counts.index[0])))
    elif len(counts) > 1:
        parts.append("precision " + " / ".join(f"{PRECISION_TEXT.get(p, p)} ({n} cells)" for p, n in counts.items()))
    backend = _per_cell(rows, "backend")
    if not backend.empty and "pe" in rows:
        pe_of = rows.dropna(subset=["cell"]).groupby("cell")["pe"].first()
        mixed = []
        for pe, group in backend.groupby(pe_of.reindex(backend.index)):
            names = sorted(set(group))
            if len(names) > 1:
                mixed.append(f"{pe} on " + " / ".join(names))
        if mixed:
            parts.append("attention backends differ: " + "; ".join(mixed))
    return "".join(f"; {p}" for p in parts)
