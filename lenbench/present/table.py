"""The format-neutral table every suite builds and every renderer writes: cells, sections, notes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TCell:
    """One table cell: display text, and whether it is bold (best, or not separable from it)."""

    text: str
    bold: bool = False


@dataclass
class Section:
    """A group of rows under an optional label (e.g. a Chomsky level)."""

    label: str | None
    rows: list[list[TCell]]


@dataclass
class Table:
    """A format-neutral table: ``key`` names its files, every row has ``len(header)`` cells."""

    key: str
    title: str
    header: list[str]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    left: int = 1  # leading columns aligned left (labels); the rest are right-aligned numbers

    @property
    def rows(self) -> list[list[TCell]]:
        return [row for s in self.sections for row in s.rows]
