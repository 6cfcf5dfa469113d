"""Every cell records what actually ran (issue 26 item 3): precision, attention backends, and where a
randomized PE's range L was exceeded; table titles name precision and backends when they matter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from lenbench.pe import PEContext
from lenbench.pe.base import overflow_lengths, position_limits, reset_overflow
from lenbench.pe.bias import RandomizedALiBi
from lenbench.present.conditions import run_conditions


def test_overflow_is_remembered_per_sequence_length() -> None:
    """L = 8: 10 tokens cannot take 10 distinct positions from [0, 8): arange, and the length is kept."""
    pe = RandomizedALiBi(PEContext(dim=16, heads=2, causal=True, train_length=4, max_length=32), max_position=8)
    assert pe.positions(5, torch.device("cpu")).max() < 8 and pe.overflowed == set()
    assert pe.positions(10, torch.device("cpu")).tolist() == list(range(10))
    pe.positions(12, torch.device("cpu"))
    layer = torch.nn.ModuleList([pe])
    assert overflow_lengths(layer) == [10, 12] and position_limits(layer) == [8]
    reset_overflow(layer)
    assert overflow_lengths(layer) == []


def test_che_cell_records_precision_backends_and_overflow(tmp_path: Path) -> None:
    """parity_check at N = 41 and 60 is 42 and 61 tokens; with L = 50 only N = 60 falls back."""
    from tiny_runs import run_tiny_che

    summary, records = run_tiny_che("randomized-alibi:max_position=50", tmp_path / "results", test_lengths="41,60")
    assert summary["run"]["precision"] == "fp32" and summary["run"]["device"] == "cpu"
    assert summary["randomized_overflow"] == {"range": [50], "train_sequence_lengths": [], "test_lengths": [60]}
    overflow = {r["eval_len"]: r["overflow"] for r in records if r["metric"] == "accuracy"}
    assert overflow == {41: False, 60: True}
    assert all(r["precision"] == "fp32" and r["backend"] for r in records)
    assert {r["backend"] for r in records} == {summary["run"]["backend"]} and summary["run"]["train_backend"]


def frame(rows: list[tuple[str, str, str | None, str | None]]) -> pd.DataFrame:
    return pd.DataFrame([{"cell": c, "pe": pe, "precision": p, "backend": b} for c, pe, p, b in rows])


def test_titles_name_conditions_only_when_they_matter() -> None:
    same = frame([("a", "alibi", "fp32", "small"), ("b", "dape", "fp32", "dape_fused"), ("b", "dape", "fp32", None)])
    assert run_conditions(same) == ""  # fp32 everywhere; different PEs on different exact kernels
    assert run_conditions(frame([("a", "alibi", "bf16", "flex")])) == "; bf16 autocast (position terms fp32)"
    mixed = frame([("a", "alibi", "fp32", "flex"), ("b", "alibi", "bf16", "flex"), ("c", "rope", "bf16", "sdpa")])
    assert run_conditions(mixed) == "; precision bf16 autocast (position terms fp32) (2 cells) / fp32 (1 cells)"
    fallback = frame([("a", "dape", "fp32", "dape_fused"), ("b", "dape", "fp32", "explicit")])
    assert run_conditions(fallback) == "; attention backends differ: dape on dape_fused / explicit"
    old = pd.DataFrame([{"cell": "a", "pe": "alibi"}])  # records from before these fields
    assert run_conditions(old) == ""


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_che_table_title_names_a_bf16_run(tmp_path: Path, precision: str) -> None:
    from lenbench.results import ResultStore
    from lenbench.suites.che.tables import che_tables

    store = ResultStore(tmp_path)
    for seed in (0, 1):
        cfg = {"suite": "che", "task": "parity_check", "pe": "alibi", "seed": seed,
               "train": {"max_length": 40, "min_length": 1, "lr": 1e-3}}
        cell = store.cell("che", f"c{seed}", cfg)
        cell.prepare(cfg, {})
        common = {"suite": "che", "task": "parity_check", "pe": "alibi", "seed": seed, "train_len": 40, "lr": 1e-3,
                  "precision": precision, "backend": "small"}
        cell.write_metrics([
            {**common, "eval_len": 41, "metric": "accuracy", "value": 0.5, "se": 0.1},
            {**common, "eval_len": None, "metric": "score", "value": 0.5, "se": 0.1, "fit": True, "fit_threshold": 0.9},
            {**common, "eval_len": None, "metric": "train_score", "value": 0.95, "se": 0.01, "fit": True,
             "fit_threshold": 0.9},
            {**common, "eval_len": None, "metric": "majority_score", "value": 0.5, "se": None},
        ])
        cell.mark_done({})
    from lenbench.report.collect import collect

    tables, _ = che_tables(collect(tmp_path).frame)
    named = [("bf16 autocast" in t.title) for t in tables]
    assert named == [precision == "bf16"] * len(tables)
