"""What the suites add to the command line: their own commands, their ``lenbench list`` rows, the
default suite of ``lenbench run``, and the services a suite command is handed from above.

The CLI registers :func:`suite_commands` and renders :func:`suite_listings` without naming a suite
(docs/architecture.md). A suite command runs cells and reads finished ones through the
:class:`Services` the CLI puts on the Typer context (``ctx.obj``), so no suite imports the executors
or the report collector above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lenbench.errors import LenbenchError
from lenbench.suites.base import CommandFunction

DEFAULT_SUITE = "che"
"""The suite ``lenbench run`` expands when no ``--suite`` is given."""

Listing = tuple[str, tuple[str, ...], list[tuple[str, ...]]]
"""One ``lenbench list`` table: (title, header, rows of plain text)."""


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


def suite_commands() -> tuple[CommandFunction, ...]:
    """The suites' own commands, in ``--help`` order (Typer functions)."""
    from lenbench.suites.ppl.command import viz
    from lenbench.suites.timing.command import timing

    return (timing, viz)


def suite_listings() -> list[Listing]:
    """The suites' tables for ``lenbench list`` (tasks and the like)."""
    from lenbench.suites.che.listing import listing

    return listing()
