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
from typing import Any

from lenbench.suites.base import Cell, Comparison, Metric, RunContext, Work
from lenbench.suites.che.config import expand, name


class CheSuite:
    """The :class:`lenbench.suites.base.Suite` of the Chomsky-hierarchy tasks."""

    name = name
    title = "CHE: accuracy on longer inputs"
    metrics = (
        Metric("accuracy", True, "accuracy at one test length"),
        Metric("train_accuracy", True, "accuracy at one training length (fresh samples)"),
        Metric("score", True, "mean accuracy over the test lengths"),
        Metric("train_score", True, "mean accuracy over the training lengths; 'fit' when >= the threshold"),
        Metric("majority_score", True, "the majority baseline's score on the same samples"),
        Metric("train_majority_score", True, "the majority baseline on the training lengths"),
    )
    data_parallel = False
    expand = staticmethod(expand)

    def run_cell(self, cell: Cell, cell_dir: Any, ctx: RunContext) -> dict[str, Any]:
        from lenbench.suites.che.run import run_cell

        return run_cell(cell, cell_dir, ctx)

    def workload(self, cell: Cell) -> list[Work]:
        from lenbench.suites.che.run import workload

        return workload(cell)

    def probe(self, cell: Cell) -> Callable[[Work], None]:
        from lenbench.suites.che.run import probe

        return probe(cell)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        from lenbench.suites.che.keys import cell_keys

        return cell_keys(config)

    def tables(self, frame: Any, options: Mapping[str, Any]) -> tuple[list[Any], Any]:
        from lenbench.suites.che.tables import suite_tables

        return suite_tables(frame, options)

    def figures(self, frame: Any, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        from lenbench.suites.che.plots import figures

        return figures(frame, plots_dir)

    def comparisons(self, frame: Any) -> list[Comparison]:
        from lenbench.suites.che.tables import comparisons

        return comparisons(frame)


SUITE = CheSuite()
