"""The ``lenbench`` command line: parse, validate, call the library, print. Nothing else.

Every user error is one line on stderr with exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lenbench.errors import LenbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Length-generalization benchmarks for positional encodings.")
out = Console()
err = Console(stderr=True)


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


@app.command()
def run(
    suite: Annotated[str, typer.Option(help="Suite name (che) or path to a suite YAML.")] = "che",
    pe: Annotated[str | None, typer.Option(help="PEs, comma-separated, e.g. dape,alibi or 'all'; options as name:k=v.")] = None,
    task: Annotated[str | None, typer.Option(help="CHE tasks, comma-separated, or 'all'.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds: 0,1,2 or 0-4.")] = None,
    profile: Annotated[str, typer.Option(help="paper, quick, or auto (paper on CUDA, quick on CPU).")] = "auto",
    steps: Annotated[int | None, typer.Option(help="Training steps per cell.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    test_lengths: Annotated[str | None, typer.Option(help="Test lengths: 41,77,100 or 41-500 or 41-500:20.")] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Samples per test length.")] = None,
    layers: Annotated[int | None, typer.Option(help="Encoder layers.")] = None,
    dim: Annotated[int | None, typer.Option(help="Model width.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    dataset: Annotated[str | None, typer.Option(help="ppl: catalogue name, hf:<id>[:<config>][@<split>], local files, or 'default'.")] = None,
    model: Annotated[str | None, typer.Option(help="ppl: model size preset (tiny, 125m, 350m).")] = None,
    train_length: Annotated[int | None, typer.Option(help="ppl: training sequence length.")] = None,
    eval_lengths: Annotated[str | None, typer.Option(help="ppl: evaluation lengths, e.g. 128,256,512.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="ppl: 'bytes' (default) or hf:<name>.")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
) -> None:
    """Train and evaluate every (task, PE, seed) cell of a suite; finished cells are skipped."""
    import torch

    from lenbench.config import choose_profile, load_suite
    from lenbench.executors import run_in_process
    from lenbench.progress import RichReporter
    from lenbench.results import ResultStore
    from lenbench.suites import load_suite_module

    suite_file = load_suite(suite)
    module = load_suite_module(suite_file.name)
    chosen, reason = choose_profile(suite_file, profile, torch.cuda.is_available())
    err.print(f"[dim]{reason}[/dim]")
    overrides: dict[str, Any] = {}
    for path, value in (
        ("grid.pes", pe),
        ("grid.tasks", task),
        ("grid.seeds", seeds),
        ("profile.train.steps", steps),
        ("profile.train.batch_size", batch_size),
        ("profile.train.lr", lr),
        ("profile.eval.lengths", test_lengths),
        ("profile.eval.samples", eval_samples),
        ("profile.model.layers", layers),
        ("profile.model.dim", dim),
        ("profile.model.heads", heads),
        ("grid.datasets", dataset),
        ("profile.model.size", model),
        ("profile.train.length", train_length),
        ("profile.eval.lengths", eval_lengths),
        ("profile.data.tokenizer", tokenizer),
    ):
        if value is not None:
            _set(overrides, path, value)
    cells = module.expand(suite_file, chosen, overrides)
    store = ResultStore(out_dir)
    store.check_writable()
    err.print(f"{len(cells)} cell(s) of suite {suite_file.name!r} -> {store.root}/{suite_file.name}/")
    with RichReporter(err) as reporter:
        outcomes = run_in_process(cells, store, module, reporter)
    print_scores(outcomes)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def print_scores(outcomes: list[Any]) -> None:
    """Terminal table: task rows x PE columns, mean (+- std over seeds) of each cell's score."""
    import numpy as np

    scores: dict[tuple[str, str], list[float]] = {}
    failed: set[tuple[str, str]] = set()
    tasks: list[str] = []
    pes: list[str] = []
    for o in outcomes:
        key = (o.cell.config.get("task", o.cell.config.get("dataset", "")), o.cell.config["pe"])
        tasks += [key[0]] if key[0] not in tasks else []
        pes += [key[1]] if key[1] not in pes else []
        if o.status == "failed":
            failed.add(key)
        elif "score" in o.summary:
            scores.setdefault(key, []).append(100 * float(o.summary["score"]))
    table = Table(title="score: mean accuracy over test lengths (%), mean ± std over seeds")
    table.add_column("task")
    for p in pes:
        table.add_column(p, justify="right")
    for t in tasks:
        row = []
        for p in pes:
            vals = scores.get((t, p))
            if vals:
                row.append(f"{np.mean(vals):.1f}" + (f" ± {np.std(vals):.1f}" if len(vals) > 1 else ""))
            else:
                row.append("FAILED" if (t, p) in failed else "-")
        table.add_row(t, *row)
    out.print(table)


@app.command("list")
def list_things() -> None:
    """Registered PEs, CHE tasks, suites with their profiles, and model sizes."""
    from lenbench.config import load_suite, suite_files
    from lenbench.model.sizes import SIZES
    from lenbench.pe import PES
    from lenbench.tasks.che import TASKS

    t = Table(title="positional encodings (--pe)")
    t.add_column("name")
    t.add_column("description")
    for name, cls in PES.items():
        t.add_row(name, cls.description)
    out.print(t)
    t = Table(title="CHE tasks (--task)")
    for col in ("name", "level", "chance", "description"):
        t.add_column(col)
    for name, cls in TASKS.items():
        task = cls()
        t.add_row(name, task.level, f"{100 * task.chance:.1f}%", task.description)
    out.print(t)
    t = Table(title="suites (--suite) and profiles (--profile)")
    for col in ("suite", "profiles", "description"):
        t.add_column(col)
    for name in suite_files():
        s = load_suite(name)
        t.add_row(name, ", ".join(s.profiles), s.description)
    out.print(t)
    t = Table(title="model sizes")
    for col in ("name", "layers", "width", "heads", "description"):
        t.add_column(col)
    for name, size in SIZES.items():
        t.add_row(name, str(size.layers), str(size.dim), str(size.heads), size.description)
    out.print(t)


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
            raise
        print(f"lenbench: error: {exc}", file=sys.stderr)
        return 2
    except getattr(ex, "NoArgsIsHelpError", ()) as exc:
        print(exc.format_message(), file=sys.stderr)
        return 0
    except ex.ClickException as exc:
        if debug:
            raise
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
