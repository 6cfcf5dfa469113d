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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenbench.suites.base import Cell, Metric, RunContext, SuiteBase
from lenbench.suites.timing import keys

if TYPE_CHECKING:
    import pandas as pd

    from lenbench.config import SuiteFile
    from lenbench.present.table import Table
    from lenbench.results import CellDir


class TimingSuite(SuiteBase):
    """The :class:`lenbench.suites.base.Suite` of time cost."""

    name = "timing"
    title = "Time cost"
    metrics = (
        Metric("ms_fwd", False, "milliseconds per forward at batch 1"),
        Metric("ms_train", False, "milliseconds per forward + backward at batch 1"),
    )
    pooled = keys.POOLED
    table_group = tuple(keys.TABLE_GROUP)
    cell_identity = tuple(keys.CELL_IDENTITY)
    protocol_axes = tuple(keys.PROTOCOL_AXES)

    def expand(self, suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
        from lenbench.suites.timing.config import expand  # torch (PE registry): only when a grid expands

        return expand(suite_file, profile, overrides)

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        from lenbench.suites.timing.run import run_cell  # torch: only when a cell runs

        return run_cell(cell, cell_dir, ctx)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.cell_keys(config)

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return keys.protocol_extra(config)

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]:
        from lenbench.suites.timing.tables import suite_tables

        return suite_tables(frame, options)

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        from lenbench.suites.timing.plots import figures  # matplotlib: only when figures are drawn

        return figures(frame, plots_dir)

    def warnings(self, frame: pd.DataFrame) -> list[str]:
        from lenbench.suites.timing.tables import warnings

        return warnings(frame)

    @property
    def commands(self) -> tuple[Callable[..., None], ...]:  # type: ignore[override]
        """``lenbench timing`` (DAPE Table 1's layout, with progress and an estimate)."""
        from lenbench.suites.timing.command import timing

        return (timing,)


SUITE = TimingSuite()
