"""The state of a grid, read from its result folders alone (what ``lenbench status`` prints).

A cell is ``done`` (``DONE`` exists), ``running`` (another process holds its lock), ``failed``
(``FAILED`` exists; its reason and step), or ``pending``: not started, or stopped part-way and
waiting to resume from its checkpoint. Pending cells without a folder are known only from the grid,
so :func:`grid_states` takes the expanded cells, :func:`recorded_states` the grids ``lenbench run``
recorded (:mod:`lenbench.execute.manifest`); :func:`folder_states` lists what a results root holds.
Nothing here writes: the lock is probed with a shared, non-blocking ``flock`` that is released at once.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from typing import Any

from lenbench.execute.manifest import GridRecord
from lenbench.results import CellDir, ResultStore
from lenbench.suites.base import Cell

STATES = ("done", "running", "failed", "pending")


@dataclass(frozen=True)
class CellState:
    """One cell's state and a short detail (score, step reached, failure reason)."""

    name: str
    cell_dir: CellDir
    state: str
    detail: str = ""


def lock_held(cell_dir: CellDir) -> bool:
    """Whether some process holds the cell's lock now (creates nothing)."""
    try:
        fh = open(cell_dir.path / ".lock")  # noqa: SIM115
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _json(path: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_step(cell_dir: CellDir) -> int | None:
    """The last step in ``train_log.jsonl`` (a torn last line is ignored)."""
    try:
        lines = cell_dir.log_path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return None


def _progress(cell_dir: CellDir, config: dict[str, Any] | None) -> str:
    steps = (config or {}).get("train", {}).get("steps")
    evaluated = _json(cell_dir.path / "eval_partial.json")
    if isinstance(evaluated, dict) and evaluated:
        total = len((config or {}).get("eval", {}).get("lengths", []))
        return f"evaluated {len(evaluated)}/{total or '?'} lengths"
    step = last_step(cell_dir)
    if step is None:
        return ""
    return f"step {step}/{steps}" if steps else f"step {step}"


def _done_detail(cell_dir: CellDir, summary: Any) -> str:
    """The suite's one-line result of a finished cell (its folder's parent names the suite)."""
    from lenbench.suites import get_suite, suite_names

    suite = cell_dir.path.parent.name
    if not isinstance(summary, dict) or suite not in suite_names():
        return ""
    return get_suite(suite).summary_text(summary) or ""


def describe(cell_dir: CellDir, name: str, config: dict[str, Any] | None = None) -> CellState:
    """The state of one cell folder (which may not exist yet)."""
    config = config if config is not None else cell_dir.read_config() if cell_dir.config_path.exists() else None
    if cell_dir.done_path.exists():
        return CellState(name, cell_dir, "done", _done_detail(cell_dir, _json(cell_dir.done_path)))
    if cell_dir.path.is_dir() and lock_held(cell_dir):
        return CellState(name, cell_dir, "running", _progress(cell_dir, config))
    if cell_dir.failed_path.exists():
        failed = _json(cell_dir.failed_path) or {}
        reason, step = str(failed.get("reason", "unknown reason")), failed.get("step")
        at = f" (step {step})" if step is not None and f"step {step}" not in reason else ""
        return CellState(name, cell_dir, "failed", reason + at)
    reached = _progress(cell_dir, config) if cell_dir.path.is_dir() else ""
    if cell_dir.checkpoint_path.exists():
        reached = f"{reached}; resumes from its checkpoint" if reached else "resumes from its checkpoint"
    return CellState(name, cell_dir, "pending", reached)


def grid_states(cells: list[Cell], store: ResultStore) -> list[CellState]:
    """Every cell of an expanded grid, pending ones included."""
    return [describe(store.cell(c.suite, c.label, c.config), c.label, c.config) for c in cells]


def folder_states(store: ResultStore, suite: str | None = None) -> list[CellState]:
    """Every cell folder under the results root (or one suite): what has been started at least once."""
    return [describe(d, f"{d.path.parent.name}/{d.cell_id}") for d in store.cells(suite) if d.config_path.exists()]


def recorded_states(store: ResultStore, records: list[GridRecord], suite: str | None = None) -> list[CellState]:
    """Every cell of the recorded grids (each once, pending ones included), then the cell folders
    under the root (or one suite) that no recorded grid names; named ``suite/folder``."""
    states, seen = [], set()
    for record in records:
        for _, cell_dir in record.cell_dirs(store):
            if cell_dir.path not in seen:
                seen.add(cell_dir.path)
                states.append(describe(cell_dir, f"{record.suite}/{cell_dir.cell_id}"))
    return states + [s for s in folder_states(store, suite) if s.cell_dir.path not in seen]


def counts(states: list[CellState]) -> dict[str, int]:
    return {s: sum(1 for x in states if x.state == s) for s in STATES}
