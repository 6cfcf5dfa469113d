"""Fault injection inside the test suite (fewer kills than ``tests/fault_injection.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_injection import baseline, concurrent_runs, kill_at_random, nan_loss, write_failure, write_suite


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
