"""Cells computed again: ``run --rerun``, and cells whose PE changed under the same settings.

A cell's folder is named by a hash of its resolved config, which holds the PE's identity
(:func:`lenbench.pe.registry.pe_identity`: every option resolved, a plugin's code). An edited
plugin or a changed PE default is therefore a new folder, and the stored folder whose config is
equal in everything but the PE identity is **stale**: the run says why it computes the cell again
(:func:`stale_cells`), and once the new cell is finished the stale folder moves aside. ``--rerun``
moves the selected cells' own folders aside before they run. Nothing is deleted: an old folder
moves to ``<root>/<suite>/.superseded/<cell-id>-<time>/``, which no table, report or status reads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lenbench.errors import LenbenchError
from lenbench.execute.status import lock_held
from lenbench.results import CellDir, ResultStore, config_hash
from lenbench.suites.base import Cell

SUPERSEDED = ".superseded"
IDENTITY = "pe_identity"

# suite folder -> {folder name: hash of its config without the PE identity, or None (no config yet)}
_INDEX: dict[Path, dict[str, str | None]] = {}


def settings_key(config: dict[str, Any]) -> str:
    """Hash of a config without its PE identity: equal for the same cell under other PE code or defaults."""
    return config_hash({k: v for k, v in config.items() if k != IDENTITY})


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys)


def identity_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why a stored config's PE identity differs from the new one's, in a few words."""
    before, after = old.get(IDENTITY), new.get(IDENTITY) or {}
    if not isinstance(before, dict):
        return "the stored cell was written before lenbench recorded each PE's resolved options and code"
    if before.get("code") != after.get("code"):
        return "plugin code changed since the stored cell"
    if before.get("class") != after.get("class"):
        return f"the PE class changed ({before.get('class')} -> {after.get('class')})"
    if before.get("options") != after.get("options"):
        return f"PE options changed since the stored cell: {_changed(before.get('options') or {}, after['options'])}"
    if before.get("base") != after.get("base"):
        return "the defaults of the PE's base changed since the stored cell"
    return "the PE's recorded identity changed since the stored cell"


def _index(suite_dir: Path) -> dict[str, str | None]:
    """Settings key of every cell folder in ``suite_dir``; configs are read once per process (they never change)."""
    known = _INDEX.setdefault(suite_dir, {})
    try:
        names = [e.name for e in os.scandir(suite_dir) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return {}
    for gone in set(known) - set(names):
        del known[gone]
    for folder in names:
        if known.get(folder) is None:
            try:
                config = CellDir(suite_dir / folder).read_config()
            except LenbenchError:
                config = None
            known[folder] = settings_key(config) if isinstance(config, dict) else None
    return known


def stale_cells(cell: Cell, store: ResultStore) -> list[tuple[CellDir, str]]:
    """Other folders of the same cell (equal settings) under another PE identity, each with why."""
    own = store.cell(cell.suite, cell.label, cell.config)
    key = settings_key(cell.config)
    out = []
    for folder, other in _index(own.path.parent).items():
        if other == key and folder != own.cell_id:
            old = CellDir(own.path.parent / folder)
            out.append((old, identity_change(old.read_config() or {}, cell.config)))
    return out


def move_aside(cell_dir: CellDir) -> Path:
    """Move a cell folder to ``<suite>/.superseded/<cell-id>-<time>/`` (never deleted) and return where."""
    target_dir = cell_dir.path.parent / SUPERSEDED
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = target_dir / f"{cell_dir.cell_id}-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{cell_dir.cell_id}-{stamp}-{n}"
    try:
        target_dir.mkdir(exist_ok=True)
        os.replace(cell_dir.path, target)
    except OSError as exc:
        raise LenbenchError(f"cannot move {cell_dir.path} aside to {target}: {exc.strerror or exc}") from exc
    return target


def supersede_stale(cell: Cell, store: ResultStore) -> list[str]:
    """After ``cell`` finished: move its stale folders aside (not those another process holds); one line each."""
    lines = []
    for old, _ in stale_cells(cell, store):
        if lock_held(old):
            lines.append(f"kept {old.path}: stale but being run by another process")
            continue
        lines.append(f"superseded {old.path} -> {move_aside(old)}")
    return lines


def rerun(cells: list[Cell], store: ResultStore) -> list[str]:
    """``--rerun``: move each selected cell's existing folder aside so it is computed again; one line each
    (a folder another process is running is left alone: that cell is reported busy)."""
    lines = []
    for cell in cells:
        cell_dir = store.cell(cell.suite, cell.label, cell.config)
        if not cell_dir.path.is_dir():
            continue
        if lock_held(cell_dir):
            lines.append(f"cannot rerun {cell.label}: being run by another process ({cell_dir.path})")
            continue
        lines.append(f"rerun {cell.label}: --rerun; the stored folder moved to {move_aside(cell_dir)}")
    return lines
