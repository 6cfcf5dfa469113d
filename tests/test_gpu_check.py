"""``benchmarks/gpu_check.py --smoke``: every part of the prepared GPU run, on the CPU at toy sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gpu_check.json"
    assert load_script().main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert set(parts) == {"environment", "parity", "che", "ppl", "dape_fused", "timing"}  # JSON keys sorted
    assert not [name for name, part in parts.items() if "error" in part]
    checks = parts["parity"]["checks"]
    assert checks["dape_fused"]["ok"] and checks["bf16"]["ok"] and "skipped" in checks["flex"]
    assert parts["parity"]["worst_backend_error"] < 1e-4
    assert {(r["backend"], r["pe"]) for r in parts["parity"]["backends_vs_explicit"]} >= {
        ("paper", "dape-kerple"), ("blocked_bias", "fire"), ("sdpa", "rope")}
    assert parts["che"]["status"] == "done" and parts["che"]["run"]["precision"] == "fp32"
    assert set(parts["ppl"]["pes"]) == {"rope", "dape-kerple"}
    cells = parts["timing"]["cells"]  # one interleaved group per mode, each with a paired ratio
    assert {(c["mode"], c["status"]) for c in cells} == {("fwd", "ok"), ("train", "ok")}
    assert all(set(c["ms"]) == {"kerple", "dape-kerple"} and c["rounds"] == 3 for c in cells)
    for c in cells:
        ratio = c["kerple_over_dape_kerple"]
        assert ratio["ci95"][0] <= ratio["median"] <= ratio["ci95"][1]
    if "rows" in parts["dape_fused"]:
        assert parts["dape_fused"]["rows"][0]["output_error"] < 1e-5


def test_without_a_gpu_the_real_run_refuses(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert load_script().main(["--out", str(tmp_path / "x.json")]) == 2
