"""The ``lenbench`` command line: parse, validate, call the library, print. Nothing else.

Every user error is one line on stderr with exit code 2 (``--debug`` shows the traceback, and the
exit code stays 2). Ctrl-C stops with exit code 130 after saying where the cell stopped. Help text
goes through rich markup, so literal brackets in it are escaped (``\\[``).
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lenbench.errors import LenbenchError
from lenbench.progress import RichReporter

FORMATS = "md,csv,tex,html"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Length-generalization benchmarks for positional encodings: how well does each PE extrapolate "
    "beyond its training length, and at what cost?",
)
out = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from lenbench import __version__
        from lenbench.results import git_hash, source_hash

        print(f"lenbench {__version__} (source {source_hash()[:12]}, git {git_hash()})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version,
                     help="Print lenbench's version, the hash of its source and its git commit, then exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Anywhere on the command line: on an error, also print the traceback "
                     "(the exit code stays 2)."),
    ] = False,
) -> None:
    """Length-generalization benchmarks for positional encodings: how well does each PE extrapolate
    beyond its training length, and at what cost? Start with `lenbench run --suite che --pe dape`."""


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


@app.command()
def run(
    suite: Annotated[str, typer.Option(help="Suite name (che) or path to a suite YAML.")] = "che",
    pe: Annotated[
        str | None,
        typer.Option(help="PEs, comma-separated, e.g. dape,alibi or 'all'; options as name:k=v; a plugin as "
                     "path/to/file.py:Class. \\[default: the suite's grid: che dape; ppl rope,alibi,kerple,dape]"),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="CHE tasks, comma-separated, or 'all'. \\[default: the profile's: quick even_pairs,"
                     "bucket_sort; paper all]"),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Seeds: 0,1,2 or 0-4. \\[default: the profile's: che quick 0, che paper 0-9; ppl 0]"),
    ] = None,
    profile: Annotated[str, typer.Option(help="paper, quick, or auto (paper on CUDA, quick on CPU).")] = "auto",
    steps: Annotated[int | None, typer.Option(help="Training steps per cell.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[str | None, typer.Option(help="Learning rate(s): 1e-3, or a grid axis 1e-4,3e-4,5e-4.")] = None,
    test_lengths: Annotated[str | None, typer.Option(help="Test lengths: 41,77,100 or 41-500 or 41-500:20.")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Samples per test length.")] = None,
    layers: Annotated[int | None, typer.Option(help="Encoder layers.")] = None,
    dim: Annotated[int | None, typer.Option(help="Model width.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="ppl: catalogue name, hf:<id>\\[:<config>]\\[@<split>], local files, or 'default'."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="ppl: model size preset (tiny, 125m, 350m).")] = None,
    train_length: Annotated[int | None, typer.Option(help="ppl: training sequence length.")] = None,
    eval_lengths: Annotated[str | None, typer.Option(help="ppl: evaluation lengths, e.g. 128,256,512.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="ppl: bytes, bpe\\[:<V>] or hf:<name>.")] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="Train through torch.compile (compile time reported apart)."),
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any suite value, e.g. --set profile.train.grad_clip=0.5 (repeatable; YAML)."),
    ] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
    executor: Annotated[
        str, typer.Option(help="inprocess (one cell after another, here), local (a process pool) or slurm.")
    ] = "inprocess",
    workers: Annotated[
        int | None, typer.Option(help="local: worker processes (default: one per GPU, else one per two cores).")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="slurm: partition.")] = None,
    gpus_per_cell: Annotated[
        int | None, typer.Option(help="slurm: GPUs per cell (default 1; 0 for CPU; >1 trains ppl cells with DDP).")
    ] = None,
    cpus_per_cell: Annotated[int | None, typer.Option(help="slurm: CPU cores per cell (torch threads).")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="slurm: at most this many cells at once (64).")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", help="slurm: time limit per job, e.g. 08:00:00 (default).")
    ] = None,
    log: Annotated[
        str | None,
        typer.Option("--log", help="Also track each cell: tensorboard, wandb or both (needs lenbench\\[tracking])."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List the grid's cells, their state and the time each would take here "
                     "(measured on a few steps per cell shape), then exit; nothing is written."),
    ] = False,
    rerun: Annotated[
        bool,
        typer.Option("--rerun", "--force", help="Compute the selected cells again, finished or not; their old "
                     "folders move to <out>/<suite>/.superseded/ (never deleted)."),
    ] = False,
) -> None:
    """Train and evaluate every (task, PE, seed) cell of a suite; finished cells are skipped.

    Under torchrun (``torchrun --nproc-per-node N -m lenbench run --suite ppl ...``) each ppl cell trains
    data-parallel over the N ranks and only rank 0 writes and prints.
    """
    from lenbench.execute.select import make_executor
    from lenbench.execute.torchrun import DataParallelExecutor
    from lenbench.execute.tracking import parse_log
    from lenbench.results import ResultStore
    from lenbench.train.parallel import detect

    rank = detect()
    if rank is not None and rank.rank != 0:
        out.quiet = err.quiet = True  # under torchrun, rank 0 alone prints
    slurm = {
        k: v
        for k, v in (("partition", partition), ("gpus_per_cell", gpus_per_cell), ("cpus_per_cell", cpus_per_cell),
                     ("max_parallel", max_parallel), ("time", time_limit))
        if v is not None
    }
    runner = make_executor(executor, workers, slurm, parse_log(log))
    suite_name, cells, reason = _grid(
        suite, profile, pe=pe, task=task, seeds=seeds, steps=steps, batch_size=batch_size, lr=lr,
        test_lengths=test_lengths, eval_samples=eval_samples, layers=layers, dim=dim, heads=heads, dataset=dataset,
        model=model, train_length=train_length, eval_lengths=eval_lengths, tokenizer=tokenizer,
        compile_model=compile_model, set_values=set_values,
    )
    if isinstance(runner, DataParallelExecutor):
        runner.check(cells)
    store = ResultStore(out_dir)
    if not dry_run:
        store.check_writable()
    err.print(f"[dim]{reason}[/dim]")
    if dry_run:
        print_dry_run(cells, store, rerun, executor)
        return
    err.print(f"{len(cells)} cell(s) of suite {suite_name!r} -> {store.root}/{suite_name}/")
    if rerun:
        from lenbench.execute.supersede import rerun as move_aside

        for line in move_aside(cells, store):
            err.print(line, highlight=False)
    try:
        outcomes = runner.run(cells, store, err)
    except KeyboardInterrupt:
        err.print("lenbench: interrupted; finished cells are kept, and rerunning the same command resumes the "
                  "others (each from its last checkpoint)", highlight=False)
        raise typer.Exit(130) from None
    if executor == "slurm":
        return
    print_run_tables(outcomes)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


GRID_FLAGS = {  # run's (and status's) grid and profile flags -> where they go in the suite YAML
    "pe": "grid.pes",
    "task": "grid.tasks",
    "seeds": "grid.seeds",
    "steps": "profile.train.steps",
    "batch_size": "profile.train.batch_size",
    "lr": "profile.train.lr",
    "test_lengths": "profile.eval.lengths",
    "eval_samples": "profile.eval.samples",
    "layers": "profile.model.layers",
    "dim": "profile.model.dim",
    "heads": "profile.model.heads",
    "dataset": "grid.datasets",
    "model": "profile.model.size",
    "train_length": "profile.train.length",
    "eval_lengths": "profile.eval.lengths",
    "tokenizer": "profile.data.tokenizer",
    "compile_model": "profile.train.compile",
}


def parse_set(text: str) -> tuple[str, Any]:
    """``--set grid.seeds=0-4`` or ``profile.train.grad_clip=0.5`` -> (path, YAML-parsed value)."""
    import yaml

    path, sep, raw = text.partition("=")
    keys = path.strip().split(".")
    if not sep or keys[0] not in ("grid", "profile") or len(keys) < 2 or not all(keys):
        raise LenbenchError(f"--set takes grid.KEY=VALUE or profile.SECTION.KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise LenbenchError(f"--set {text!r}: the value is not valid YAML ({type(exc).__name__})") from exc
    return ".".join(keys), value


def _lr_value(text: str) -> float | str:
    """``--lr 1e-3`` -> 1e-3; a comma list (CHE's learning-rate axis) stays text for the suite to parse."""
    if "," in text:
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise LenbenchError(f"--lr must be a number or a comma list of numbers, got {text!r}") from exc


def _grid(suite: str, profile: str, **flags: Any) -> tuple[str, list[Any], str]:
    """Expand a suite with its profile and flag overrides -> (suite name, cells, why this profile)."""
    import torch

    from lenbench.config import choose_profile, load_suite
    from lenbench.suites import get_suite

    suite_file = load_suite(suite)
    module = get_suite(suite_file.name)
    chosen, reason = choose_profile(suite_file, profile, torch.cuda.is_available())
    overrides: dict[str, Any] = {}
    set_values = flags.pop("set_values", None) or []
    for flag, value in flags.items():
        if value is not None:
            _set(overrides, GRID_FLAGS[flag], _lr_value(value) if flag == "lr" else value)
    for path, value in map(parse_set, set_values):
        _set(overrides, path, value)
    return suite_file.name, module.expand(suite_file, chosen, overrides), reason


@app.command()
def status(
    suite: Annotated[str | None, typer.Option(help="Suite name or YAML (default: every suite in --out).")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
    pe: Annotated[str | None, typer.Option(help="Grid flags as given to run: PEs.")] = None,
    task: Annotated[str | None, typer.Option(help="CHE tasks.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds.")] = None,
    profile: Annotated[str | None, typer.Option(help="paper, quick or auto.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per cell.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[str | None, typer.Option(help="Learning rate(s): 1e-3, or a grid axis 1e-4,3e-4,5e-4.")] = None,
    test_lengths: Annotated[str | None, typer.Option(help="CHE test lengths.")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Samples per test length.")] = None,
    layers: Annotated[int | None, typer.Option(help="Layers.")] = None,
    dim: Annotated[int | None, typer.Option(help="Model width.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    dataset: Annotated[str | None, typer.Option(help="ppl: datasets.")] = None,
    model: Annotated[str | None, typer.Option(help="ppl: model size preset.")] = None,
    train_length: Annotated[int | None, typer.Option(help="ppl: training length.")] = None,
    eval_lengths: Annotated[str | None, typer.Option(help="ppl: evaluation lengths.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="ppl: tokenizer.")] = None,
    compile_model: Annotated[bool | None, typer.Option("--compile/--no-compile", help="As given to run.")] = None,
    set_values: Annotated[list[str] | None, typer.Option("--set", help="As given to run.")] = None,
) -> None:
    """State of each cell from the result folders: done, running (lock held), failed (why), pending.

    With run's grid flags (--pe, --seeds, --profile, ...; the same as the run) every cell of that grid
    is listed, pending ones included; with none, the cell folders under --out (one --suite, or all).
    """
    from lenbench.execute.status import counts, folder_states, grid_states
    from lenbench.results import ResultStore

    store = ResultStore(out_dir)
    flags = dict(
        pe=pe, task=task, seeds=seeds, steps=steps, batch_size=batch_size, lr=lr, test_lengths=test_lengths,
        eval_samples=eval_samples, layers=layers, dim=dim, heads=heads, dataset=dataset, model=model,
        train_length=train_length, eval_lengths=eval_lengths, tokenizer=tokenizer, compile_model=compile_model,
        set_values=set_values,
    )
    if profile is not None or any(v is not None for v in flags.values()):
        suite_name, cells, reason = _grid(suite or "che", profile or "auto", **flags)
        states = grid_states(cells, store)
        err.print(f"[dim]{reason}[/dim]")
        title = f"{suite_name}: {len(cells)} cell(s) of the grid in {store.root}"
    else:
        if not store.root.is_dir():
            raise LenbenchError(f"results folder {store.root} does not exist")
        name = None
        if suite is not None:
            from lenbench.config import load_suite

            name = load_suite(suite).name
        states = folder_states(store, name)
        title = f"{len(states)} cell folder(s) in {store.root}" + (f"/{name}" if name else "")
    colors = {"done": "green", "running": "cyan", "failed": "red", "pending": "yellow"}
    table = Table(title=title)
    for col in ("cell", "state", "detail"):
        table.add_column(col)
    for st in states:
        table.add_row(st.name, f"[{colors[st.state]}]{st.state}[/{colors[st.state]}]", st.detail)
    out.print(table)
    out.print(", ".join(f"{v} {k}" for k, v in counts(states).items()))


def print_run_tables(outcomes: list[Any]) -> None:
    """Close a run with the report's own tables (:mod:`lenbench.report`) for the cells it covered:
    finished now, finished before (skipped) and failed; the same rules, baselines and notes as
    ``lenbench report``, printed by its renderer."""
    from lenbench.report.build import suite_tables
    from lenbench.report.collect import collect_cells

    cells = [o.cell_dir for o in outcomes if o.status in ("done", "skipped", "failed")]
    if out.quiet or not cells:
        return
    collection = collect_cells(cells, "this run")
    for tables, _ in suite_tables(collection.frame).values():
        for table in tables:
            print_table(table)
    for warning in collection.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")


def print_dry_run(cells: list[Any], store: Any, rerun: bool, executor: str) -> None:
    """``run --dry-run``: each cell's state and measured time estimate (:mod:`lenbench.execute.estimate`)."""
    from lenbench.execute.estimate import METHOD, dry_run_rows, duration

    def progress(i: int, n: int) -> None:
        err.print(f"[dim]measuring cell shape {i + 1}/{n} on this machine ...[/dim]")

    rows, total = dry_run_rows(cells, store, rerun, progress)
    table = Table(title=f"{len(cells)} cell(s) -> {store.root}/ (dry run: nothing is written)")
    for col in ("cell", "state", "detail", "estimate"):
        table.add_column(col, justify="right" if col == "estimate" else "left")
    for row in rows:
        table.add_row(row.label, row.state, row.detail, row.estimate)
    out.print(table)
    todo = sum(1 for row in rows if row.runs)
    unknown = sum(1 for row in rows if row.runs and row.seconds is None)
    where = "one after another (--executor inprocess)" if executor == "inprocess" else (
        f"as one sum; --executor {executor} runs cells in parallel, so its wall time is shorter")
    out.print(f"estimated time for the {todo} cell(s) to compute: {duration(total)} on this machine, {where}"
              + (f"; {unknown} cell(s) without an estimate" if unknown else ""), highlight=False)
    out.print(f"[dim]how: {METHOD}[/dim]", highlight=False)


@app.command("list")
def list_things() -> None:
    """Registered PEs, CHE tasks, suites with their profiles, and model sizes."""
    from rich.markup import escape

    from lenbench.config import load_suite, suite_files
    from lenbench.model.sizes import SIZES
    from lenbench.pe import PES
    from lenbench.tasks.che import TASKS

    t = Table(title="positional encodings (--pe)")
    t.add_column("name")
    t.add_column("description")
    for name, cls in PES.items():
        t.add_row(name, escape(cls.description))
    out.print(t)
    t = Table(title="CHE tasks (--task)")
    for col in ("name", "level", "chance", "description"):
        t.add_column(col)
    for name, cls in TASKS.items():
        task = cls()
        t.add_row(name, task.level, f"{100 * task.chance:.1f}%", escape(task.description))
    out.print(t)
    t = Table(title="suites (--suite) and profiles (--profile)")
    for col in ("suite", "profiles", "description"):
        t.add_column(col)
    for name in suite_files():
        s = load_suite(name)
        t.add_row(name, ", ".join(s.profiles), escape(s.description))
    out.print(t)
    t = Table(title="model sizes")
    for col in ("name", "layers", "width", "heads", "description"):
        t.add_column(col)
    for name, size in SIZES.items():
        t.add_row(name, str(size.layers), str(size.dim), str(size.heads), escape(size.description))
    out.print(t)


@app.command()
def timing(
    sizes: Annotated[str | None, typer.Option(help="Model sizes, e.g. 350m,2.7b,6.7b (see `lenbench list`).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Sequence lengths, e.g. 512,1024,2048,4096,8192.")] = None,
    pe: Annotated[str | None, typer.Option(help="PEs, comma-separated (default: DAPE Table 1's), or 'all'.")] = None,
    mode: Annotated[str | None, typer.Option(help="fwd (inference), train (forward+backward) or both.")] = None,
    layers: Annotated[int | None, typer.Option(help="Blocks to time (default: 1 on CPU, all on CUDA).")] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Measured rounds per group (default 10; fewer only past --max-seconds).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up calls per PE in the discarded warm-up round.")] = None,
    max_seconds: Annotated[
        float | None, typer.Option(help="Budget of one group's measured rounds in seconds (never below 3 rounds).")
    ] = None,
    reference_pe: Annotated[
        str | None,
        typer.Option(help="The Ratio's denominator, timed in every group (default: dape-kerple if timed, "
                     "else the first PE given)."),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(help="Identical-work control pair timed in every group, e.g. rope,rope:base=10001 "
                     "(the default), or 'none'; its interval is the noise floor."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="fastest (each PE's fastest exact kernel), paper (every PE on DAPE's unfused NeoX "
                     "logits path, as Table 1 times it) or an attention backend name forced for every PE."),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp16 (the paper's), bf16 or fp32.")
    ] = None,
    check_estimate: Annotated[
        bool, typer.Option("--check-estimate", help="Also time 1-, 2- and 4-block slices: the estimate's error.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the groups and the estimated time on this machine; time nothing.")
    ] = False,
    profile: Annotated[str, typer.Option(help="paper, quick, or auto (paper on CUDA, quick on CPU).")] = "auto",
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
) -> None:
    """Time each PE per forward and forward+backward at batch 1 (DAPE Table 1 layout); groups are stored.

    One group per (size, length, mode): its PEs timed in interleaved rounds, each Ratio paired within
    a round, with a bootstrap 95% interval (docs/timing.md).
    """
    import time

    import torch

    from lenbench.config import choose_profile, load_suite
    from lenbench.execute.inprocess import run_in_process
    from lenbench.report.collect import collect_cells
    from lenbench.results import ResultStore
    from lenbench.suites import get_suite
    from lenbench.suites.timing.cost import fmt_duration, machine_rate, run_seconds
    from lenbench.suites.timing.run import reference_and_pes
    from lenbench.suites.timing.tables import timing_report_tables

    suite_file = load_suite("timing")
    module = get_suite("timing")
    chosen, reason = choose_profile(suite_file, profile, torch.cuda.is_available())
    reference, pes, added = reference_and_pes(suite_file, pe, reference_pe)
    overrides: dict[str, Any] = {}
    for path, value in (
        ("profile.sizes", sizes),
        ("profile.lengths", lengths),
        ("grid.pes", pes),
        ("profile.modes", mode),
        ("profile.layers", layers),
        ("profile.repeats", repeats),
        ("profile.warmup", warmup),
        ("profile.max_seconds", max_seconds),
        ("profile.control", control),
        ("profile.backend", backend),
        ("profile.precision", precision),
        ("profile.check_estimate", True if check_estimate else None),
    ):
        if value is not None:
            _set(overrides, path, value)
    cells = module.expand(suite_file, chosen, overrides)
    err.print(f"[dim]{reason}[/dim]")
    if added:
        err.print(f"added the reference PE {reference} to the PEs: a Ratio pairs times of the same rounds")
    store = ResultStore(out_dir)
    todo = [c for c in cells if not store.cell(c.suite, c.label, c.config).is_done(c.config)]
    rate = machine_rate([c.config for c in cells])
    estimates = run_seconds([c.config for c in todo], rate)
    cfg = cells[0].config
    err.print(
        f"{len(cells)} group(s) of {len(cfg['pes'])} PEs ({', '.join(cfg['pes'])}) -> {store.root}/timing/; "
        f"Ratio to {reference}; {len(cells) - len(todo)} already done; the rest estimated at "
        f"{fmt_duration(sum(estimates))} (rough: arithmetic count at {rate / 1e9:.0f} GFLOP/s, 0.45 of the "
        "matrix rate probed now; load and slow kernels make it longer)"
    )
    if dry_run:
        _print_timing_plan(todo, estimates)
        return
    store.check_writable()
    outcomes = []
    started = time.time()
    with _TimingReporter(err, sum(estimates)) as reporter:
        by_label = dict(zip((c.label for c in todo), estimates, strict=True))
        for i, cell in enumerate(cells, start=1):
            reporter.next_group(f"timing {cell.label}", f"group {i}/{len(cells)}", by_label.get(cell.label, 0.0))
            outcomes += run_in_process([cell], store, module, reporter)
    err.print(f"timed {len(todo)} group(s) in {fmt_duration(time.time() - started)} "
              f"(estimated {fmt_duration(sum(estimates))})")
    finished = [o.cell_dir for o in outcomes if o.status in ("done", "skipped", "failed")]
    if finished:
        tables, summary = timing_report_tables(collect_cells(finished, "this run").frame, reference)
        for table in tables:
            print_table(table)
        floors = summary["noise_floor"].dropna() if "noise_floor" in summary else []
        if len(floors):
            out.print(f"noise floor of this run (identical-work control, per group): "
                      f"±{100 * floors.min():.1f}% to ±{100 * floors.max():.1f}%; a Ratio inside it reads ≈ 1")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


class _TimingReporter(RichReporter):
    """The run's progress plus one overall bar for ``lenbench timing``: its total is the run's
    estimated seconds, advanced through each group by its measured rounds, so its ETA weighs long
    groups more; it shows ``group i/N``."""

    def __init__(self, console: Console, total_s: float) -> None:
        super().__init__(console)
        self.overall = self.progress.add_task("timing", total=max(total_s, 1e-9), info="", count="")
        self.done_s = self.group_s = 0.0

    def next_group(self, description: str, count: str, estimate_s: float) -> None:
        self.done_s += self.group_s
        self.group_s = estimate_s
        self.progress.update(self.overall, description=description, count=count, completed=self.done_s)

    def eval_step(self, done: int, what: str, value: float) -> None:
        if what == "s per round" and self.eval_total:
            self.progress.update(self.overall, completed=self.done_s + self.group_s * done / self.eval_total)
        super().eval_step(done, what, value)


def _print_timing_plan(cells: list[Any], estimates: list[float]) -> None:
    """``--dry-run``: the groups still to time and each one's estimated seconds."""
    from lenbench.suites.timing.cost import fmt_duration

    table = Table(title=f"{len(cells)} timing group(s) to run, estimated {fmt_duration(sum(estimates))}")
    for col in ("group", "PEs", "rounds", "estimated"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for cell, seconds in zip(cells, estimates, strict=True):
        table.add_row(cell.label, str(len(cell.config["pes"])), str(cell.config["repeats"]), fmt_duration(seconds))
    out.print(table)


def print_table(table: Any) -> None:
    """Print a report table with its notes, never squeezed or cut: at its full width when output is
    not a terminal; in a terminal narrower than the table, in column parts that each fit, the label
    columns repeated (:func:`lenbench.present.render.fit_columns`)."""
    from rich.measure import Measurement

    from lenbench.present.render import fit_columns, rich_notes, rich_table

    def width(t: Any) -> int:
        return Measurement.get(out, out.options.update_width(100_000), rich_table(t)).maximum

    if not out.is_terminal:
        Console(width=max(out.width, width(table))).print(rich_notes(table))
        return
    for part in fit_columns(table, out.width, width):
        out.print(rich_notes(part))


@app.command()
def report(
    results: Annotated[str, typer.Option("--results", help="Results root folder to read.")] = "results",
    suite: Annotated[str | None, typer.Option(help="Only this suite: che, ppl or timing.")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Report folder to write.")] = "report",
    formats: Annotated[str, typer.Option("--format", help="Table formats, any of md,csv,tex,html.")] = FORMATS,
    compare: Annotated[
        str | None, typer.Option(help="Also test PE A against PE B over seeds, written A,B (e.g. dape,alibi).")
    ] = None,
    reference_pe: Annotated[
        str | None, typer.Option(help="timing: the Ratio's denominator (default dape-kerple when timed).")
    ] = None,
) -> None:
    """Tables, figures and paired significance tests from every finished and failed cell."""
    from lenbench.present.stats import parse_compare
    from lenbench.report import build_report, parse_formats

    built = build_report(results, out_dir, suite, parse_formats(formats), parse_compare(compare),
                         reference=reference_pe)
    for table in built.tables:
        print_table(table)
    for warning in built.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    figures = sum(1 for f in built.files if f.suffix == ".png")
    index = [f.name for f in built.files if f.name.startswith("index.")]
    err.print(
        f"wrote {len(built.tables)} table(s), {figures} figure(s) and the long table to {built.out}/"
        + (f" ({', '.join(index)})" if index else "")
    )


@app.command()
def viz(
    path: Annotated[str, typer.Argument(help="A finished ppl cell folder, or its model.pt.")],
    query: Annotated[int, typer.Option(help="Sequence length; the last position (query - 1) is the query.")] = 8192,
    layer: Annotated[int, typer.Option(help="Layer index (negative counts from the end).")] = 0,
    heads: Annotated[str | None, typer.Option(help="Heads to show, e.g. 0,1,2 (default: all).")] = None,
    out_file: Annotated[
        str | None, typer.Option("--out", help="Image file (default: <cell>/attention_L<layer>_q<query>.png).")
    ] = None,
) -> None:
    """Plot, per head, the attention logits, base bias and DAPE term of one query against all keys."""
    import matplotlib.pyplot as plt

    from lenbench.inspect.viz import visualize

    fig, target = visualize(path, query, layer, heads, out_file)
    plt.close(fig)
    err.print(f"wrote {target}")


@app.command()
def doctor(
    check: Annotated[
        bool, typer.Option("--check", help="Run the GPU paths' parity checks now (else: cached results only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """The environment: versions, devices, kernels, the backend each Table 1 PE would use, parity checks."""
    import json

    from lenbench.doctor import environment

    env = environment(check)
    if as_json:
        out.print_json(json.dumps(env, default=str))
        return
    for section, rows in env.items():
        table = Table(title=section)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*[_doctor_cell(row.get(col)) for col in columns])
        out.print(table)


def _doctor_cell(value: Any) -> str:
    from rich.markup import escape

    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else escape(str(value))


def _click_exceptions() -> Any:
    """Typer >= 0.20 vendors click as ``typer._click``; older versions use click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app; user errors become one line on stderr and exit code 2."""
    ex = _click_exceptions()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="lenbench", standalone_mode=False)
    except LenbenchError as exc:
        if debug:
            traceback.print_exc()
        print(f"lenbench: error: {exc}", file=sys.stderr)
        return 2
    except getattr(ex, "NoArgsIsHelpError", ()) as exc:
        print(exc.format_message(), file=sys.stderr)
        return 0
    except ex.ClickException as exc:
        if debug:
            traceback.print_exc()
        print(f"lenbench: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except (typer.Exit, getattr(ex, "Exit", typer.Exit)) as exc:
        return int(getattr(exc, "exit_code", 0))
    except (typer.Abort, KeyboardInterrupt):
        print("lenbench: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
