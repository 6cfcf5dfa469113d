"""The timing suite (docs/timing.md): milliseconds per forward and per training step of each PE at
batch 1 for the 350M/2.7B/6.7B shapes (DAPE Table 1), each group of PEs timed in interleaved rounds
with paired ratios to a reference PE and an identical-work control as the noise floor.

The package: :mod:`~lenbench.suites.timing.config` (profile, :func:`expand` into groups),
:mod:`~lenbench.suites.timing.run` (one group: records), :mod:`~lenbench.suites.timing.measure`
(the timed modules and rounds), :mod:`~lenbench.suites.timing.cost` (time estimates),
:mod:`~lenbench.suites.timing.ratios` (paired ratios), ``tables`` and ``plots``. :data:`SUITE` is
what the registry holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lenbench.suites.base import Cell, Comparison, Metric, RunContext
from lenbench.suites.timing.config import expand, name


class TimingSuite:
    """The :class:`lenbench.suites.base.Suite` of time cost."""

    name = name
    title = "Time cost"
    metrics = (
        Metric("ms_fwd", False, "milliseconds per forward at batch 1"),
        Metric("ms_train", False, "milliseconds per forward + backward at batch 1"),
    )
    data_parallel = False
    expand = staticmethod(expand)

    def run_cell(self, cell: Cell, cell_dir: Any, ctx: RunContext) -> dict[str, Any]:
        from lenbench.suites.timing.run import run_cell

        return run_cell(cell, cell_dir, ctx)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        from lenbench.suites.timing.keys import cell_keys

        return cell_keys(config)

    def tables(self, frame: Any, options: Mapping[str, Any]) -> tuple[list[Any], Any]:
        from lenbench.suites.timing.tables import suite_tables

        return suite_tables(frame, options)

    def figures(self, frame: Any, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        from lenbench.suites.timing.plots import figures

        return figures(frame, plots_dir)

    def comparisons(self, frame: Any) -> list[Comparison]:
        return []  # a ratio table, not a comparison over seeds


SUITE = TimingSuite()
