"""Write a :class:`~lenbench.present.table.Table` as Markdown, CSV, LaTeX, HTML or a rich table."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text

from lenbench.present.table import Section, Table, TCell

FORMATS = ("md", "csv", "tex", "html")


def markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table under a bold title, group labels as bold rows, notes after."""

    def cell(c: TCell) -> str:
        text = c.text.replace("|", "\\|")
        return f"**{text}**" if c.bold and text else text

    width = len(table.header)
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(h.replace("|", "\\|") for h in table.header) + " |")
    lines.append("|" + "|".join(":---" if i < table.left else "---:" for i in range(width)) + "|")
    for section in table.sections:
        if section.label:
            lines.append("| " + " | ".join([f"*{section.label}*"] + [""] * (width - 1)) + " |")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in section.rows]
    lines.append("")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    """The table as CSV: a ``group`` column, then the header; the text of every cell (no bold)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", *table.header])
    for section in table.sections:
        writer.writerows([section.label or "", *(c.text for c in row)] for row in section.rows)
    return buf.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "---", "−": "$-$", "Δ": r"$\Delta$", "√": r"$\surd$", "·": r"$\cdot$", "†": r"$^\dagger$",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))


def tex_escape(text: str) -> str:
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group(0)], text)


def latex(table: Table) -> str:
    """A plain ``tabular`` (no packages needed) in a ``table`` float with the title as caption."""
    width = len(table.header)
    spec = "l" * table.left + "r" * (width - table.left)

    def row(cells: list[str]) -> str:
        return " & ".join(cells) + r" \\"

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(table.title)}}}",
        rf"\label{{tab:{table.key}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\hline",
        row([tex_escape(h) for h in table.header]),
        r"\hline",
    ]
    for section in table.sections:
        if section.label:
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{tex_escape(section.label)}}}}} \\")
        for r in section.rows:
            lines.append(row([rf"\textbf{{{tex_escape(c.text)}}}" if c.bold else tex_escape(c.text) for c in r]))
        lines.append(r"\hline")
    lines += [r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\smallskip{\footnotesize " + "; ".join(tex_escape(n) for n in table.notes) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def html_table(table: Table) -> str:
    """An HTML ``<table>`` with caption, header, group rows and notes below."""
    width = len(table.header)
    esc = html.escape
    out = [f'<table class="lb" id="{esc(table.key)}">', f"<caption>{esc(table.title)}</caption>", "<thead><tr>"]
    out += [f'<th class="{"l" if i < table.left else "r"}">{esc(h)}</th>' for i, h in enumerate(table.header)]
    out.append("</tr></thead><tbody>")
    for section in table.sections:
        if section.label:
            out.append(f'<tr class="group"><th colspan="{width}">{esc(section.label)}</th></tr>')
        for r in section.rows:
            cells = []
            for i, c in enumerate(r):
                text = f"<b>{esc(c.text)}</b>" if c.bold else esc(c.text)
                cells.append(f'<td class="{"l" if i < table.left else "r"}">{text}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if table.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(out) + "\n"


def rich_table(table: Table) -> RichTable:
    """The terminal form: group labels as section rows, best values bold."""
    out = RichTable(title=table.title)
    for i, h in enumerate(table.header):
        out.add_column(h, justify="left" if i < table.left else "right", no_wrap=i < table.left)
    for k, section in enumerate(table.sections):
        if section.label:
            if k:
                out.add_section()
            out.add_row(Text(section.label, style="italic"), *[""] * (len(table.header) - 1))
        for r in section.rows:
            out.add_row(*[Text(c.text, style="bold" if c.bold else "") for c in r])
    return out


WRITERS = {"md": markdown, "csv": csv_text, "tex": latex, "html": html_table}


def rich_notes(table: Table) -> Group:
    """The rich table with its notes below it (dim, one per line)."""
    return Group(rich_table(table), *[Text(f"  {n}", style="dim") for n in table.notes], Text(""))


def _column_groups(table: Table) -> list[list[int]]:
    """Indices of the value columns in runs that belong together: consecutive headers with the same
    first word (e.g. ``N=512 1L ms``, ``N=512 est. ms``, ``N=512 Ratio ...``)."""
    groups: list[list[int]] = []
    for i in range(table.left, len(table.header)):
        head = table.header[i].split(" ", 1)[0]
        if groups and table.header[groups[-1][0]].split(" ", 1)[0] == head:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _columns(table: Table, keep: list[int], part: str, notes: bool) -> Table:
    rows = [Section(s.label, [[r[i] for i in keep] for r in s.rows]) for s in table.sections]
    return Table(table.key, f"{table.title} {part}", [table.header[i] for i in keep], rows,
                 table.notes if notes else [], table.left)


def fit_columns(table: Table, width: int, measure: Callable[[Table], int]) -> list[Table]:
    """The table as one or more tables whose ``measure`` (rendered width) fits ``width``: value
    columns are packed in header groups, each part repeating the label columns; the notes go under
    the last part. A group wider than ``width`` alone gets a part of its own."""
    if measure(table) <= width:
        return [table]
    labels = list(range(table.left))
    parts: list[list[int]] = []
    for group in _column_groups(table):
        trial = labels + (parts[-1] if parts else []) + group
        if parts and measure(_columns(table, trial, "", False)) <= width:
            parts[-1] += group
        else:
            parts.append(list(group))
    return [_columns(table, labels + cols, f"(columns {k + 1} of {len(parts)})", k == len(parts) - 1)
            for k, cols in enumerate(parts)]
