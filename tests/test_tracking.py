"""Experiment tracking: what TensorBoard and W&B (offline) receive is the cell's own log and metrics."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from lenbench.cli import main
from lenbench.execute.tracking import grid_group
from lenbench.results import CellDir, ResultStore

STEPS = 30


def tiny_run(root: Path, log: str, pe: str = "alibi") -> list[str]:
    return ["run", "--suite", "che", "--profile", "quick", "--task", "even_pairs", "--pe", pe, "--seeds", "0",
            "--steps", str(STEPS), "--batch-size", "8", "--layers", "1", "--dim", "16", "--heads", "2",
            "--test-lengths", "41-60:4", "--eval-samples", "8", "--set", "profile.train.max_length=8",
            "--set", "profile.train.log_every=10", "--set", "profile.eval.train_samples=8", "--out", str(root),
            "--log", log]


def logged_losses(cell: CellDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, cell.log_path.read_text().splitlines())}


def per_length(cell: CellDir, metric: str) -> dict[int, float]:
    return {r["eval_len"]: r["value"] for r in cell.read_metrics() if r["metric"] == metric}


def test_tensorboard_events_hold_the_loss_curve_and_per_length_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(tiny_run(tmp_path, "tensorboard")) == 0
    (cell,) = ResultStore(tmp_path).cells("che")
    events = EventAccumulator(str(cell.path / "tensorboard"))
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(loss) == list(range(1, STEPS + 1))  # every step, not only the logged ones
    for step, value in logged_losses(cell).items():
        assert loss[step] == pytest.approx(value, rel=1e-6)  # event scalars are float32
    accuracy = {e.step: e.value for e in events.Scalars("eval/accuracy")}
    assert accuracy == pytest.approx(per_length(cell, "accuracy"), rel=1e-6) and set(accuracy) == {41, 45, 49, 53, 57}
    (score,) = events.Scalars("cell/score")
    assert score.value == pytest.approx(json.loads(cell.done_path.read_text())["score"], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's ``.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log framing (32 KiB blocks; each chunk: crc32 u32, length u16, type u8; 1 full, 2-4 split)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts, out = 7, [], []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer
            pos += left
            continue
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = []
    return out


def test_wandb_offline_run_per_cell_grouped_by_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    assert main(tiny_run(tmp_path / "res", "wandb", pe="alibi,nope")) == 0
    cells = {c.path.name: c for c in ResultStore(tmp_path / "res").cells("che")}
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    groups = set()
    for path in runs:
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        cell = cells[run.run_id]  # one run per cell, id'd by its folder
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        assert config["task"] == "even_pairs" and config["train"]["steps"] == STEPS
        assert run.display_name == run.run_id.rsplit("-", 1)[0] == f"even_pairs-{config['pe']}-s0"  # the label
        groups.add(run.run_group)
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for r in records if r.WhichOneof("record_type") == "history"]
        loss = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
        assert sorted(loss) == list(range(1, STEPS + 1))
        for step, value in logged_losses(cell).items():
            assert loss[step] == pytest.approx(value, rel=1e-12)
        accuracy = {row["eval/length"]: row["eval/accuracy"] for row in rows if "eval/accuracy" in row}
        assert accuracy == pytest.approx(per_length(cell, "accuracy"), rel=1e-12)
        (done,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
        assert done.exit_code == 0
    assert len(groups) == 1 and groups.pop().startswith("che-")


def test_grid_group_names_the_grid_not_the_order() -> None:
    from test_che_suite import cells

    grid = cells("even_pairs,parity_check", "alibi")
    assert grid_group(grid) == grid_group(list(reversed(grid))) != grid_group(grid[:1])


def test_missing_tracker_package_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("wandb", "tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # as if lenbench[tracking] were not installed
        assert main(tiny_run(tmp_path, name)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"lenbench: error: --log {name} needs the {name} package: pip install 'lenbench[tracking]'"]
    assert main(tiny_run(tmp_path, "mlflow")) == 2
    assert "--log 'mlflow' is not a tracker" in capsys.readouterr().err
    assert not (tmp_path / "che").exists()  # refused before any cell ran
