"""Grid manifests: what ``lenbench run`` records in the results root so that ``lenbench status --out
DIR`` lists every cell of the grids run there, pending ones included, without the run's flags.

One JSON file per grid, ``<out>/.grids/<suite>-<hash>.json`` (a hidden folder beside the suites'
folders, so never a suite or a cell), holding the suite file, the profile, the override tree and each
cell's label and folder name; ``<hash>`` is that of the cell folders, so running the same grid again
rewrites the same file. Written atomically
(:func:`lenbench.results.atomic_write_json`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenbench.results import CellDir, ResultStore, atomic_write_json, config_hash, slug

FOLDER = ".grids"


@dataclass(frozen=True)
class GridRecord:
    """One recorded grid: its suite, how it was expanded, and its cells as (label, folder name)."""

    path: Path
    suite: str
    suite_file: str
    profile: str
    overrides: dict[str, Any]
    cells: tuple[tuple[str, str], ...]
    written: float

    def cell_dirs(self, store: ResultStore) -> list[tuple[str, CellDir]]:
        """(label, folder) of each cell, in the grid's order; the folder may not exist yet."""
        return [(label, CellDir(store.root / self.suite / cell_id)) for label, cell_id in self.cells]


def write_manifest(store: ResultStore, suite: str, suite_file: str, profile: str, overrides: dict[str, Any],
                   cells: list[Any]) -> Path:
    """Record an expanded grid (``cells``: its :class:`~lenbench.suites.base.Cell` list) -> the file written."""
    ids = [store.cell(c.suite, c.label, c.config).cell_id for c in cells]
    folder = store.root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(suite)}-{config_hash({'cells': ids})}.json"
    atomic_write_json(path, {
        "suite": suite,
        "suite_file": str(Path(suite_file).resolve()),
        "profile": profile,
        "overrides": overrides,
        "cells": [{"label": c.label, "id": cell_id} for c, cell_id in zip(cells, ids, strict=True)],
        "written": time.time(),
    })
    return path


def _record(path: Path) -> GridRecord:
    data = json.loads(path.read_text())
    cells = tuple((str(c["label"]), str(c["id"])) for c in data["cells"])
    if any("/" in cell_id or cell_id.startswith(".") for _, cell_id in cells):
        raise ValueError("a cell id is not a folder name")
    return GridRecord(path, str(data["suite"]), str(data.get("suite_file", "")), str(data.get("profile", "")),
                      dict(data.get("overrides") or {}), cells, float(data.get("written", 0.0)))


def read_manifests(store: ResultStore, suite: str | None = None) -> tuple[list[GridRecord], list[str]]:
    """The grids recorded under the results root (or one suite), oldest first, and a warning for
    each manifest that cannot be read (it is skipped)."""
    records, warnings = [], []
    for path in sorted((store.root / FOLDER).glob("*.json")):
        try:
            record = _record(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.append(f"grid manifest {path} is unreadable ({type(exc).__name__}); skipped")
            continue
        if suite is None or record.suite == suite:
            records.append(record)
    return sorted(records, key=lambda r: (r.written, str(r.path))), warnings
