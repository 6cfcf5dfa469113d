"""One grid-options definition for ``run`` and ``status``; the grid manifest ``run`` writes lets
``status --out DIR`` list every cell of the grid, pending ones included, with no flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer

from lenbench.cli import app, main
from lenbench.execute.grid import GRID_OPTIONS, overrides_from
from lenbench.execute.manifest import FOLDER

TINY = """suite: che
grid: {tasks: even_pairs, pes: alibi, seeds: 0}
profiles:
  tiny:
    model: {layers: 1, dim: 16, heads: 2, dropout: 0.0}
    train: {steps: 2, batch_size: 4, max_length: 4, checkpoint_every: 0, log_every: 1}
    eval: {lengths: [5], samples: 4, batch_size: 4}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows hold long folder names: keep rich from wrapping them in the captured output."""
    from lenbench import cli

    for console in (cli.out, cli.err):
        monkeypatch.setattr(console, "width", 1000)


def options(name: str) -> dict[str, Any]:
    """A command's options: parameter name -> (flags, help, default)."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.name: (tuple(p.opts), tuple(p.secondary_opts), p.help, p.default) for p in command.params}


def test_run_and_status_share_one_definition_of_the_grid_options() -> None:
    run, status = options("run"), options("status")
    names = [o.name for o in GRID_OPTIONS]
    assert len(names) == 19 and {"steps", "compile_model", "set_values", "profile"} <= set(names)
    assert {n: run[n] for n in names} == {n: status[n] for n in names}
    assert set(run) & set(status) == {*names, "suite", "out_dir"}
    assert run["compile_model"][:2] == (("--compile",), ("--no-compile",)) and run["set_values"][0] == ("--set",)
    assert run["profile"][3] == "auto" and run["steps"][3] is None
    # in --help order, between --suite and the run's own options
    assert list(run)[:len(names) + 1] == ["suite", *names]


def test_steps_reach_the_suite_as_one_int_at_its_path() -> None:
    assert overrides_from({"steps": 3, "profile": "quick"}) == {"profile": {"train": {"steps": 3}}}
    assert overrides_from({"lr": "1e-3", "set_values": ["grid.seeds=[3]"]}) == {
        "profile": {"train": {"lr": 1e-3}}, "grid": {"seeds": [3]}}


def status(out: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, dict[str, str]]:
    """``status --out`` -> (its stdout, whitespace runs as one space: rich wraps the title; table rows by
    cell folder name)."""
    assert main(["status", "--out", str(out), *flags]) == 0
    text = capsys.readouterr().out
    rows = {line.split("│")[1].strip().split("/")[-1]: line for line in text.splitlines() if line.count("│") >= 3}
    return " ".join(text.split()), rows


def test_status_without_flags_lists_the_recorded_grid_pending_cells_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "r"
    args = ["run", "--suite", str(suite), "--profile", "tiny", "--steps", "1", "--seeds", "0,1", "--out", str(out)]
    assert main([*args, "--dry-run"]) == 0
    assert not out.exists()  # a dry run writes nothing, no manifest either
    assert main(args) == 0
    (manifest,) = (out / FOLDER).glob("che-*.json")
    record = json.loads(manifest.read_text())
    assert record["profile"] == "tiny" and record["suite_file"] == str(suite.resolve())
    assert record["overrides"] == {"profile": {"train": {"steps": 1}}, "grid": {"seeds": "0,1"}}
    ids = [c["id"] for c in record["cells"]]
    assert [c["label"] for c in record["cells"]] == ["even_pairs-alibi-s0", "even_pairs-alibi-s1"]
    assert sorted(p.name for p in (out / "che").iterdir()) == sorted(ids)  # the manifest is no cell
    shutil.rmtree(out / "che" / ids[1])  # as if its job had not started yet
    capsys.readouterr()

    text, rows = status(out, capsys)
    assert "2 cell(s) in" in text and ": 2 in 1 recorded grid(s)" in text
    assert "1 done, 0 running, 0 failed, 1 pending" in text
    assert "done" in rows[ids[0]] and "score" in rows[ids[0]] and "pending" in rows[ids[1]]
    assert status(out, capsys, "--suite", "che")[1].keys() == rows.keys()

    # a cell folder no recorded grid names is listed too; the same grid run again rewrites its manifest
    assert main(["run", "--suite", str(suite), "--profile", "tiny", "--steps", "1", "--out", str(out)]) == 0
    (out / FOLDER / "extra.json").write_text("{not json")
    capsys.readouterr()
    assert main(["status", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "extra.json is unreadable" in captured.err
    assert ": 2 in 2 recorded grid(s)" in " ".join(captured.out.split())  # seed 0 is in both grids, once
    assert len(list((out / FOLDER).glob("che-*.json"))) == 2

    # with the run's flags, status expands that grid as before
    text, rows = status(out, capsys, "--suite", str(suite), "--profile", "tiny", "--steps", "1", "--seeds", "0-2")
    assert "che: 3 cell(s) of the grid in" in text and "1 done, 0 running, 0 failed, 2 pending" in text


def test_status_falls_back_to_the_cell_folders_without_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "r"
    assert main(["run", "--suite", str(suite), "--profile", "tiny", "--steps", "1", "--out", str(out)]) == 0
    shutil.rmtree(out / FOLDER)
    capsys.readouterr()
    text, rows = status(out, capsys)
    assert "1 cell folder(s) in" in text and "1 done" in text and len(rows) == 1
