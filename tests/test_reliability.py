"""Fault injection inside the test suite (fewer kills than ``tests/fault_injection.py``), and exact resume."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fault_injection import (
    baseline,
    concurrent_runs,
    config_drift,
    kill_at_random,
    kill_while_writing,
    nan_loss,
    write_failure,
    write_suite,
)
from helpers import StopAt
from test_che_suite import TINY, cells, run
from torch import nn

from lenbench.results import CellDir
from lenbench.train import OptimConfig, train


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, float]:
    work = tmp_path_factory.mktemp("faults")
    suite = write_suite(work)
    reference, span = baseline(work, suite)
    return work, suite, reference, span


def test_kills_leave_nothing_torn_and_reruns_match(grid: tuple[Path, Path, dict, float]) -> None:
    work, suite, reference, span = grid
    check = kill_at_random(work, suite, 2, reference, span, seed=1)
    assert check.ok, check.notes


def test_kills_inside_writes_leave_nothing_torn_and_reruns_match(grid: tuple[Path, Path, dict, float]) -> None:
    work, suite, reference, _ = grid
    check = kill_while_writing(work, suite, reference)
    assert check.ok, check.notes


def test_concurrent_runs_run_each_cell_once(grid: tuple[Path, Path, dict, float]) -> None:
    work, suite, reference, _ = grid
    check = concurrent_runs(work, suite, reference)
    assert check.ok, check.notes


def test_nan_loss_fails_the_cell_and_the_grid_goes_on(grid: tuple[Path, Path, dict, float]) -> None:
    check = nan_loss(*grid[:2])
    assert check.ok, check.notes


def test_write_failure_is_one_line_and_keeps_results(grid: tuple[Path, Path, dict, float]) -> None:
    check = write_failure(*grid[:2])
    assert check.ok, check.notes


def test_config_drift_is_a_new_cell_and_the_report_says_so(grid: tuple[Path, Path, dict, float]) -> None:
    check = config_drift(*grid[:2])
    assert check.ok, check.notes


class _Losses:
    """``on_step`` that records each step's loss and can interrupt after a given step, like a kill."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.losses = stop, {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.losses[step] = metrics["loss"]
        if step == self.stop:
            raise KeyboardInterrupt


def _noisy_step(model: nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """A step that draws from every RNG the loop must restore: numpy (data), python ``random``, torch."""
    x = torch.from_numpy(rng.standard_normal((8, 4))).float() + random.random()
    target = torch.rand(8, 1)
    return ((model(x) - target) ** 2).mean(), {}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 1))  # dropout: torch RNG


def test_resume_restores_model_optimizer_every_rng_and_the_data_position(tmp_path: Path) -> None:
    cfg = OptimConfig(steps=12, lr=1e-2, schedule="cosine", warmup_frac=0.25)
    straight_dir, resumed_dir = CellDir(tmp_path / "a"), CellDir(tmp_path / "b")
    for d in (straight_dir, resumed_dir):
        d.path.mkdir()
    straight, whole = _model(), _Losses()
    assert train(straight, _noisy_step, cfg, 3, straight_dir, checkpoint_every=5, on_step=whole) == 0
    with pytest.raises(KeyboardInterrupt):
        train(_model(), _noisy_step, cfg, 3, resumed_dir, checkpoint_every=5, on_step=_Losses(stop=8))
    state: dict[str, Any] = resumed_dir.load_checkpoint() or {}
    assert state["step"] == 5 and {"model", "optimizer", "scheduler", "numpy", "python", "torch"} <= set(state)
    random.random(), np.random.rand(), torch.rand(3)  # a new process would start from other states
    resumed, tail = _model(), _Losses()
    assert train(resumed, _noisy_step, cfg, 3, resumed_dir, checkpoint_every=5, on_step=tail) == 5
    assert tail.losses == {s: v for s, v in whole.losses.items() if s > 5}  # bit-identical floats
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_che_cell_with_dropout_and_random_positions_resumes_exactly(tmp_path: Path) -> None:
    (cell,) = cells("reverse_string", "randomized-rope", model={**TINY["model"], "dropout": 0.1})
    (straight,) = run([cell], tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run([cell], tmp_path / "b", StopAt(13))  # stopped after step 13; checkpoint at step 8
    (resumed,) = run([cell], tmp_path / "b")
    assert resumed.summary["resumed_from"] == 8
    assert resumed.cell_dir.metrics_path.read_text() == straight.cell_dir.metrics_path.read_text()
    assert resumed.cell_dir.log_path.read_text() == straight.cell_dir.log_path.read_text()
