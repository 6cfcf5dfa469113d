"""Reports: the result store -> long table, tables (Markdown/CSV/LaTeX/HTML/terminal), figures,
paired significance tests and an index page (:func:`build_report`); attention plots (``viz``)."""

from lenbench.report.build import Report, build_report, parse_formats

__all__ = ["Report", "build_report", "parse_formats"]
