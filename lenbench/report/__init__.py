"""Reports: the result store -> long table, every registered suite's tables (Markdown/CSV/LaTeX/HTML/
terminal) and figures, paired significance tests and an index page (:func:`build_report`). The
suites are reached through the registry (:mod:`lenbench.suites`); no module here names one."""

from lenbench.report.build import Report, build_report, parse_formats

__all__ = ["Report", "build_report", "parse_formats"]
