"""The terminal: the command line's two consoles and its one table renderer.

Every command prints tables through :func:`print_table`, the same :class:`~lenbench.present.table.Table`
that ``lenbench report`` writes as Markdown or LaTeX, so the terminal and the report cannot disagree.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lenbench.present.table import Table

out = Console()
"""Results: tables and summaries (stdout)."""
err = Console(stderr=True)
"""Progress, notes and warnings (stderr)."""


def print_table(table: Table, console: Console | None = None) -> None:
    """Print a report table with its notes, never squeezed or cut: at its full width when output is
    not a terminal; in a terminal narrower than the table, in column parts that each fit, the label
    columns repeated (:func:`lenbench.present.render.fit_columns`)."""
    from rich.measure import Measurement

    from lenbench.present.render import fit_columns, rich_notes, rich_table

    console = out if console is None else console

    def width(t: Any) -> int:
        return Measurement.get(console, console.options.update_width(100_000), rich_table(t)).maximum

    if not console.is_terminal:
        Console(width=max(console.width, width(table))).print(rich_notes(table))
        return
    for part in fit_columns(table, console.width, width):
        console.print(rich_notes(part))


def print_rows(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], console: Console | None = None,
               right: tuple[str, ...] = ()) -> None:
    """Print plain rows (a listing, not a result table) as one rich table; cells are shown verbatim
    (no markup), columns named in ``right`` right-aligned."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    for col in header:
        table.add_column(col, justify="right" if col in right else "left")
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row))
    (out if console is None else console).print(table)
