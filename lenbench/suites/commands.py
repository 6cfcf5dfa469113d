"""What the suites add to the command line: their own commands, their ``lenbench list`` rows, the
default suite of ``lenbench run``, and the services a suite command is handed from above.

The CLI registers :func:`suite_commands` and renders :func:`suite_listings` without naming a suite
(docs/architecture.md); a suite command gets what it needs from above the suites through
:class:`lenbench.suites.services.Services`.
"""

from __future__ import annotations

from lenbench.suites.base import CommandFunction

DEFAULT_SUITE = "che"
"""The suite ``lenbench run`` expands when no ``--suite`` is given."""

Listing = tuple[str, tuple[str, ...], list[tuple[str, ...]]]
"""One ``lenbench list`` table: (title, header, rows of plain text)."""


def suite_commands() -> tuple[CommandFunction, ...]:
    """The suites' own commands, in ``--help`` order (Typer functions)."""
    from lenbench.suites.ppl.command import viz
    from lenbench.suites.timing.command import timing

    return (timing, viz)


def suite_listings() -> list[Listing]:
    """The suites' tables for ``lenbench list`` (tasks and the like)."""
    from lenbench.suites.che.listing import listing

    return listing()
