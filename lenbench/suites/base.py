"""What every suite shares: the cell, the progress-reporter protocol, the suite registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lenbench.registry import Registry


@dataclass(frozen=True)
class Cell:
    """The unit of work: one resolved config (hashed into its folder name) and a readable label."""

    suite: str
    label: str
    config: dict[str, Any]


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


class Suite(Protocol):
    """A suite module: expand its YAML into cells and run one cell into its folder. Optionally
    ``workload(cell) -> list[Work]`` and ``probe(cell) -> Callable[[Work], None]`` (one call of that
    work on a model of the cell's shape) let ``run --dry-run`` measure what the grid will cost."""

    name: str

    def expand(self, suite_file: Any, profile: str, overrides: dict[str, Any]) -> list[Cell]: ...

    def run_cell(self, cell: Cell, cell_dir: Any, reporter: Reporter) -> dict[str, Any]: ...


SUITES: Registry[Suite] = Registry("suite")
