"""The result store: atomic files, config hashing, locks, log truncation on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenbench.errors import LenbenchError
from lenbench.results import CellBusy, ResultStore, atomic_write_json, config_hash


def test_config_hash_is_canonical_and_sensitive() -> None:
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})


def test_cell_lifecycle(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    cfg = {"suite": "che", "steps": 3}
    cell = store.cell("che", "parity-dape-s0", cfg)
    assert cell.status() == "pending" and not cell.is_done(cfg)
    cell.prepare(cfg, {"device": "cpu"})
    assert cell.read_config() == cfg
    cell.write_metrics([{"metric": "accuracy", "value": 0.5}])
    cell.mark_done({"score": 0.5})
    assert cell.is_done(cfg) and not cell.is_done({**cfg, "steps": 4})
    assert store.cell("che", "parity-dape-s0", {**cfg, "steps": 4}).path != cell.path
    assert [c.path for c in store.cells("che")] == [cell.path]
    assert not list(cell.path.glob(".*.tmp-*"))


def test_prepare_refuses_a_different_config(tmp_path: Path) -> None:
    cell = ResultStore(tmp_path).cell("che", "x", {"a": 1})
    cell.prepare({"a": 1}, {})
    with pytest.raises(LenbenchError, match="different config"):
        cell.prepare({"a": 2}, {})


def test_lock_is_exclusive(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    a = store.cell("che", "x", {"a": 1})
    b = store.cell("che", "x", {"a": 1})
    with a.lock():
        with pytest.raises(CellBusy):
            with b.lock():
                pass
    with b.lock():
        pass


def test_truncate_log_drops_later_steps_and_torn_lines(tmp_path: Path) -> None:
    cell = ResultStore(tmp_path).cell("che", "x", {})
    cell.path.mkdir(parents=True)
    for step in (10, 20, 30):
        cell.append_log({"step": step, "loss": 1.0})
    with open(cell.log_path, "a") as fh:
        fh.write('{"step": 40, "lo')
    cell.truncate_log(20)
    steps = [json.loads(line)["step"] for line in cell.log_path.read_text().splitlines()]
    assert steps == [10, 20]


def test_write_failure_names_the_path_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(LenbenchError, match="metrics.json.*No space"):
        atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


def test_corrupted_files_give_clear_errors(tmp_path: Path) -> None:
    cell = ResultStore(tmp_path).cell("che", "x", {})
    cell.path.mkdir(parents=True)
    cell.metrics_path.write_text("{not json")
    with pytest.raises(LenbenchError, match="corrupted metrics"):
        cell.read_metrics()
    cell.checkpoint_path.write_bytes(b"garbage")
    with pytest.raises(LenbenchError, match="corrupted checkpoint"):
        cell.load_checkpoint()


def test_environment_manifest_has_versions_git_and_device() -> None:
    import platform
    import re

    import torch

    import lenbench
    from lenbench.results import environment_manifest

    m = environment_manifest("cpu")
    assert (m["device"], m["torch"], m["lenbench"]) == ("cpu", torch.__version__, lenbench.__version__)
    assert m["python"] == platform.python_version() and m["numpy"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", m["git"]), m["git"]


def test_done_marker_is_renamed_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cell = ResultStore(tmp_path).cell("che", "x", {})
    cell.prepare({}, {})
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        assert not Path(dst).exists() or Path(dst).name != "DONE"
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", spy)
    cell.mark_done({"score": 1.0})
    assert renames == [(".DONE.tmp-" + str(os.getpid()), "DONE")]
    assert json.loads(cell.done_path.read_text()) == {"score": 1.0}
