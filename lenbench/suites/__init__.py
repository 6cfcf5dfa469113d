"""Suites: expand a suite YAML into cells and run one cell. Registered by name in ``SUITES``."""

from __future__ import annotations

import importlib
from typing import Any

from lenbench.suites.base import SUITES, Cell, Reporter, SilentReporter

__all__ = ["SUITES", "Cell", "Reporter", "SilentReporter", "load_suite_module"]

# Suite name -> module implementing the Suite protocol (imported lazily: they pull in torch).
SUITE_MODULES = {
    "che": "lenbench.suites.che.run",
    "ppl": "lenbench.suites.ppl.run",
    "timing": "lenbench.suites.timing.run",
}


def load_suite_module(name: str) -> Any:
    """The module that runs suite ``name`` (one of :data:`SUITE_MODULES`)."""
    if name not in SUITES and name in SUITE_MODULES:
        SUITES.add(name, importlib.import_module(SUITE_MODULES[name]))
    return SUITES.get(name)
