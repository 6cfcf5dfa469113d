"""The suite contract: the cell, the run context, the progress-reporter protocol, the ``Suite``
protocol every generic layer (execute/, report/, cli) loops over, and the ``SUITES`` registry.

A suite is a package (``lenbench/suites/<name>/``) whose ``__init__`` exposes one object that
satisfies :class:`Suite`; ``lenbench/suites/__init__.py`` registers it with one line
(docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the suites' tables and frames are built above this module
    import pandas as pd

    from lenbench.present.significance import Comparison
    from lenbench.present.table import Table
    from lenbench.results import CellDir
    from lenbench.train.parallel import DataParallel

from lenbench.registry import Registry


class CellConfig(Protocol):
    """A suite's resolved, frozen cell config (a dataclass); ``to_dict`` is its stored form, which
    names the cell's folder (hash) and is written as ``config.yaml``."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Cell:
    """The unit of work: the suite's frozen config (``spec``) and a readable label; ``config`` is the
    plain-dict form, only for hashing, YAML and the result store."""

    suite: str
    label: str
    spec: Any = field(compare=False)
    config: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", self.spec if isinstance(self.spec, dict) else self.spec.to_dict())


@dataclass(frozen=True)
class Metric:
    """A stored metric and its direction (``higher``: larger is better)."""

    name: str
    higher: bool
    description: str = ""


@dataclass(frozen=True)
class Work:
    """One kind of call a cell makes ``repeats`` times, for the time estimate of ``run --dry-run``
    (:mod:`lenbench.execute.estimate`): a training step or an evaluation forward over ``batch``
    sequences of the suite's length ``size``, of relative ``cost`` (forward cost x batch)."""

    kind: str  # "train" or "eval"
    size: int
    batch: int
    cost: float
    repeats: float


class Reporter(Protocol):
    """Progress callbacks a suite calls while running one cell (rich in the CLI, silent in tests)."""

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None: ...

    def train_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        """``total`` items to evaluate, ``weights`` their relative costs (for the ETA; None: equal)."""

    def eval_step(self, done: int, what: str, value: float) -> None: ...

    def message(self, text: str) -> None: ...


class SilentReporter:
    """A reporter that records messages and ignores progress."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def train_start(self, label: str, total_steps: int, resumed_from: int) -> None:
        if resumed_from:
            self.messages.append(f"{label}: resumed from step {resumed_from}")

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def eval_start(self, label: str, total: int, weights: Sequence[float] | None = None) -> None:
        pass

    def eval_step(self, done: int, what: str, value: float) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)


@dataclass(frozen=True)
class RunContext:
    """What the executor hands a cell: the progress reporter and, under torchrun, the data-parallel
    context (None: one process)."""

    reporter: Reporter
    parallel: DataParallel | None = None


class Suite(Protocol):
    """A suite: expand its YAML into cells, run one cell into its folder, present its results.

    Running: ``expand`` (suite YAML + profile + overrides -> cells, each with its frozen config),
    ``run_cell(cell, cell_dir, ctx)`` (train or measure, write metrics, return a summary),
    ``data_parallel`` (whether ``run_cell`` may train over torchrun ranks, ``ctx.parallel``) with
    ``batch_split(cell)`` (its global and micro batch), and optionally ``workload``/``probe`` (what
    ``run --dry-run`` measures) and ``summary_text(summary)`` (the one-line result ``status`` shows).

    Presenting (``lenbench report`` and the close of ``run``): ``metrics`` with their direction;
    ``cell_keys(config)`` (the suite's identifying columns of a cell in the long table);
    ``pooled`` (table cells pool runs over seeds), with ``table_group`` (columns making one set of
    tables), ``cell_identity`` (one run within it), ``protocol_axes`` and ``protocol_extra(config)``
    (what the protocol fingerprint leaves out and adds, docs/statistics.md §7);
    ``tables(frame, options)`` -> (tables, tidy summary); ``figures(frame, plots_dir)`` ->
    [(caption, files)]; ``comparisons(frame)`` and ``comparison_notes`` for the significance table;
    ``warnings(frame)``; ``normalize(frame)`` (fill columns of records older lenbench wrote).

    Extending: ``commands`` (extra CLI commands, Typer functions) and ``listing()`` (tables for
    ``lenbench list``). :class:`SuiteBase` gives every optional member a neutral default.
    """

    name: str
    title: str
    metrics: tuple[Metric, ...]
    data_parallel: bool
    pooled: bool
    table_group: tuple[str, ...]
    cell_identity: tuple[str, ...]
    protocol_axes: tuple[str, ...]
    comparison_notes: tuple[str, str] | None
    commands: tuple[Callable[..., None], ...]

    def expand(self, suite_file: Any, profile: str, overrides: dict[str, Any]) -> list[Cell]: ...

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]: ...

    def batch_split(self, cell: Cell) -> tuple[int, int | None]: ...

    def summary_text(self, summary: Mapping[str, Any]) -> str | None: ...

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]: ...

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]: ...

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]: ...

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]: ...

    def comparisons(self, frame: pd.DataFrame) -> list[Comparison]: ...

    def warnings(self, frame: pd.DataFrame) -> list[str]: ...

    def normalize(self, frame: pd.DataFrame) -> pd.DataFrame: ...

    def listing(self) -> list[Listing]: ...


Listing = tuple[str, tuple[str, ...], list[tuple[Any, ...]]]
"""A table ``lenbench list`` prints for a suite (e.g. its tasks): (title, header, rows)."""


class SuiteBase:
    """Neutral defaults for a :class:`Suite`'s optional members: one process, no pooling over seeds
    (every cell its own table row), no comparisons, figures, warnings, commands or listings."""

    data_parallel = False
    pooled = False
    table_group: tuple[str, ...] = ("suite",)
    cell_identity: tuple[str, ...] = ()
    protocol_axes: tuple[str, ...] = ()
    comparison_notes: tuple[str, str] | None = None
    commands: tuple[Callable[..., None], ...] = ()

    def batch_split(self, cell: Cell) -> tuple[int, int | None]:
        raise NotImplementedError(f"suite {cell.suite!r} does not train data-parallel")

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        return None

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        return []

    def comparisons(self, frame: pd.DataFrame) -> list[Comparison]:
        return []

    def warnings(self, frame: pd.DataFrame) -> list[str]:
        return []

    def normalize(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame

    def listing(self) -> list[Listing]:
        return []

    def workload(self, cell: Cell) -> list[Work] | None:
        return None  # no estimate for ``run --dry-run``

    def probe(self, cell: Cell) -> Callable[[Work], None]:
        raise NotImplementedError(f"suite {cell.suite!r} has no probe")


class PackageSuite(SuiteBase):
    """A suite whose package keeps the usual rooms, each imported on first use (torch, pandas and
    matplotlib load only when needed): ``config.expand``; ``run.run_cell`` (and ``run.workload``,
    ``run.probe`` if present); ``keys.cell_keys`` (and ``keys.protocol_extra``, ``keys.normalize``);
    ``tables.suite_tables`` (and ``tables.comparisons``, ``tables.warnings``); ``plots.figures``;
    ``listing.listing``; the filing constants ``keys.POOLED``, ``TABLE_GROUP``, ``CELL_IDENTITY``,
    ``PROTOCOL_AXES``. A room or function that is absent takes :class:`SuiteBase`'s default."""

    package: str  # e.g. "lenbench.suites.che"

    def _room(self, room: str) -> Any:
        """The package's module ``room`` (None when the package has none), looked up once."""
        rooms = self.__dict__.setdefault("_rooms", {})
        if room not in rooms:
            name = f"{self.package}.{room}"
            rooms[room] = importlib.import_module(name) if importlib.util.find_spec(name) is not None else None
        return rooms[room]

    def _part(self, room: str, attr: str) -> Any:
        return getattr(self._room(room), attr, None)

    @property
    def pooled(self) -> bool:  # type: ignore[override]
        """``keys.POOLED``: table cells pool runs over seeds."""
        return bool(getattr(self._room("keys"), "POOLED", False))

    @property
    def table_group(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(getattr(self._room("keys"), "TABLE_GROUP", SuiteBase.table_group))

    @property
    def cell_identity(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(getattr(self._room("keys"), "CELL_IDENTITY", ()))

    @property
    def protocol_axes(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(getattr(self._room("keys"), "PROTOCOL_AXES", ()))

    def expand(self, suite_file: Any, profile: str, overrides: dict[str, Any]) -> list[Cell]:
        return self._part("config", "expand")(suite_file, profile, overrides)

    def run_cell(self, cell: Cell, cell_dir: CellDir, ctx: RunContext) -> dict[str, Any]:
        return self._part("run", "run_cell")(cell, cell_dir, ctx)

    def workload(self, cell: Cell) -> list[Work] | None:
        found = self._part("run", "workload")
        return found(cell) if found is not None else None

    def probe(self, cell: Cell) -> Callable[[Work], None]:
        found = self._part("run", "probe")
        return found(cell) if found is not None else super().probe(cell)

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return self._part("keys", "cell_keys")(config)

    def protocol_extra(self, config: Mapping[str, Any]) -> dict[str, Any]:
        found = self._part("keys", "protocol_extra")
        return found(config) if found is not None else {}

    def normalize(self, frame: pd.DataFrame) -> pd.DataFrame:
        found = self._part("keys", "normalize")
        return found(frame) if found is not None else frame

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]:
        return self._part("tables", "suite_tables")(frame, options)

    def comparisons(self, frame: pd.DataFrame) -> list[Comparison]:
        found = self._part("tables", "comparisons")
        return found(frame) if found is not None else []

    def warnings(self, frame: pd.DataFrame) -> list[str]:
        found = self._part("tables", "warnings")
        return found(frame) if found is not None else []

    def figures(self, frame: pd.DataFrame, plots_dir: Path) -> list[tuple[str, list[Path]]]:
        found = self._part("plots", "figures")
        return found(frame, plots_dir) if found is not None else []

    def listing(self) -> list[Listing]:
        found = self._part("listing", "listing")
        return found() if found is not None else []




SUITES: Registry[Suite] = Registry("suite", "lenbench.suites")
