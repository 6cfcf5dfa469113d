"""What a suite command needs from the layers above the suites, handed down by the CLI.

The CLI puts one :class:`Services` on the Typer context (``ctx.obj``); a suite command (such as
``lenbench timing``) runs cells and reads finished ones through it, so no suite imports the executors
or the report collector above it (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lenbench.errors import LenbenchError


@dataclass(frozen=True)
class Services:
    """The layers above the suites, handed down to suite commands by the CLI.

    - ``run_cells(cells, store, suite, reporter)`` -> outcomes: run cells one after another here
      (:func:`lenbench.execute.inprocess.run_in_process`);
    - ``collect(cell_dirs, where)`` -> a collection with a long ``frame`` of their results
      (:func:`lenbench.report.collect.collect_cells`).
    """

    run_cells: Callable[..., list[Any]]
    collect: Callable[[list[Any], str], Any]


def services(ctx: Any) -> Services:
    """The :class:`Services` on a Typer context (set by the CLI's callback)."""
    found = ctx.find_object(Services)
    if found is None:
        raise LenbenchError("this command runs from the lenbench command line (no services on its context)")
    return found

