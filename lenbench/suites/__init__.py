"""Suites: expand a suite YAML into cells and run one cell. Registered by name in ``SUITES``."""

from __future__ import annotations

from lenbench.suites.base import SUITES, Cell, Reporter, SilentReporter

__all__ = ["SUITES", "Cell", "Reporter", "SilentReporter", "load_suite_module"]


def load_suite_module(name: str):  # noqa: ANN201 - returns a module implementing the Suite protocol
    """Import the suite implementations lazily (they pull in torch and the task zoo)."""
    if name not in SUITES:
        from lenbench.suites import che

        SUITES.add("che", che)  # type: ignore[arg-type]
    return SUITES.get(name)
