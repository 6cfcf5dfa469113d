"""The CHE suite (docs/che.md): an encoder per (task, PE, learning rate, seed) trained at lengths
1..40 and tested at every longer length; accuracy per length, the cell's score their mean.

The package: :mod:`~lenbench.suites.che.config` (profile dataclasses, :func:`expand`),
:mod:`~lenbench.suites.che.run` (training and evaluation of one cell),
:mod:`~lenbench.suites.che.stats` (standard errors, majority baseline), ``tables`` and ``plots``
(what the report shows). :data:`SUITE` is what the registry holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenbench.suites.base import Cell, Comparison, Listing, Metric, RunContext, SuiteBase, Work
from lenbench.suites.che import keys

if TYPE_CHECKING:
    import pandas as pd

    from lenbench.config import SuiteFile
    from lenbench.present.table import Table
    from lenbench.results import CellDir


class CheSuite(SuiteBase):
    """The :class:`lenbench.suites.base.Suite` of the Chomsky-hierarchy tasks."""

    name = "che"
    title = "CHE: accuracy on longer inputs"
    metrics = (
        Metric("accuracy", True, "accuracy at one test length"),
        Metric("train_accuracy", True, "accuracy at one training length (fresh samples)"),
        Metric("score", True, "mean accuracy over the test lengths"),
        Metric("train_score", True, "mean accuracy over the training lengths; 'fit' when >= the threshold"),
        Metric("majority_score", True, "the majority baseline's score on the same samples"),
        Metric("train_majority_score", True, "the majority baseline on the training lengths"),
    )
    comparison_notes = ("CHE: score in %, higher is better", "below the majority baseline (CHE)")
    pooled = keys.POOLED
    table_group = tuple(keys.TABLE_GROUP)
    cell_identity = tuple(keys.CELL_IDENTITY)
    protocol_axes = tuple(keys.PROTOCOL_AXES)

    def expand(self, suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
        from lenbench.suites.che.config import expand  # torch (PE registry): only when a grid expands

        return expand(suite_file, profile, overrides)

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        from lenbench.suites.che.run import run_cell  # torch: only when a cell runs

        return run_cell(cell, cell_dir, ctx)

    def workload(self, cell: Cell) -> list[Work]:
        from lenbench.suites.che.run import workload

        return workload(cell)

    def probe(self, cell: Cell) -> Callable[[Work], None]:
        from lenbench.suites.che.run import probe

        return probe(cell)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.cell_keys(config)

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.protocol_extra(config)

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]:
        from lenbench.suites.che.tables import suite_tables

        return suite_tables(frame, options)

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        from lenbench.suites.che.plots import figures  # matplotlib: only when figures are drawn

        return figures(frame, plots_dir)

    def comparisons(self, frame: pd.DataFrame) -> list[Comparison]:
        from lenbench.suites.che.tables import comparisons

        return comparisons(frame)

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        score = summary.get("score")
        return f"score {100 * score:.1f}%" if isinstance(score, int | float) else None

    def listing(self) -> list[Listing]:
        from lenbench.suites.che.listing import listing

        return listing()


SUITE = CheSuite()
