"""Executors: a local pool and submitit jobs give the sequential run's results; DDP writes one ordinary cell."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_che_suite import cells

from lenbench.cli import main
from lenbench.execute.cell import run_cell_once
from lenbench.execute.inprocess import run_in_process
from lenbench.execute.pool import LocalPool, cpu_cores
from lenbench.execute.slurm import CellJob, SlurmArray, parse_time
from lenbench.execute.status import counts, folder_states, grid_states
from lenbench.results import CellDir, ResultStore
from lenbench.suites import SilentReporter, get_suite

GRID = ("even_pairs,parity_check,reverse_string", "alibi,nope", "0")  # 6 cells
LONG = {"steps": 200, "batch_size": 16, "lr": 1e-3, "max_length": 8, "checkpoint_every": 10, "log_every": 10}


def sequential(grid: list, root: Path, threads: int) -> dict[str, str]:
    """Run ``grid`` in this process with ``threads`` torch threads: label -> metrics.json text."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outcomes = run_in_process(grid, ResultStore(root), get_suite("che"), SilentReporter())
    finally:
        torch.set_num_threads(before)
    return {o.cell.label: o.cell_dir.metrics_path.read_text() for o in outcomes}


def test_local_pool_matches_sequential_run(tmp_path: Path) -> None:
    grid = cells(*GRID)
    assert len(grid) == 6
    expected = sequential(grid, tmp_path / "seq", max(1, cpu_cores() // 2))  # the pool's threads per worker
    outcomes = LocalPool(2).run(grid, ResultStore(tmp_path / "pool"))
    assert [o.status for o in outcomes] == ["done"] * 6
    assert {o.cell.label: o.cell_dir.metrics_path.read_text() for o in outcomes} == expected
    for o in outcomes:
        log = (o.cell_dir.path / "run.log").read_text()
        assert "threads" in log and log.rstrip().endswith("finished"), log
        assert o.cell_dir.path.parent == tmp_path / "pool" / "che"
    again = LocalPool(2).run(grid, ResultStore(tmp_path / "pool"))
    assert [o.status for o in again] == ["skipped"] * 6


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def task_pid(cell_dir: CellDir) -> int:
    """The pid of the process running the cell now: the last ``start ... pid N`` line of its run.log."""
    starts = [line for line in (cell_dir.path / "run.log").read_text().splitlines() if " start on " in line]
    return int(starts[-1].split(" pid ")[1].split()[0])


def test_submitit_local_jobs_killed_then_resubmitted(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        # pytest started in the background by a non-interactive shell ignores SIGINT, and its children
        # inherit that: the cancel below (SIGINT, like scancel) would never stop a job
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    grid = cells("even_pairs,parity_check", "alibi", train=LONG)
    expected = sequential(grid, tmp_path / "seq", 1)
    store = ResultStore(tmp_path / "res")
    # time 30 min: submitit sees the signal below as a preemption, not a timeout (both requeue)
    first = SlurmArray(cluster="local", gpus_per_cell=0, cpus_per_cell=1, time="30", folder=tmp_path / "jobs")
    assert [o.status for o in first.run(grid, store)] == ["submitted", "submitted"]
    killed, preempted = (store.cell("che", c.label, c.config) for c in grid)
    # each job is signalled as soon as its own first checkpoint exists: waiting for both first let the
    # faster job finish all its steps while the other was still starting (seen under a loaded full run)
    wait_for(killed.checkpoint_path.exists, 120, "the first cell's checkpoint")
    first.jobs[0].cancel()  # SIGINT, like scancel: the cell stops, its checkpoint stays
    wait_for(preempted.checkpoint_path.exists, 120, "the second cell's checkpoint")
    # preemption: Slurm (here submitit's local controller) signals the task with SIGUSR2; submitit calls
    # CellJob.checkpoint, requeues the same cell, and the requeued task resumes from the cell's checkpoint
    os.kill(task_pid(preempted), signal.SIGUSR2)
    survivor = first.jobs[1].result()
    assert survivor.status == "done" and survivor.summary["resumed_from"] >= LONG["checkpoint_every"], survivor
    assert "Requeued job" in first.jobs[1].stderr() + first.jobs[1].stdout()
    assert (preempted.path / "run.log").read_text().count(" start on ") == 2
    wait_for(lambda: first.jobs[0].done(), 60, "the cancelled job to exit")
    (state, _) = grid_states(grid, store)
    told_job = first.jobs[0].stderr() or ""
    assert state.state == "pending" and "resumes from its checkpoint" in state.detail, (
        state, (killed.path / "run.log").read_text(), told_job[-2000:])
    again = SlurmArray(cluster="local", gpus_per_cell=0, cpus_per_cell=1, time="10", folder=tmp_path / "jobs")
    said = Console(file=io.StringIO(), width=200)
    assert [o.status for o in again.run(grid, store, said)] == ["submitted", "skipped"]  # only the unfinished cell
    told = said.file.getvalue()  # type: ignore[attr-defined]
    assert "submitted 1 cell(s)" in told and f"watch: lenbench status --out {store.root}" in told, told
    resumed = again.jobs[0].result()
    assert resumed.status == "done" and resumed.summary["resumed_from"] >= LONG["checkpoint_every"]
    assert {c.label: store.cell("che", c.label, c.config).metrics_path.read_text() for c in grid} == expected
    assert counts(grid_states(grid, store))["done"] == 2
    # preemption: submitit requeues what checkpoint() returns, the same cell (which resumes from disk)
    delayed = CellJob(grid[0], str(store.root)).checkpoint()
    assert delayed.function == CellJob(grid[0], str(store.root))


def test_parse_time() -> None:
    assert parse_time("08:00:00") == 480 and parse_time("90") == 90 and parse_time("1-00:00:00") == 1440
    assert parse_time("00:00:30") == 1 and parse_time("2:30") == 3 and parse_time("1-2") == 26 * 60
    for bad in ("8h", "0", "1:2:3:4"):
        with pytest.raises(Exception, match="--time"):
            parse_time(bad)


def test_status_reads_done_running_failed_pending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = cells("even_pairs", "alibi,nope,sinusoidal,rope")
    store = ResultStore(tmp_path)
    assert run_cell_once(grid[0], store, get_suite("che"), SilentReporter()).status == "done"
    failed = store.cell("che", grid[1].label, grid[1].config)
    failed.prepare(grid[1].config, {})
    failed.mark_failed("loss is nan", 7)
    running = store.cell("che", grid[2].label, grid[2].config)
    running.prepare(grid[2].config, {})
    with running.lock():
        states = grid_states(grid, store)
        assert [s.state for s in states] == ["done", "failed", "running", "pending"]
        assert states[1].detail == "loss is nan (step 7)"
        assert main(["status", "--out", str(tmp_path), "--suite", "che"]) == 0
        table = capsys.readouterr().out
        # the probe released its shared lock: the cell is still ours, and nobody else's
        assert run_cell_once(grid[2], store, get_suite("che"), SilentReporter()).status == "busy"
    assert [s.state for s in folder_states(store)] == ["done", "failed", "pending"]  # lock released: stopped
    rows = {line.split()[1].split("/")[1].rsplit("-", 1)[0]: line for line in table.splitlines() if "che/" in line}
    assert "done" in rows[grid[0].label] and "score" in rows[grid[0].label]
    assert "failed" in rows[grid[1].label] and "running" in rows[grid[2].label]
    assert "1 done, 1 running, 1 failed, 0 pending" in table


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lenbench: error: "), err
    return err[0]


def test_bad_executor_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ["run", "--out", str(tmp_path), "--task", "even_pairs"]
    assert "--workers must be >= 1" in one_line_error([*run, "--executor", "local", "--workers", "0"], capsys)
    assert "unknown executor 'foo'" in one_line_error([*run, "--executor", "foo"], capsys)
    assert "--executor local only" in one_line_error([*run, "--workers", "2"], capsys)
    assert "--executor slurm only" in one_line_error([*run, "--partition", "gpu"], capsys)
    bad_time = [*run, "--executor", "slurm", "--time", "8h"]
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if lenbench[slurm] were not installed
    assert "pip install 'lenbench[slurm]'" in one_line_error(bad_time, capsys)
    monkeypatch.delitem(sys.modules, "submitit")
    assert "--time '8h'" in one_line_error(bad_time, capsys)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "drop --executor local" in one_line_error([*run, "--executor", "local"], capsys)
    assert "suite 'che' runs without it" in one_line_error(run, capsys)  # before joining any process group


PPL = ["--suite", "ppl", "--profile", "quick", "--pe", "dape", "--model", "tiny", "--steps", "6", "--batch-size", "4",
       "--train-length", "32", "--eval-lengths", "32,64", "--set", "profile.train.micro_batch_size=1"]


def test_ddp_two_gloo_ranks_write_one_ordinary_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENBENCH_CACHE", str(tmp_path / "cache"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lenbench"]
    done = subprocess.run([*launch, "run", *PPL, "--out", str(tmp_path / "ddp")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data-parallel over 2 ranks (gloo)" in done.stderr
    assert done.stdout.count("trained at 32") == 1  # rank 0 alone prints
    assert main(["run", *PPL, "--out", str(tmp_path / "single")]) == 0
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [".grids", "ppl"]
    assert len(list((tmp_path / "ddp" / ".grids").iterdir())) == 1  # the grid manifest, written by rank 0 alone
    (ddp,) = list((tmp_path / "ddp" / "ppl").iterdir())  # one cell folder, written by rank 0
    (single,) = list((tmp_path / "single" / "ppl").iterdir())
    assert ddp.name == single.name  # the same cell config, so the same folder name
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    log = [json.loads(line) for line in (ddp / "train_log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(r["loss"]) for r in log)

    def schema(folder: Path) -> list[tuple]:
        records = json.loads((folder / "metrics.json").read_text())
        return sorted((r["eval_len"], r["metric"], tuple(sorted(r))) for r in records)

    assert schema(ddp) == schema(single)
    assert set(json.loads((ddp / "DONE").read_text())) == set(json.loads((single / "DONE").read_text()))
    manifest = json.loads((ddp / "manifest.json").read_text())
    # the global batch of 4: 2 per rank, as 2 accumulated micro-batches of 1 (one process: 4 of 1)
    assert manifest["data_parallel"] == {"world_size": 2, "backend": "gloo", "batch_per_rank": 2,
                                         "micro_batch_size": 1, "accumulation": 2}
    assert json.loads((ddp / "DONE").read_text())["batch"] == {"global": 4, "per_rank": 2, "micro": 1,
                                                                "accumulation": 2, "world_size": 2}
    assert json.loads((single / "DONE").read_text())["batch"]["accumulation"] == 4


def test_grid_progress_counts_done_running_failed_with_an_eta() -> None:
    from lenbench.progress import GridProgress

    console = Console(file=io.StringIO(), width=160, force_terminal=False)
    view = GridProgress(console, total=3)
    with view:
        view.started("a")
        view.event("a", "train_start", ("a", 10, 0))
        view.event("a", "train_step", (5, {"loss": 0.5}))
        view.started("b")
        view.finished("a", "done", "score 90.0%")
        view.finished("b", "failed", "loss is nan at step 3")
        view.started("c")
        row = view.progress.tasks[0]
        assert row.fields["info"] == "1 done · 1 running · 1 failed" and row.completed == 2
        assert len(view.progress.tasks) == 1  # finished cells' rows are gone
        assert "ETA" in str(view.progress.columns[5].text_format)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "done a: score 90.0%" in printed and "failed b: loss is nan at step 3" in printed
