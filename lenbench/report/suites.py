"""The suites as the report sees them: one object per registered suite (TEMPORARY adapter).

TEMPORARY (issue 28 merge): :func:`suite_api` maps a suite name to its package's module-level
functions; at merge its body becomes ``load_suite_module(name)`` (the suite's ``Suite`` object, which
exposes the same attributes) and :func:`suite_names` the registry's names. Nothing else in
``lenbench/report`` names a suite.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lenbench.suites import SUITE_MODULES


def _same(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def _none(frame: pd.DataFrame) -> list[str]:
    return []


@dataclass(frozen=True)
class SuiteApi:
    """What the report calls on a suite (the ``Suite`` object's attributes, by these names)."""

    name: str
    title: str
    cell_keys: Callable[..., dict[str, Any]]
    tables: Callable[..., Any]
    figures: Callable[..., list[tuple[str, list[Path]]]]
    comparisons: Callable[..., list[Any]]
    pooled: bool
    table_group: tuple[str, ...]
    cell_identity: tuple[str, ...]
    protocol_axes: tuple[str, ...]
    protocol_extra: Callable[..., dict[str, Any]]
    comparison_notes: tuple[str, str] | None = None
    warnings: Callable[[pd.DataFrame], list[str]] = field(default=_none)
    normalize: Callable[[pd.DataFrame], pd.DataFrame] = field(default=_same)


def _figures(name: str) -> Callable[..., list[tuple[str, list[Path]]]]:
    def draw(frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        return importlib.import_module(f"lenbench.suites.{name}.plots").figures(frame, plots_dir)  # matplotlib: lazy

    return draw


_CACHE: dict[str, SuiteApi] = {}


def suite_api(name: str) -> SuiteApi:
    """TEMPORARY: the suite ``name`` (at merge: ``load_suite_module(name)``)."""
    if name not in _CACHE:
        keys = importlib.import_module(f"lenbench.suites.{name}.keys")
        tables = importlib.import_module(f"lenbench.suites.{name}.tables")
        _CACHE[name] = SuiteApi(
            name, tables.TITLE, keys.cell_keys, tables.suite_tables, _figures(name), tables.comparisons,
            keys.POOLED, tuple(keys.TABLE_GROUP), tuple(keys.CELL_IDENTITY), tuple(keys.PROTOCOL_AXES),
            keys.protocol_extra, getattr(tables, "COMPARISON_NOTES", None), getattr(tables, "warnings", _none),
            getattr(keys, "normalize", _same),
        )
    return _CACHE[name]


def suite_names() -> list[str]:
    """TEMPORARY: the registered suites, in registration order (at merge: the registry's names)."""
    return list(SUITE_MODULES)


def suites() -> list[SuiteApi]:
    """Every registered suite, in registration order."""
    return [suite_api(name) for name in suite_names()]
