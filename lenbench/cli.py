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
from rich.table import Table

from lenbench.errors import LenbenchError
from lenbench.execute.grid import grid_options
from lenbench.inspect.command import viz
from lenbench.present.terminal import err, out, print_rows, print_table
from lenbench.suites import DEFAULT_SUITE, registered
from lenbench.suites.services import Services

FORMATS = "md,csv,tex,html"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Length-generalization benchmarks for positional encodings: how well does each PE extrapolate "
    "beyond its training length, and at what cost?",
)


def _print_version(value: bool) -> None:
    if value:
        from lenbench import __version__
        from lenbench.results import git_hash, source_hash

        print(f"lenbench {__version__} (source {source_hash()[:12]}, git {git_hash()})")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
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
    beyond its training length, and at what cost? Start with `lenbench run --pe dape`."""
    ctx.obj = Services(run_cells=_run_cells, collect=_collect)


def _run_cells(*args: Any, **kwargs: Any) -> list[Any]:
    from lenbench.execute.inprocess import run_in_process

    return run_in_process(*args, **kwargs)


def _collect(cell_dirs: list[Any], where: str) -> Any:
    from lenbench.report.collect import collect_cells

    return collect_cells(cell_dirs, where)


@app.command()
@grid_options(after="suite")
def run(
    *,
    suite: Annotated[
        str, typer.Option(help="Suite name (see `lenbench list`) or path to a suite YAML.")
    ] = DEFAULT_SUITE,
    grid: dict[str, Any],
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
    executor: Annotated[
        str, typer.Option(help="inprocess (one cell after another, here), local (a process pool) or slurm.")
    ] = "inprocess",
    workers: Annotated[
        int | None, typer.Option(help="local: worker processes (default: one per GPU, else one per two cores).")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="slurm: partition.")] = None,
    gpus_per_cell: Annotated[
        int | None,
        typer.Option(help="slurm: GPUs per cell (default 1; 0 for CPU; >1 trains a data-parallel suite's cells "
                     "with DDP)."),
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

    Under torchrun (``torchrun --nproc-per-node N -m lenbench run --suite NAME ...``) each cell of a
    data-parallel suite trains over the N ranks and only rank 0 writes and prints.
    """
    from lenbench.execute.grid import expand_grid
    from lenbench.execute.manifest import write_manifest
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
    expanded = expand_grid(suite, grid)
    suite_name, cells, reason = expanded.suite, expanded.cells, expanded.reason
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
    if rank is None or rank.rank == 0:  # what `lenbench status --out` lists, pending cells included
        write_manifest(store, suite_name, expanded.suite_file, expanded.profile, expanded.overrides, cells)
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


@app.command()
@grid_options(after="out_dir")
def status(
    ctx: typer.Context,
    *,
    suite: Annotated[str | None, typer.Option(help="Suite name or YAML (default: every suite in --out).")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
    grid: dict[str, Any],
) -> None:
    """State of each cell from the result folders: done, running (lock held), failed (why), pending.

    With run's grid flags (--pe, --seeds, --profile, ...; the same as the run) every cell of that grid
    is listed, pending ones included; with none, every cell of the grids `lenbench run` recorded in
    --out (one --suite, or all), pending ones included, and the cell folders outside them.
    """
    from lenbench.execute.grid import expand_grid
    from lenbench.execute.manifest import read_manifests
    from lenbench.execute.status import counts, folder_states, grid_states, recorded_states
    from lenbench.results import ResultStore

    store = ResultStore(out_dir)
    profile_given = ctx.get_parameter_source("profile").name == "COMMANDLINE"
    if profile_given or any(v is not None for k, v in grid.items() if k != "profile"):
        expanded = expand_grid(suite or DEFAULT_SUITE, grid)
        states = grid_states(expanded.cells, store)
        err.print(f"[dim]{expanded.reason}[/dim]")
        title = f"{expanded.suite}: {len(expanded.cells)} cell(s) of the grid in {store.root}"
    else:
        if not store.root.is_dir():
            raise LenbenchError(f"results folder {store.root} does not exist")
        name = None
        if suite is not None:
            from lenbench.config import load_suite

            name = load_suite(suite).name
        where = f"{store.root}" + (f"/{name}" if name else "")
        records, warnings = read_manifests(store, name)
        for warning in warnings:
            err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        if records:
            states = recorded_states(store, records, name)
            in_grids = len({d.path for r in records for _, d in r.cell_dirs(store)})
            title = f"{len(states)} cell(s) in {where}: {in_grids} in {len(records)} recorded grid(s)" + (
                f", {len(states) - in_grids} cell folder(s) outside them" if len(states) > in_grids else "")
        else:
            states = folder_states(store, name)
            title = f"{len(states)} cell folder(s) in {where}"
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
    """Registered PEs, suite tasks, suites with their profiles, and model sizes."""
    from lenbench.config import load_suite, suite_files
    from lenbench.model.sizes import SIZES
    from lenbench.pe import PES

    print_rows("positional encodings (--pe)", ("name", "description"),
               [(name, cls.description) for name, cls in PES.items()])
    for suite in registered():  # each suite's own tables, such as its tasks
        for title, header, rows in suite.listing():
            print_rows(title, header, rows)
    suites = [load_suite(name) for name in suite_files()]
    print_rows("suites (--suite) and profiles (--profile)", ("suite", "profiles", "description"),
               [(name, ", ".join(s.profiles), s.description) for name, s in zip(suite_files(), suites, strict=True)])
    print_rows("model sizes", ("name", "layers", "width", "heads", "description"),
               [(name, size.layers, size.dim, size.heads, size.description) for name, size in SIZES.items()])


@app.command()
def report(
    results: Annotated[str, typer.Option("--results", help="Results root folder to read.")] = "results",
    suite: Annotated[str | None, typer.Option(help="Only this suite (see `lenbench list`).")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Report folder to write.")] = "report",
    formats: Annotated[str, typer.Option("--format", help="Table formats, any of md,csv,tex,html.")] = FORMATS,
    compare: Annotated[
        str | None, typer.Option(help="Also test PE A against PE B over seeds, written A,B (e.g. dape,alibi).")
    ] = None,
    reference_pe: Annotated[
        str | None, typer.Option(help="Timed suites: the Ratio's denominator (default dape-kerple when timed).")
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


for _suite in registered():  # each suite's own commands
    for _command in _suite.commands:
        app.command()(_command)
app.command()(viz)


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
