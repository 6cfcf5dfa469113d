"""A CHE cell small enough for a test: ``lenbench run`` at one layer of width 16, a few steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def run_tiny_che(pe: str, out: Path, steps: int = 3, test_lengths: str = "41", batch: int = 8,
                 samples: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one parity_check cell through the CLI -> (its DONE summary, its metrics.json records)."""
    from lenbench.cli import main

    args = ["run", "--suite", "che", "--pe", pe, "--task", "parity_check", "--seeds", "0", "--profile", "quick",
            "--steps", str(steps), "--batch-size", str(batch), "--test-lengths", test_lengths, "--eval-samples",
            str(samples), "--layers", "1", "--dim", "16", "--heads", "2", "--out", str(out)]
    assert main(args) == 0
    (done,) = out.rglob("DONE")
    return json.loads(done.read_text()), json.loads((done.parent / "metrics.json").read_text())
