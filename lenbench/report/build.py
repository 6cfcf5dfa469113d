"""``lenbench report``: results folder -> long table, tables, figures, significance, index pages.

Output layout under ``out``::

    results_long.csv, results_long.parquet   every finished and failed cell, long format
    tables/<key>.{md,csv,tex,html}           each table in each requested format
    tables/<suite>_summary.csv, significance.csv   tidy numbers behind the tables (csv format)
    plots/<name>.{png,svg}                   figures
    index.md, index.html                     everything on one page (md / html formats)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lenbench.errors import LenbenchError
from lenbench.present.render import FORMATS, WRITERS
from lenbench.present.table import Table
from lenbench.report.collect import collect, save_long
from lenbench.report.index import Section, index_html, index_markdown
from lenbench.report.significance import significance
from lenbench.results import atomic_write_text
from lenbench.suites import get_suite, registered, suite_names


@dataclass
class Report:
    """What a report produced: tables by suite, the significance table, written files, warnings."""

    out: Path
    frame: pd.DataFrame
    sections: list[Section]
    significance: Table | None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables] + ([self.significance] if self.significance else [])


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``md,csv,tex,html`` (any subset) -> list; unknown formats are a one-line error."""
    items = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    items = ["tex" if f in ("latex", "tex") else "md" if f in ("md", "markdown") else f for f in items]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise LenbenchError(f"unknown report format {bad[0] if bad else ''!r} (choose from {', '.join(FORMATS)})")
    return list(dict.fromkeys(items))


def suite_warnings(frame: pd.DataFrame) -> list[str]:
    """What each suite's tables should be read with (``suite.warnings``: e.g. a PE timed by several
    timing groups). Pooled suites never pool across protocols: :mod:`lenbench.report.collect` splits
    them into separate tables and marks extra folders of one table cell and seed ``superseded``,
    with its own warnings."""
    return [w for suite in registered() for w in suite.warnings(frame)]


def suite_tables(
    frame: pd.DataFrame, reference: str | None = None
) -> dict[str, tuple[list[Table], pd.DataFrame]]:
    """Every registered suite's tables and tidy summary from a long table (``report`` and the close of
    ``run``); ``reference``: the timing Ratio's denominator (option ``reference_pe``; None: DAPE-Kerple
    when timed)."""
    options = {"reference_pe": reference}
    return {suite.name: suite.tables(frame, options) for suite in registered()}


def report_figures(frame: pd.DataFrame, plots_dir: Path) -> dict[str, list[tuple[str, list[Path]]]]:
    """Draw and save every figure the results support -> {suite: [(caption, [png, svg])]}."""
    return {suite.name: suite.figures(frame, plots_dir) for suite in registered()}


def provenance(frame: pd.DataFrame) -> str:
    """Where and when the cells were measured, from their manifests: device(s), CPU cores, torch
    version(s), the dates the cells started, the lenbench version(s) and source hash(es) and the git
    commit(s) that ran them."""

    def values(col: str) -> list[str]:
        if col not in frame:
            return []
        return sorted({str(v) for v in frame.drop_duplicates("cell")[col] if not _blank(v)})

    devices = values("device")
    gpus = values("cuda_device")
    cores = values("cpu_count")
    where = "/".join(devices) or "device ?"
    if gpus:
        where += f" ({', '.join(gpus)})"
    elif cores:
        where += f" ({'/'.join(cores)} cores)"
    dates = sorted({d[:10] for d in values("started")})
    when = (dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}") if dates else "date ?"
    return (f"measured on {where}; torch {', '.join(values('torch')) or '?'}; cells started {when}; "
            f"lenbench {code_text(frame)}; git {', '.join(values('git')) or '?'}")


def code_versions(frame: pd.DataFrame) -> dict[str, int]:
    """``version (source <12 hex>)`` of the lenbench that ran each cell -> number of cells (``?`` when
    the manifest predates source hashes)."""
    if "cell" not in frame:
        return {}
    cells = frame.drop_duplicates("cell")
    out: dict[str, int] = {}
    for _, row in cells.iterrows():
        version = row.get("lenbench")
        source = row.get("source_sha256")
        text = f"{'?' if _blank(version) else version} (source {'?' if _blank(source) else str(source)[:12]})"
        out[text] = out.get(text, 0) + 1
    return out


def code_text(frame: pd.DataFrame) -> str:
    versions = code_versions(frame)
    if len(versions) <= 1:
        return next(iter(versions), "?")
    return ", ".join(f"{v}: {n} cells" for v, n in sorted(versions.items()))


def code_warnings(frame: pd.DataFrame) -> list[str]:
    """One warning per suite whose cells ran under different lenbench code (version or source hash)."""
    out = []
    for suite, cells in frame.groupby("suite", dropna=True, sort=True):
        versions = code_versions(cells)
        if len(versions) > 1:
            listed = "; ".join(f"{v}: {n} cells" for v, n in sorted(versions.items()))
            out.append(f"{suite} tables mix cells computed by {len(versions)} different lenbench sources ({listed}); "
                       "their numbers may not be comparable")
    return out


def _blank(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _makedirs(*dirs: Path) -> None:
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LenbenchError(f"cannot create report folder {d}: {exc.strerror or exc}") from exc


def build_report(
    results: Path | str,
    out: Path | str,
    suite: str | None = None,
    formats: Sequence[str] = FORMATS,
    compare: tuple[str, str] | None = None,
    plots: bool = True,
    reference: str | None = None,
) -> Report:
    """Read ``results``, write the report into ``out``, and return what was built (``reference``:
    the timing Ratio's denominator; None: DAPE-Kerple when timed)."""
    if suite is not None and suite not in suite_names():
        raise LenbenchError(f"unknown suite {suite!r} (choose from {', '.join(suite_names())})")
    collection = collect(results, suite)
    frame = collection.frame
    out = Path(out)
    tables_dir, plots_dir = out / "tables", out / "plots"
    _makedirs(out, tables_dir)
    warnings = collection.warnings + suite_warnings(frame) + code_warnings(frame)
    files = save_long(frame, out)

    built = suite_tables(frame, reference)
    sig_table, sig_frame = significance(frame, compare)
    figures: dict[str, list[tuple[str, list[Path]]]] = {}
    if plots:
        _makedirs(plots_dir)
        figures = report_figures(frame, plots_dir)
    sections = [
        Section(get_suite(name).title, tables, figures.get(name, []))
        for name, (tables, _) in built.items()
        if tables or figures.get(name)
    ]
    all_tables = [t for s in sections for t in s.tables] + ([sig_table] if sig_table else [])
    for table in all_tables:
        for fmt in formats:
            path = tables_dir / f"{table.key}.{fmt}"
            atomic_write_text(path, WRITERS[fmt](table))
            files.append(path)
    if "csv" in formats:
        for name, (_, summary) in [*built.items(), ("significance", (None, sig_frame))]:
            if not summary.empty:
                path = tables_dir / (f"{name}_summary.csv" if name != "significance" else "significance.csv")
                summary.to_csv(path, index=False)
                files.append(path)
    for figs in figures.values():
        files += [p for _, paths in figs for p in paths]

    page_sections = sections + ([Section("Significance (paired over seeds)", [sig_table])] if sig_table else [])
    counts = frame.drop_duplicates("cell")["status"].map(lambda s: "failed" if s == "failed" else "done")
    intro = [
        f"results: {Path(results)}" + (f" (suite {suite})" if suite else ""),
        f"cells: {int((counts == 'done').sum())} finished, {int((counts == 'failed').sum())} failed"
        + (f", {collection.incomplete} unfinished (not shown)" if collection.incomplete else ""),
        provenance(frame),
        "long table: results_long.csv, results_long.parquet",
        f"report generated {time.strftime('%Y-%m-%d %H:%M:%S')}",
        *[f"warning: {w}" for w in warnings],
    ]
    title = "lenbench report"
    if "md" in formats:
        path = out / "index.md"
        atomic_write_text(path, index_markdown(title, intro, page_sections, out))
        files.append(path)
    if "html" in formats:
        path = out / "index.html"
        atomic_write_text(path, index_html(title, intro, page_sections, out))
        files.append(path)
    return Report(out, frame, sections, sig_table, files, warnings)
