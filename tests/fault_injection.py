"""Fault injection: kill -9 at random points and inside writes, concurrent runs, NaN loss, write
failures, config drift and malformed input.

Each check runs the real command line in subprocesses (``python -m lenbench``) on a tiny CHE grid
and compares against an uninterrupted run with the same seeds (CPU runs are deterministic). The grid
trains with dropout, so a resumed cell matches only if the torch RNG state was restored too.

    python tests/fault_injection.py --kills 20 --write tests/RELIABILITY.md

``tests/test_reliability.py`` runs the same checks with fewer kills inside the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# A 6-cell grid (3 tasks x 2 PEs) small enough to run in seconds, with checkpoints every 10 steps.
TINY_SUITE = {
    "suite": "che",
    "description": "fault-injection grid",
    "grid": {"tasks": "even_pairs,parity_check,reverse_string", "pes": "alibi,dape", "seeds": "0"},
    "profiles": {
        "tiny": {
            "model": {"layers": 2, "dim": 32, "heads": 4, "dropout": 0.1},
            "train": {"steps": 60, "batch_size": 16, "lr": 1e-3, "max_length": 8, "checkpoint_every": 10,
                      "log_every": 5},
            "eval": {"lengths": [9, 12, 16, 20], "samples": 32, "batch_size": 8},
            "pe_defaults": {"hidden": 8},
        }
    },
}


@dataclass
class Check:
    """One fault scenario: how often it was tried and what held."""

    name: str
    tried: int = 0
    passed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tried > 0 and self.tried == self.passed


def write_suite(folder: Path) -> Path:
    path = folder / "tiny_che.yaml"
    path.write_text(yaml.safe_dump(TINY_SUITE, sort_keys=False))
    return path


def command(suite: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lenbench", "run", "--suite", str(suite), "--profile", "tiny", "--out", str(out),
            *extra]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def cell_files(root: Path) -> dict[str, dict[str, str]]:
    """Per cell label (folder name): the text of metrics.json and train_log.jsonl."""
    out: dict[str, dict[str, str]] = {}
    for cell in sorted((root / "che").iterdir()):
        out[cell.name] = {name: (cell / name).read_text() for name in ("metrics.json", "train_log.jsonl")}
    return out


def torn_files(root: Path) -> list[str]:
    """Files that do not parse, and temporaries left behind."""
    bad = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if ".tmp-" in path.name:
            bad.append(f"temporary left: {path}")
        elif path.suffix == ".json" or path.name in ("DONE", "FAILED"):
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError:
                bad.append(f"torn JSON: {path}")
        elif path.suffix == ".yaml":
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                bad.append(f"torn YAML: {path}")
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    bad.append(f"torn log line: {path}")
                    break
    return bad


def torn_results(root: Path) -> list[str]:
    """What :func:`torn_files` finds that a kill may never leave: a torn file under its real name.

    A kill may leave a temporary (``.NAME.tmp-PID``, removed by the next run of the cell) and a torn
    last line of ``train_log.jsonl`` (an append; dropped when the cell resumes), nothing else.
    """
    return [x for x in torn_files(root) if not x.startswith(("temporary left", "torn log line"))]


def all_done(root: Path) -> bool:
    cells = list((root / "che").iterdir()) if (root / "che").is_dir() else []
    return len(cells) == 6 and all((c / "DONE").exists() for c in cells)


def baseline(work: Path, suite: Path) -> tuple[dict[str, dict[str, str]], float]:
    start = time.time()
    proc = run(command(suite, work / "baseline"))
    if proc.returncode:
        raise RuntimeError(f"baseline run failed: {proc.stderr[-2000:]}")
    return cell_files(work / "baseline"), time.time() - start


def kill_at_random(work: Path, suite: Path, kills: int, reference: dict[str, dict[str, str]], span: float,
                   seed: int = 0) -> Check:
    """Kill -9 the run at random times until ``kills`` kills happened; rerun each grid to completion.

    A kill counts as survived when the rerun of its grid ends identical to the reference.
    """
    check = Check("kill -9 at random points, then rerun")
    rng = random.Random(seed)
    grids = 0
    while check.tried < kills:
        grids += 1
        out = work / f"killed-{grids}"
        in_grid = 0
        while not all_done(out) and check.tried < kills:
            proc = subprocess.Popen(command(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            delay = rng.uniform(0.5, span)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                check.tried += 1
                in_grid += 1
                phases = sorted({_phase(c) for c in (out / "che").iterdir()}) if (out / "che").is_dir() else []
                check.notes.append(f"kill {check.tried} (grid {grids}) after {delay:.1f} s; cells: {phases}")
        final = run(command(suite, out))
        torn = torn_files(out)
        if final.returncode == 0 and all_done(out) and not torn and cell_files(out) == reference:
            check.passed += in_grid
        else:
            check.notes.append(f"grid {grids}: rerun exit {final.returncode}, torn {torn[:3]}, differs from reference")
    return check


def _phase(cell: Path) -> str:
    if (cell / "DONE").exists():
        return "done"
    if (cell / "eval_partial.json").exists():
        return "evaluating"
    if (cell / "checkpoint.pt").exists() or (cell / "train_log.jsonl").exists():
        return "training"
    return "started"


KILLER = '''
"""Runs lenbench, SIGKILLing itself inside the N-th write of the file named by LENBENCH_KILL_AT=NAME:N."""
import json, os, runpy, signal, sys

import lenbench.results as results

target, nth = os.environ["LENBENCH_KILL_AT"].rsplit(":", 1)
seen = 0


def hit(name):
    global seen
    seen += name == target
    return name == target and seen == int(nth)


real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if hit(os.path.basename(dst)):  # the temporary is written: tear it in half, die before the rename
        os.truncate(src, os.path.getsize(src) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)


real_append = results.CellDir.append_log


def append_log(self, record):
    if hit(self.log_path.name):  # half a line appended, then killed
        line = json.dumps(record, sort_keys=True)
        with open(self.log_path, "a") as fh:
            fh.write(line[: len(line) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_append(self, record)


os.replace = replace
results.CellDir.append_log = append_log
sys.argv = ["lenbench", *sys.argv[1:]]
runpy.run_module("lenbench", run_name="__main__")
'''

# Each kill starts a new process on the same results folder, which counts writes afresh: together they
# hit every file a cell writes, in the first cell and in later ones, in training, evaluation and at the end.
WRITE_KILLS = (
    ("config.yaml", 2), ("train_log.jsonl", 3), ("checkpoint.pt", 2), ("eval_partial.json", 2),
    ("metrics.json", 1), ("DONE", 1), ("manifest.json", 2), ("checkpoint.pt", 1), ("DONE", 2),
)


def kill_while_writing(work: Path, suite: Path, reference: dict[str, dict[str, str]]) -> Check:
    """SIGKILL inside each kind of write (a half-written temporary, or half a log line), then rerun.

    After each kill, no file under its real name may be torn (atomic rename); after the rerun the
    grid must equal the reference with no temporary left.
    """
    check = Check("kill -9 inside a write (half-written file), then rerun")
    killer = work / "killer.py"
    killer.write_text(KILLER)
    out = work / "killed-in-writes"
    killed = 0
    for target, nth in WRITE_KILLS:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LENBENCH_KILL_AT": f"{target}:{nth}"}
        proc = subprocess.run([sys.executable, str(killer), *command(suite, out)[3:]], capture_output=True,
                              text=True, timeout=600, env=env)
        if proc.returncode != -signal.SIGKILL:
            check.notes.append(f"write {nth} of {target}: not reached (exit {proc.returncode})")
            continue
        check.tried += 1
        torn = torn_results(out)
        left = sorted(x.split(": ")[0] for x in torn_files(out) if x not in torn)
        killed += 0 if torn else 1
        check.notes.append(f"killed in write {nth} of {target}; left {left or 'nothing'}"
                           + (f"; TORN {torn[:2]}" if torn else ""))
    final = run(command(suite, out))
    torn = torn_files(out)
    if final.returncode == 0 and all_done(out) and not torn and cell_files(out) == reference:
        check.passed = killed
    else:
        check.notes.append(f"rerun exit {final.returncode}, torn {torn[:3]}, all done {all_done(out)}, "
                           f"identical {cell_files(out) == reference if all_done(out) else False}")
    return check


def report_index(results: Path, out: Path) -> tuple[int, str, str]:
    """``lenbench report`` (Markdown only) of ``results``: exit code, stderr, and the text of index.md."""
    proc = run([sys.executable, "-m", "lenbench", "report", "--results", str(results), "--out", str(out),
                "--format", "md"])
    index = out / "index.md"
    return proc.returncode, proc.stderr, index.read_text() if index.exists() else ""


def config_drift(work: Path, suite: Path) -> Check:
    """The same cell asked for with another config (more steps): a new cell id, the old folder untouched,
    and the report keeps the two protocols apart (separate tables) and says which keys differ."""
    check = Check("config drift (same cell, changed steps)", tried=1)
    out = work / "drift"
    one = ("--task", "even_pairs", "--pe", "alibi")
    first = run(command(suite, out, *one))
    (old,) = list((out / "che").iterdir())
    before = tree_digest(old)
    second = run(command(suite, out, *one, "--steps", "30"))
    folders = sorted(p.name for p in (out / "che").iterdir())
    code, stderr, index = report_index(out, work / "drift-report")
    said = "cells of 2 protocols (train.steps differ); shown in separate tables, never pooled"
    warned = said in index and said in " ".join(stderr.split())  # the terminal wraps long lines
    ok = [first.returncode, second.returncode, code] == [0, 0, 0] and len(folders) == 2
    ok = ok and "already done" not in second.stderr and tree_digest(old) == before and warned
    new = next((f for f in folders if f != old.name), "none")
    check.notes.append(f"new cell {new} beside {old.name} (left untouched: {tree_digest(old) == before}); "
                       f"report warns: {warned}")
    check.passed = int(ok)
    return check


def concurrent_runs(work: Path, suite: Path, reference: dict[str, dict[str, str]]) -> Check:
    """Two processes start the same grid on the same folder at once."""
    check = Check("two concurrent runs of one grid", tried=1)
    out = work / "concurrent"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command(suite, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    folders = sorted(p.name for p in (out / "che").iterdir())
    ok = codes == [0, 0] and len(folders) == 6 and cell_files(out) == reference and not torn_files(out)
    busy = sum(err.count("being run by another process") for _, err in results)
    check.notes.append(f"exit codes {codes}, {len(folders)} cell folders, {busy} cell(s) skipped as busy")
    check.passed = int(ok)
    return check


NAN_PLUGIN = '''
import torch
from lenbench.pe.bias import ALiBi


class NaNAfter(ALiBi):
    """ALiBi whose bias turns NaN from the 25th training forward on (a fault, on purpose)."""

    calls = 0

    def bias(self, q_pos, k_pos):
        if self.training:
            type(self).calls += 1
        b = super().bias(q_pos, k_pos)
        return b * float("nan") if type(self).calls > 25 * 2 else b
'''


def nan_loss(work: Path, suite: Path) -> Check:
    """A PE that produces NaN mid-training: the cell fails with reason and step, the grid goes on."""
    check = Check("NaN loss in one cell", tried=1)
    plugin = work / "nan_pe.py"
    plugin.write_text(NAN_PLUGIN)
    out = work / "nan"
    proc = run(command(suite, out, "--pe", f"{plugin}:NaNAfter,nope", "--task", "even_pairs"))
    cells = {c.name: c for c in (out / "che").iterdir()}
    failed = [c for c in cells.values() if (c / "FAILED").exists()]
    done = [c for c in cells.values() if (c / "DONE").exists()]
    reason = json.loads((failed[0] / "FAILED").read_text()) if failed else {}
    ok = proc.returncode == 1 and len(failed) == 1 and len(done) == 1 and reason.get("step") is not None
    code, _, index = report_index(out, work / "nan-report")
    shown = code == 0 and "1 finished, 1 failed" in index and "FAILED" in index
    ok = ok and shown
    check.notes.append(f"exit {proc.returncode}; FAILED says {reason.get('reason')!r} at step {reason.get('step')}; "
                       f"the report shows it: {shown}")
    check.passed = int(ok)
    return check


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".lock":
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def write_failure(work: Path, suite: Path) -> Check:
    """Every write fails (disk full, simulated): one line naming the path; earlier results untouched."""
    check = Check("write failure (ENOSPC on every replace)", tried=1)
    out = work / "baseline"
    before = tree_digest(out)
    shim = work / "enospc.py"
    shim.write_text(
        "import errno, os, runpy, sys\n"
        "def fail(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "os.replace = fail\n"
        "sys.argv = ['lenbench', *sys.argv[1:]]\n"
        "runpy.run_module('lenbench', run_name='__main__')\n"
    )
    proc = run([sys.executable, str(shim), *command(suite, out, "--steps", "7")[3:]])
    lines = [x for x in proc.stderr.splitlines() if x.startswith("lenbench: error")]
    ok = proc.returncode == 2 and len(lines) == 1 and "No space left" in lines[0] and tree_digest(out) == before
    ok = ok and str(out) in lines[0]  # names the path it could not write
    ok = ok and "Traceback" not in proc.stderr
    check.notes.append(f"exit {proc.returncode}: {lines[0] if lines else proc.stderr[-300:]!r}")
    check.passed = int(ok)
    return check


def more_bad_inputs(folder: Path) -> list[tuple[list[str], str]]:
    """Cases beyond the CLI tests' tables: negative and zero lengths, negative seeds, a corrupted
    metrics.json, YAML of the wrong shape or type, missing plugins, bad executor options."""
    from test_cli import TINY_SUITE

    from lenbench.cli import main

    base = ["--profile", "quick", "--task", "even_pairs", "--out", str(folder / "res")]
    quick = [*base, "--pe", "alibi"]
    ppl = ["run", "--suite", "ppl", "--profile", "quick", "--pe", "alibi", "--steps", "1", "--out", str(folder / "p")]
    listed, typed, plugin = folder / "list.yaml", folder / "typed.yaml", folder / "no_class.py"
    listed.write_text("- suite\n- che\n")
    typed.write_text("suite: che\ngrid: {tasks: even_pairs}\nprofiles:\n  quick: {train: {steps: many}}\n")
    plugin.write_text("import torch\n")
    tiny, done = folder / "tiny-metrics.yaml", folder / "res-metrics"
    tiny.write_text(TINY_SUITE)
    assert main(["run", "--suite", str(tiny), "--profile", "tiny", "--out", str(done)]) == 0
    (cell,) = (done / "che").iterdir()
    (cell / "metrics.json").write_text('[{"metric": "accuracy", "val')
    return [
        (["run", "--test-lengths", "50,-5", *quick], "exceed the training maximum"),
        ([*ppl, "--train-length", "0"], "lengths must be >= 1"),
        ([*ppl, "--eval-lengths", "64,-64"], "lengths must be >= 1"),
        (["run", "--seeds", "4-2", *quick], "empty range"),
        (["run", "--batch-size", "0", *quick], "batch size must be >= 1"),
        (["report", "--results", str(done), "--out", str(folder / "rep")], "corrupted metrics file"),
        (["run", "--suite", str(listed)], "must be a mapping"),
        (["run", "--suite", str(typed), "--profile", "quick"], "must be an integer"),
        (["run", "--pe", f"{folder / 'missing.py'}:MyPE", *base], "not found"),
        (["run", "--pe", f"{plugin}:MyPE", *base], "defines no 'MyPE'"),
        (["run", "--executor", "local", "--workers", "0", *quick], "--workers must be >= 1"),
        (["run", "--executor", "pool", *quick], "unknown executor"),
        (["status", "--out", str(folder / "nowhere")], "does not exist"),
    ]


def debug_traceback(work: Path) -> Check:
    """``--debug`` turns the one-line error into the full traceback."""
    check = Check("--debug shows the traceback instead of one line")
    malformed = work / "debug.yaml"
    malformed.write_text("suite: che\ngrid: {tasks: [a\n")
    for args in (["run", "--suite", "chee"], ["run", "--suite", str(malformed)]):
        proc = run([sys.executable, "-m", "lenbench", *args, "--debug"])
        ok = proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr
        ok = ok and "LenbenchError" in proc.stderr
        check.tried += 1
        check.passed += int(ok)
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        check.notes.append(f"{'ok  ' if ok else 'FAIL'} `{' '.join(a[-30:] for a in args)} --debug` -> {last!r}")
    return check


def bad_inputs(work: Path) -> Check:
    """The CLI tests' tables of malformed invocations and files, and :func:`more_bad_inputs`, each run
    as a real process."""
    from test_cli import bad_inputs as invocations
    from test_cli import corrupted_and_data_inputs

    check = Check("bad input: exit 2, one error line naming the problem, no traceback")
    folder = work / "bad-input"
    folder.mkdir()
    cases = [*invocations(folder), *corrupted_and_data_inputs(folder), *more_bad_inputs(folder)]
    for args, expected in cases:
        proc = run([sys.executable, "-m", "lenbench", *args])
        errors = [x for x in proc.stderr.splitlines() if x.startswith("lenbench: error")]
        ok = proc.returncode == 2 and len(errors) == 1 and expected.lower() in errors[0].lower()
        ok = ok and "Traceback" not in proc.stderr
        check.tried += 1
        check.passed += int(ok)
        shown = " ".join(a if len(a) < 40 else "..." + a[-30:] for a in args)
        check.notes.append(f"{'ok  ' if ok else 'FAIL'} `{shown}` -> {errors[0] if errors else proc.stderr[-200:]!r}")
    return check


def grid_summary() -> str:
    """One line describing :data:`TINY_SUITE`, from the dict itself."""
    grid, prof = TINY_SUITE["grid"], TINY_SUITE["profiles"]["tiny"]
    tasks, pes = grid["tasks"].split(","), grid["pes"].split(",")
    train = prof["train"]
    return (f"{len(tasks)} CHE tasks x {len(pes)} PEs ({', '.join(pes)}), dropout {prof['model']['dropout']}, "
            f"{train['steps']} steps, checkpoint every {train['checkpoint_every']}, "
            f"{len(prof['eval']['lengths'])} test lengths")


def report(checks: list[Check], kills: int, seconds: float) -> str:
    rows = "\n".join(
        f"| {c.name} | {c.tried} | {c.passed} | {'yes' if c.ok else 'NO'} |" for c in checks
    )
    details = "\n".join(f"- **{c.name}**\n" + "\n".join(f"  - {n}" for n in c.notes) for c in checks)
    return (
        "# Reliability\n\n"
        "Generated by `python tests/fault_injection.py --kills "
        f"{kills} --write tests/RELIABILITY.md` (not edited by hand) in {seconds:.0f} s on "
        f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}.\n"
        f"Grid: {grid_summary()}.\n"
        "A kill counts as survived when the rerun of its grid ends with every cell DONE, metrics and\n"
        "training logs byte-identical to an uninterrupted run, and no torn file or temporary left\n"
        "(a kill inside a write also requires that no file under its real name was torn by it).\n\n"
        "| fault | tried | held | all held |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        "Shown by the pytest suite instead (run by `.ci/run`): bit-identical checkpoint resume with\n"
        "model, optimizer, scheduler, torch/numpy/python RNG states and data position restored\n"
        "(`tests/test_reliability.py::test_resume_restores_model_optimizer_every_rng_and_the_data_position`,\n"
        "`tests/test_reliability.py::test_che_cell_with_dropout_and_random_positions_resumes_exactly`,\n"
        "`tests/test_che_suite.py::test_resume_matches_uninterrupted_run`,\n"
        "`tests/test_ppl.py::test_resume_matches_uninterrupted_run`); config drift at the unit level\n"
        "(`tests/test_results.py::test_config_hash_is_canonical_and_sensitive`,\n"
        "`tests/test_results.py::test_prepare_refuses_a_different_config`,\n"
        "`tests/test_report.py::test_duplicate_configs_are_reported`) and a failed write keeping the\n"
        "old file (`tests/test_results.py::test_write_failure_names_the_path_and_keeps_the_old_file`).\n"
        "`tests/test_reliability.py` runs the checks above with fewer kills.\n\n"
        f"## Details\n\n{details}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args()
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="lenbench-faults-"))
    try:
        suite = write_suite(work)
        reference, span = baseline(work, suite)
        checks = [
            kill_at_random(work, suite, args.kills, reference, span, args.seed),
            kill_while_writing(work, suite, reference),
            concurrent_runs(work, suite, reference),
            nan_loss(work, suite),
            write_failure(work, suite),
            config_drift(work, suite),
            bad_inputs(work),
            debug_traceback(work),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(checks, args.kills, time.time() - start)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
