"""Optional experiment tracking of each cell (``--log tensorboard``, ``--log wandb``; off by default).

The packages are the extra ``lenbench[tracking]`` and are imported only when asked for. What a
cell sends, wherever it runs (:func:`lenbench.execute.cell.run_cell_once` wraps its reporter):

- its config (TensorBoard: a ``config`` text; W&B: the run's config);
- every training step's metrics as ``train/<name>`` at that step (the loss curve);
- after evaluation, its ``metrics.json`` records: per-length ones as ``eval/<metric>`` against the
  length (TensorBoard: the length is the step; W&B: ``eval/length`` is their x axis), per-cell ones
  (``eval_len`` null, e.g. CHE's score) as ``cell/<metric>``.

TensorBoard writes event files into ``<cell>/tensorboard/``. W&B starts one run per cell, id'd by the
cell's folder name (a resumed cell continues its run), named by its label and grouped by grid
(``<suite>-<hash of the grid's cell ids>``, the same for a rerun of the same grid); W&B's own
settings (``WANDB_PROJECT``, default ``lenbench``; ``WANDB_MODE=offline``; ``WANDB_DIR``) apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lenbench.errors import LenbenchError
from lenbench.results import CellDir
from lenbench.suites.base import Cell, Reporter

TRACKERS = ("tensorboard", "wandb")  # each also the name of the package it needs


@dataclass(frozen=True)
class Tracking:
    """The trackers asked for (none: tracking off) and the grid's group name."""

    names: tuple[str, ...] = ()
    group: str = ""

    def for_grid(self, cells: list[Cell]) -> Tracking:
        """This tracking with the group of ``cells``'s grid (set once, by the executor)."""
        return self if self.group or not self.names else Tracking(self.names, grid_group(cells))


def parse_log(text: str | None) -> Tracking:
    """``--log`` (``tensorboard``, ``wandb`` or both, comma-separated) -> :class:`Tracking`, its packages checked."""
    if not text:
        return Tracking()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in TRACKERS:
            raise LenbenchError(f"--log {name!r} is not a tracker (known: {', '.join(TRACKERS)})")
        _require(name)
    return Tracking(names)


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LenbenchError(f"--log {name} needs the {name} package: pip install 'lenbench[tracking]'") from exc


def grid_group(cells: list[Cell]) -> str:
    """``<suite>-<first 8 hex digits of sha256 of the sorted cell labels and configs>``."""
    text = json.dumps(sorted([c.label, c.config] for c in cells), sort_keys=True, default=str)
    suites = sorted({c.suite for c in cells}) or ["grid"]
    return f"{'+'.join(suites)}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


class Tracker(Protocol):
    """One cell's sink: training steps as they come, evaluation records at the end."""

    def step(self, step: int, metrics: dict[str, float]) -> None: ...

    def records(self, records: list[dict[str, Any]]) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    """Event files in ``<cell>/tensorboard/`` through ``torch.utils.tensorboard``'s ``SummaryWriter``."""

    def __init__(self, cell: Cell, cell_dir: CellDir) -> None:
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(cell_dir.path / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(cell.config, indent=2, sort_keys=True) + "\n```")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", float(value), step)

    def records(self, records: list[dict[str, Any]]) -> None:
        for rec in _numeric(records):
            if rec["eval_len"] is None:
                self.writer.add_scalar(f"cell/{rec['metric']}", rec["value"], 0)
            else:
                self.writer.add_scalar(f"eval/{rec['metric']}", rec["value"], int(rec["eval_len"]))

    def close(self, failed: bool) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per cell (module doc)."""

    def __init__(self, cell: Cell, cell_dir: CellDir, group: str) -> None:
        wandb = _require("wandb")
        self.run = wandb.init(  # console off: the cell's output is in its run.log
            id=cell_dir.path.name, resume="allow", name=cell.label, group=group or None, job_type=cell.suite,
            config=cell.config, reinit="create_new", settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("eval/length")
        self.run.define_metric("eval/*", step_metric="eval/length")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({f"train/{k}": float(v) for k, v in metrics.items()}, step=step)

    def records(self, records: list[dict[str, Any]]) -> None:
        by_length: dict[int, dict[str, float]] = {}
        for rec in _numeric(records):
            if rec["eval_len"] is None:
                self.run.summary[f"cell/{rec['metric']}"] = rec["value"]
            else:
                by_length.setdefault(int(rec["eval_len"]), {})[f"eval/{rec['metric']}"] = rec["value"]
        for length in sorted(by_length):
            self.run.log({"eval/length": length, **by_length[length]})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _numeric(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records with a metric name and a real-number value (a NaN SE or a string never reaches a tracker)."""
    for rec in records:
        value = rec.get("value")
        if isinstance(rec.get("metric"), str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield {**rec, "value": float(value), "eval_len": rec.get("eval_len")}


class TrackedReporter:
    """A reporter that also sends every training step to the trackers, then passes the call on."""

    def __init__(self, inner: Reporter, trackers: list[Tracker]) -> None:
        self.inner, self.trackers = inner, trackers

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        self.inner.train_start(label, total_steps, resumed_from)

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.step(step, metrics)
        self.inner.train_step(step, metrics)

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        self.inner.eval_start(label, total, weights)

    def eval_step(self, done: int, what: str, value: float) -> None:
        self.inner.eval_step(done, what, value)

    def message(self, text: str) -> None:
        self.inner.message(text)


class CellTrackers:
    """The trackers of one cell while it runs (none when tracking is off); closed by :func:`tracked`."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers, self.failed = trackers, False

    def reporter(self, inner: Reporter) -> Reporter:
        """``inner``, also feeding the trackers each training step."""
        return TrackedReporter(inner, self.trackers) if self.trackers else inner

    def records(self, records: list[dict[str, Any]]) -> None:
        for tracker in self.trackers:
            tracker.records(records)


@contextlib.contextmanager
def tracked(tracking: Tracking | None, cell: Cell, cell_dir: CellDir) -> Iterator[CellTrackers]:
    """The cell's trackers, each closed after it (as failed if it raised or was marked failed)."""
    cell_trackers = CellTrackers([])
    try:
        for name in tracking.names if tracking is not None else ():
            group = tracking.group if tracking is not None else ""
            made: Tracker = TensorBoardTracker(cell, cell_dir) if name == "tensorboard" else WandbTracker(
                cell, cell_dir, group)
            cell_trackers.trackers.append(made)
        yield cell_trackers
    except BaseException:
        cell_trackers.failed = True
        raise
    finally:
        for tracker in cell_trackers.trackers:
            tracker.close(cell_trackers.failed)
