"""``index.md`` and ``index.html``: one page with every table and figure of a report."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lenbench.present.render import html_table, markdown
from lenbench.present.table import Table

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table.lb { border-collapse: collapse; margin: 1em 0 0.3em; font-size: 0.9em; }
table.lb caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
table.lb th, table.lb td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; }
table.lb td.r, table.lb th.r { text-align: right; font-variant-numeric: tabular-nums; }
table.lb td.l, table.lb th.l { text-align: left; }
table.lb tr.group th { text-align: left; font-style: italic; background: #f4f4f4; }
ul.notes { font-size: 0.8em; color: #555; margin-top: 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; }
figcaption { font-size: 0.8em; color: #555; }
"""


@dataclass
class Section:
    """One part of the report page: a heading, its tables and its figures (caption, [png, svg])."""

    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, list[Path]]] = field(default_factory=list)


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix() if path.is_relative_to(out) else path.as_posix()


def index_markdown(title: str, intro: Sequence[str], sections: Sequence[Section], out: Path) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {line}" for line in intro] + [""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for table in section.tables:
            lines += [markdown(table)]
        for caption, paths in section.figures:
            png = next((p for p in paths if p.suffix == ".png"), paths[0])
            svg = next((p for p in paths if p.suffix == ".svg"), None)
            lines += [f"![{caption}]({_rel(png, out)})", ""]
            lines += [f"*{caption}*" + (f" ([SVG]({_rel(svg, out)}))" if svg else ""), ""]
    return "\n".join(lines)


def index_html(title: str, intro: Sequence[str], sections: Sequence[Section], out: Path) -> str:
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in intro) + "</ul>",
    ]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        parts += [html_table(table) for table in section.tables]
        for caption, paths in section.figures:
            src = next((p for p in paths if p.suffix == ".svg"), paths[0])
            parts.append(f'<figure><img src="{esc(_rel(src, out))}" alt="{esc(caption)}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
