"""Workers die with their parent: a SIGKILLed grid leaves no process behind and resumes with nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenbench.results import CellDir, ResultStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

GRANDCHILD = """
import os, sys, threading, time
from lenbench.execute import lifeline
how = sys.argv[1]
if how == "watchdog":  # the path taken where prctl is missing, exercised here directly
    threading.Thread(target=lifeline._watch, args=(os.getppid(), 0.1), daemon=True).start()
else:
    assert lifeline.die_with_parent(os.getppid()) == how
print("armed", flush=True)
time.sleep(60)
"""
CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
def test_a_process_ends_with_its_killed_parent(how: str) -> None:
    if how == "pdeathsig" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    parent = subprocess.Popen([sys.executable, "-c", CHILD, GRANDCHILD, how], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    worker = int(parent.stdout.readline())  # type: ignore[union-attr]
    assert alive(worker)
    parent.kill()
    parent.wait()
    wait_until(lambda: not alive(worker), 10, f"the {how} worker to exit")


def test_die_with_parent_exits_when_the_parent_is_already_gone() -> None:
    code = "from lenbench.execute.lifeline import die_with_parent; die_with_parent(1); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 1 and "survived" not in done.stdout
    code = "import os; from lenbench.execute.lifeline import die_with_parent; print(die_with_parent(os.getppid()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    expected = "pdeathsig" if sys.platform.startswith("linux") else "watchdog"
    assert done.returncode == 0 and done.stdout.split() == [expected]  # its parent lives: it goes on


def grid_command(root: Path) -> list[str]:
    """4 tiny CHE cells on 2 local workers, long enough (300 steps, checkpoint every 20) to kill mid-run."""
    return [sys.executable, "-m", "lenbench", "run", "--suite", "che", "--profile", "quick",
            "--task", "even_pairs,parity_check", "--pe", "alibi,nope", "--seeds", "0", "--steps", "300",
            "--batch-size", "8", "--layers", "1", "--dim", "16", "--heads", "2", "--test-lengths", "41-60:2",
            "--eval-samples", "8", "--set", "profile.train.checkpoint_every=20", "--set", "profile.train.max_length=8",
            "--set", "profile.eval.train_samples=8", "--executor", "local", "--workers", "2", "--out", str(root)]


def test_killed_local_grid_leaves_no_worker_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "res"
    grid = subprocess.Popen(grid_command(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)  # its own group: our kill reaches the parent alone
    try:
        def folders() -> list[CellDir]:
            return list(ResultStore(root).cells("che"))

        def one_done_one_midway() -> bool:
            dirs = folders()
            done = [d for d in dirs if d.done_path.exists()]
            midway = [d for d in dirs if d.checkpoint_path.exists() and not d.done_path.exists()]
            return bool(done) and bool(midway)

        wait_until(one_done_one_midway, 300, "a finished cell and one with a checkpoint")
        workers = descendants(grid.pid)
        assert workers, "the grid runs no worker process"
        finished = {d.path: (d.done_path.stat().st_mtime_ns, d.metrics_path.read_text())
                    for d in folders() if d.done_path.exists()}
        grid.kill()  # SIGKILL: no handler runs in the parent
        grid.wait()
        wait_until(lambda: not any(alive(p) for p in workers), 10, f"workers {sorted(workers)} to exit")
        interrupted = [d.path for d in folders() if d.checkpoint_path.exists() and not d.done_path.exists()]
    finally:
        if grid.poll() is None:
            grid.kill()
    assert finished and interrupted, "the kill interrupted no cell"
    again = subprocess.run(grid_command(root), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    dirs = list(ResultStore(root).cells("che"))
    assert len(dirs) == 4 and all(d.done_path.exists() for d in dirs)
    by_path = {d.path: d for d in dirs}
    for path, (mtime, metrics) in finished.items():  # cells finished before the kill were skipped, untouched
        assert by_path[path].done_path.stat().st_mtime_ns == mtime and by_path[path].metrics_path.read_text() == metrics
    for path in interrupted:  # the interrupted cells went on from their checkpoints (every 20 steps)
        assert json.loads(by_path[path].done_path.read_text())["resumed_from"] >= 20
