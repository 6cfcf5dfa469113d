"""How long a grid will take on this machine, measured, for ``lenbench run --dry-run``.

A suite describes each cell's work as :class:`Work` items (training steps and evaluation forwards,
each with its relative cost :func:`lenbench.progress.forward_cost` x batch, and how many times it
runs) and gives a probe that runs one item on a model of the cell's shape with random inputs. For
each distinct cell shape (the config without seed and learning rate, which do not change the work),
the estimator times the cheapest and the dearest item of each kind here (one warm-up call, then the
median of up to :data:`REPEATS` calls, fewer once :data:`BUDGET` seconds are spent), fits
``seconds = a + b * cost`` through the two, and sums it over the cell's items. What it leaves out:
data preparation (a ppl corpus, tokenizer training), compilation, checkpoint writes and logging, and
changes in other processes' load: it measures the machine as it is now. Nothing is written.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lenbench.errors import LenbenchError
from lenbench.results import ResultStore, config_hash
from lenbench.suites.base import Cell, Work

REPEATS = 3
BUDGET = 1.0  # seconds of timed calls per item after which no more are made (at least one is)
METHOD = (
    "measured now on this machine: per distinct cell shape, one warm-up then the median of up to 3 timed "
    "calls of the cheapest and the dearest training step and evaluation batch, fitted linearly in forward "
    "cost (lenbench.progress.forward_cost) and summed over the cell's steps and batches; excludes data "
    "preparation, compilation and checkpoint writes"
)


Probe = Callable[[Work], None]


def shape_key(cell: Cell) -> str:
    """Cells of one shape do the same work: the config without seed and learning rate."""
    config = {k: v for k, v in cell.config.items() if k != "seed"}
    if isinstance(config.get("train"), dict):
        config["train"] = {k: v for k, v in config["train"].items() if k != "lr"}
    return config_hash(config)


def _seconds(probe: Probe, work: Work) -> float:
    probe(work)  # warm-up: first-call allocations, kernel compilation, caches
    times: list[float] = []
    while len(times) < REPEATS and sum(times) < BUDGET:
        started = time.perf_counter()
        probe(work)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fit_seconds(works: list[Work], probe: Probe) -> float:
    """Seconds for ``works``: per kind, the line through the timed cheapest and dearest item, summed."""
    total = 0.0
    for kind in sorted({w.kind for w in works}):
        items = [w for w in works if w.kind == kind and w.repeats > 0]
        if not items:
            continue
        low, high = min(items, key=lambda w: w.cost), max(items, key=lambda w: w.cost)
        t_low = _seconds(probe, low)
        if high.cost == low.cost:
            total += t_low * sum(w.repeats for w in items)
            continue
        t_high = _seconds(probe, high)
        slope = max(0.0, (t_high - t_low) / (high.cost - low.cost))
        intercept = t_low - slope * low.cost
        total += sum(w.repeats * max(0.0, intercept + slope * w.cost) for w in items)
    return total


@dataclass
class Estimate:
    """Seconds per cell (None: the suite has no workload, or its probe failed: ``why``)."""

    seconds: dict[str, float | None]
    why: dict[str, str]


def estimate(cells: list[Cell], modules: dict[str, Any], on_shape: Callable[[int, int], None] | None = None
             ) -> Estimate:
    """Seconds per cell label; one probe per distinct shape (``on_shape(i, n)`` reports progress)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(f"{cell.suite}:{shape_key(cell)}", []).append(cell)
    seconds: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for i, members in enumerate(groups.values()):
        if on_shape is not None:
            on_shape(i, len(groups))
        module = modules[members[0].suite]
        work = module.workload(members[0])
        if work is None:
            for cell in members:
                seconds[cell.label], why[cell.label] = None, f"suite {cell.suite!r} gives no workload to measure"
            continue
        try:
            value: float | None = fit_seconds(work, module.probe(members[0]))
            reason = ""
        except (LenbenchError, RuntimeError, MemoryError) as exc:
            value, reason = None, f"probe failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        for cell in members:
            seconds[cell.label], why[cell.label] = value, reason
    return Estimate(seconds, why)


def duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``12 min 30 s``, ``45 s``; ``?`` for None."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


@dataclass(frozen=True)
class DryRunRow:
    """One cell of ``run --dry-run``: its state now, why, whether this run would compute it, and how long."""

    label: str
    state: str
    detail: str
    runs: bool
    seconds: float | None
    estimate: str


def dry_run_rows(cells: list[Cell], store: ResultStore, rerun: bool = False,
                 on_shape: Callable[[int, int], None] | None = None) -> tuple[list[DryRunRow], float]:
    """Each cell's state (done, failed, pending, running; a stale cell's rerun reason) and, for the cells
    the run would compute, the measured estimate; plus their total seconds. Writes nothing."""
    from lenbench.execute.status import grid_states
    from lenbench.execute.supersede import stale_cells
    from lenbench.suites import get_suite

    states = grid_states(cells, store)
    runs = [rerun or s.state in ("pending", "failed") for s in states]
    todo = [c for c, r in zip(cells, runs, strict=True) if r]
    modules = {c.suite: get_suite(c.suite) for c in todo}
    timed = estimate(todo, modules, on_shape)
    rows, total = [], 0.0
    for cell, st, run in zip(cells, states, runs, strict=True):
        detail = st.detail
        if st.state == "pending":
            stale = stale_cells(cell, store)
            detail = f"rerun: {stale[0][1]}" if stale else detail
        if rerun and st.state != "pending":
            detail = f"--rerun moves it aside ({st.detail or st.state})"
        seconds = timed.seconds.get(cell.label) if run else None
        total += seconds or 0.0
        shown = duration(seconds) if run else "-"
        if run and seconds is None:
            shown = f"? ({timed.why.get(cell.label, '')})"
        rows.append(DryRunRow(cell.label, st.state, detail, run, seconds, shown))
    return rows, total
