"""CHE suite end to end: it learns, finished cells are skipped, an interrupted cell resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import StopAt

from lenbench.config import load_suite
from lenbench.executors import run_in_process
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, load_suite_module

TINY = {
    "model": {"layers": 2, "dim": 32, "heads": 4, "dropout": 0.0},
    "train": {"steps": 24, "batch_size": 16, "lr": 1e-3, "max_length": 8, "checkpoint_every": 8, "log_every": 4},
    "eval": {"lengths": [9, 12], "samples": 32, "batch_size": 16},
}


def cells(task: str, pe: str, seeds: str = "0", **profile: Any) -> list:
    suite = load_suite("che")
    overrides = {"grid": {"tasks": task, "pes": pe, "seeds": seeds}, "profile": {**TINY, **profile}}
    return load_suite_module("che").expand(suite, "quick", overrides)


def run(cell_list: list, root: Path, reporter: Any = None) -> list:
    return run_in_process(cell_list, ResultStore(root), load_suite_module("che"), reporter or SilentReporter())


def test_tiny_model_learns_even_pairs(tmp_path: Path) -> None:
    # Measured over seeds 0-2: 0.994, 1.0, 1.0 final train accuracy (about 1.5 s each on 2 CPU cores).
    profile = {
        "model": {"layers": 2, "dim": 64, "heads": 4, "dropout": 0.0},
        "train": {"steps": 500, "batch_size": 64, "lr": 1e-3, "max_length": 8, "checkpoint_every": 0, "log_every": 10},
    }
    (outcome,) = run(cells("even_pairs", "sinusoidal", **profile), tmp_path)
    log = [json.loads(x) for x in outcome.cell_dir.log_path.read_text().splitlines()]
    final_acc = sum(r["acc"] for r in log[-5:]) / 5
    assert final_acc > 0.9, log[-5:]


def test_cells_records_and_skip(tmp_path: Path) -> None:
    grid = cells("parity_check,reverse_string", "alibi,dape", seeds="0,1")
    assert len(grid) == 8 and len({c.label for c in grid}) == 8
    first = run(grid[:2], tmp_path)
    assert [o.status for o in first] == ["done", "done"]
    records = json.loads(first[0].cell_dir.metrics_path.read_text())
    accs = [r for r in records if r["metric"] == "accuracy"]
    assert [r["eval_len"] for r in accs] == [9, 12]
    score = next(r for r in records if r["metric"] == "score")["value"]
    assert score == pytest.approx(sum(r["value"] for r in accs) / 2)
    assert {"config.yaml", "manifest.json", "metrics.json", "train_log.jsonl", "DONE"} <= {
        p.name for p in first[0].cell_dir.path.iterdir()
    }
    reporter = SilentReporter()
    again = run(grid[:2], tmp_path, reporter)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert any("already done" in m for m in reporter.messages)
    # a changed config is a new cell, not a reuse of the old one
    changed = cells("parity_check", "alibi", train={**TINY["train"], "steps": 12})
    assert run(changed, tmp_path)[0].cell_dir.path != first[0].cell_dir.path


@pytest.mark.parametrize("pe", ["dape", "sinusoidal"])
def test_resume_matches_uninterrupted_run(tmp_path: Path, pe: str) -> None:
    (cell,) = cells("reverse_string", pe)
    (straight,) = run([cell], tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run([cell], tmp_path / "b", StopAt(13))  # killed after step 13; checkpoint at step 8
    partial = ResultStore(tmp_path / "b").cell("che", cell.label, cell.config)
    assert partial.status() == "partial"
    (resumed,) = run([cell], tmp_path / "b")
    assert resumed.summary["resumed_from"] == 8
    assert resumed.cell_dir.metrics_path.read_text() == straight.cell_dir.metrics_path.read_text()
    assert resumed.cell_dir.log_path.read_text() == straight.cell_dir.log_path.read_text()
