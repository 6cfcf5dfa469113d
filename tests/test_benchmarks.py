"""Every script in benchmarks/ runs: its ``--smoke`` mode, a small shape through every path it times.

The scripts are what the speed claims in benchmarks/README.md were measured with; without a test,
an API change breaks them silently (issue 25: ``che_train.py`` stopped at ``evaluation samples
must be >= 2``). A smoke run checks that a script runs to its end and, where it compares variants,
that they agree; it checks no speed (no timed assertions here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


def test_every_benchmark_script_has_a_smoke_test() -> None:
    # gpu_check.py's smoke run is tests/test_gpu_check.py (it writes a JSON report, checked there)
    assert SCRIPTS == ["attention.py", "che_kernels.py", "che_train.py", "dape_attention.py", "gpu_check.py"]
    for name in SCRIPTS:
        assert "--smoke" in (ROOT / "benchmarks" / name).read_text(), name


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("attention.py", ["alibi", "maxdiff"]),  # every path once at N=64, outputs compared
        ("che_kernels.py", ["residual dropout", "attention fwd+bwd"]),
        ("che_train.py", ["time to first step", "steps/s after first", "peak RSS"]),  # the real CHE cell path
        ("dape_attention.py", ["ratios fused / explicit", "ratios blocked / unblocked"]),  # outputs compared
    ],
)
def test_benchmark_smoke_mode_runs(script: str, expected: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("smoke ok"), done.stdout[-2000:]
    for text in expected:
        assert text in done.stdout, (text, done.stdout[-2000:])
