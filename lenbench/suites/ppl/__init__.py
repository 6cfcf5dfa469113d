"""The ppl suite (docs/dape.md §3(d), §4.2): a causal LM per (dataset, PE, training length, seed),
trained at 128 or 512 tokens and evaluated at every length up to 8192; perplexity per length.

The package: :mod:`~lenbench.suites.ppl.config` (profile dataclasses, :func:`expand`),
:mod:`~lenbench.suites.ppl.run` (training, evaluation, the saved model),
:mod:`~lenbench.suites.ppl.protocols` (which target tokens each length scores), ``tables`` and
``plots`` (what the report shows). :data:`SUITE` is what the registry holds. Its cells may train
data-parallel under torchrun (``data_parallel``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenbench.suites.base import Cell, Comparison, Metric, RunContext, SuiteBase, Work
from lenbench.suites.ppl import keys

if TYPE_CHECKING:
    import pandas as pd

    from lenbench.config import SuiteFile
    from lenbench.present.table import Table
    from lenbench.results import CellDir


class PplSuite(SuiteBase):
    """The :class:`lenbench.suites.base.Suite` of perplexity extrapolation."""

    name = "ppl"
    title = "Perplexity extrapolation"
    metrics = (
        Metric("ppl_last256", False, "perplexity of the last min(256, L) tokens (DAPE's protocol)"),
        Metric("ppl_all", False, "perplexity of every predicted token"),
    )
    comparison_notes = ("ppl: ppl_last256, lower is better", "worse than the unigram model (ppl)")
    data_parallel = True
    pooled = keys.POOLED
    table_group = tuple(keys.TABLE_GROUP)
    cell_identity = tuple(keys.CELL_IDENTITY)
    protocol_axes = tuple(keys.PROTOCOL_AXES)

    def expand(self, suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
        from lenbench.suites.ppl.config import expand  # torch (PE registry): only when a grid expands

        return expand(suite_file, profile, overrides)

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        from lenbench.suites.ppl.run import run_cell  # torch: only when a cell runs

        return run_cell(cell, cell_dir, ctx)

    def workload(self, cell: Cell) -> list[Work]:
        from lenbench.suites.ppl.run import workload

        return workload(cell)

    def probe(self, cell: Cell) -> Callable[[Work], None]:
        from lenbench.suites.ppl.run import probe

        return probe(cell)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.cell_keys(config)

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.protocol_extra(config)

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]:
        from lenbench.suites.ppl.tables import suite_tables

        return suite_tables(frame, options)

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        from lenbench.suites.ppl.plots import figures  # matplotlib: only when figures are drawn

        return figures(frame, plots_dir)

    def comparisons(self, frame: pd.DataFrame) -> list[Comparison]:
        from lenbench.suites.ppl.tables import comparisons

        return comparisons(frame)

    def batch_split(self, cell: Cell) -> tuple[int, int | None]:
        """(global batch, micro batch) that a data-parallel run splits over its ranks."""
        spec = cell.spec  # a PplCellConfig
        return spec.train.batch_size, spec.train.micro_batch_size

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        ppl = summary.get("ppl_last256")
        if not isinstance(ppl, dict) or not ppl:
            return None
        longest = max(ppl, key=int)
        return f"ppl_last256 {ppl[longest]:.2f} at L={longest}"

    def normalize(self, frame: pd.DataFrame) -> pd.DataFrame:
        return keys.normalize(frame)


SUITE = PplSuite()
