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

FORMATS = "md,csv,tex,html"

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Length-generalization benchmarks for positional encodings."
)
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
    pe: Annotated[
        str | None, typer.Option(help="PEs, comma-separated, e.g. dape,alibi or 'all'; options as name:k=v.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="CHE tasks, comma-separated, or 'all'.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds: 0,1,2 or 0-4.")] = None,
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
        typer.Option(help="ppl: catalogue name, hf:<id>[:<config>][@<split>], local files, or 'default'."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="ppl: model size preset (tiny, 125m, 350m).")] = None,
    train_length: Annotated[int | None, typer.Option(help="ppl: training sequence length.")] = None,
    eval_lengths: Annotated[str | None, typer.Option(help="ppl: evaluation lengths, e.g. 128,256,512.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="ppl: bytes, bpe[:<V>] or hf:<name>.")] = None,
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
        typer.Option("--log", help="Also track each cell: tensorboard, wandb or both (needs lenbench[tracking])."),
    ] = None,
) -> None:
    """Train and evaluate every (task, PE, seed) cell of a suite; finished cells are skipped.

    Under torchrun (``torchrun --nproc-per-node N -m lenbench run --suite ppl ...``) each ppl cell trains
    data-parallel over the N ranks and only rank 0 writes and prints.
    """
    from lenbench.execute.ranks import detect
    from lenbench.execute.select import make_executor
    from lenbench.execute.torchrun import DataParallelExecutor
    from lenbench.execute.tracking import parse_log
    from lenbench.results import ResultStore

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
    store.check_writable()
    err.print(f"[dim]{reason}[/dim]")
    err.print(f"{len(cells)} cell(s) of suite {suite_name!r} -> {store.root}/{suite_name}/")
    outcomes = runner.run(cells, store, err)
    if executor == "slurm":
        return
    if suite_name == "ppl":
        print_perplexities(outcomes)
    else:
        print_scores(outcomes)
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
    from lenbench.suites import load_suite_module

    suite_file = load_suite(suite)
    module = load_suite_module(suite_file.name)
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


def print_scores(outcomes: list[Any]) -> None:
    """Terminal table: task rows x PE columns, mean (+- std over seeds) of each cell's score."""
    import numpy as np

    scores: dict[tuple[str, str], list[float]] = {}
    failed: set[tuple[str, str]] = set()
    unfit: dict[tuple[str, str], int] = {}
    tasks: list[str] = []
    pes: list[str] = []
    lrs = {o.cell.config.get("train", {}).get("lr") for o in outcomes}
    for o in outcomes:
        pe_label = o.cell.config["pe"] + (f" lr={o.cell.config['train']['lr']:g}" if len(lrs) > 1 else "")
        key = (o.cell.config.get("task", o.cell.config.get("dataset", "")), pe_label)
        tasks += [key[0]] if key[0] not in tasks else []
        pes += [key[1]] if key[1] not in pes else []
        if o.status == "failed":
            failed.add(key)
        elif "score" in o.summary:
            scores.setdefault(key, []).append(100 * float(o.summary["score"]))
            unfit[key] = unfit.get(key, 0) + (o.summary.get("fit") is False)
    table = Table(title="score: mean accuracy over test lengths (%), mean ± sample std over seeds; "
                  "DNF: did not fit the training lengths")
    table.add_column("task")
    for p in pes:
        table.add_column(p, justify="right")
    for t in tasks:
        row = []
        for p in pes:
            vals = scores.get((t, p))
            if vals:
                dnf = unfit.get((t, p), 0)
                mark = "" if not dnf else " (DNF)" if dnf == len(vals) else f" ({dnf} DNF)"
                row.append(f"{np.mean(vals):.1f}" + (f" ± {np.std(vals, ddof=1):.1f}" if len(vals) > 1 else "") + mark)
            else:
                row.append("FAILED" if (t, p) in failed else "-")
        table.add_row(t, *row)
    out.print(table)


def print_perplexities(outcomes: list[Any]) -> None:
    """One table per (dataset, training length): PE rows x evaluation-length columns of ppl_last256."""
    import numpy as np

    values: dict[tuple[str, int, str], dict[str, dict[int, list[float]]]] = {}
    failed: set[tuple[str, int, str, str]] = set()
    for o in outcomes:
        cfg = o.cell.config
        key = (cfg["dataset"], int(cfg["train"]["length"]), str(cfg["eval"].get("protocol", "documents")))
        rows = values.setdefault(key, {}).setdefault(cfg["pe"], {})
        if o.status == "failed":
            failed.add((*key, cfg["pe"]))
        for length, ppl in o.summary.get("ppl_last256", {}).items():
            rows.setdefault(int(length), []).append(float(ppl))
    for (dataset, train_len, protocol), rows in values.items():
        lengths = sorted({n for per_pe in rows.values() for n in per_pe})
        table = Table(
            title=f"{dataset}, trained at {train_len}: perplexity (last 256 tokens, {protocol} protocol), "
            "mean ± sample std over seeds"
        )
        table.add_column("PE")
        for n in lengths:
            table.add_column(str(n), justify="right")
        for pe, per_length in rows.items():
            cells = []
            for n in lengths:
                vals = per_length.get(n)
                if vals:
                    cells.append(f"{np.mean(vals):.2f}" + (f" ± {np.std(vals, ddof=1):.2f}" if len(vals) > 1 else ""))
                else:
                    cells.append("FAILED" if (dataset, train_len, protocol, pe) in failed else "-")
            table.add_row(pe, *cells)
        out.print(table)


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
    repeats: Annotated[int | None, typer.Option(help="Timed repeats per cell (median and IQR over them).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up calls per cell.")] = None,
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
    profile: Annotated[str, typer.Option(help="paper, quick, or auto (paper on CUDA, quick on CPU).")] = "auto",
    out_dir: Annotated[str, typer.Option("--out", help="Results root folder.")] = "results",
) -> None:
    """Time each PE per forward and forward+backward at batch 1 (DAPE Table 1 layout); cells are stored."""
    import torch

    from lenbench.config import choose_profile, load_suite
    from lenbench.execute.inprocess import run_in_process
    from lenbench.progress import RichReporter
    from lenbench.results import ResultStore
    from lenbench.suites import load_suite_module

    suite_file = load_suite("timing")
    module = load_suite_module("timing")
    chosen, reason = choose_profile(suite_file, profile, torch.cuda.is_available())
    overrides: dict[str, Any] = {}
    for path, value in (
        ("profile.sizes", sizes),
        ("profile.lengths", lengths),
        ("grid.pes", pe),
        ("profile.modes", mode),
        ("profile.layers", layers),
        ("profile.repeats", repeats),
        ("profile.warmup", warmup),
        ("profile.backend", backend),
        ("profile.precision", precision),
        ("profile.check_estimate", True if check_estimate else None),
    ):
        if value is not None:
            _set(overrides, path, value)
    cells = module.expand(suite_file, chosen, overrides)
    err.print(f"[dim]{reason}[/dim]")
    store = ResultStore(out_dir)
    store.check_writable()
    err.print(f"{len(cells)} cell(s) of suite 'timing' -> {store.root}/timing/")
    with RichReporter(err) as reporter:
        outcomes = run_in_process(cells, store, module, reporter)
    records = [r for o in outcomes if o.status in ("done", "skipped") for r in o.cell_dir.read_metrics()]
    print_timing(records)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def print_timing(records: list[dict[str, Any]]) -> None:
    """DAPE Table 1 layout per mode (PE rows, a column group per size, ms per length, Ratio), then
    peak memory; built from the stored records alone."""
    from lenbench.suites.timing import estimate_checks, memory_table, timing_tables

    titles = {"fwd": "forward (inference)", "train": "forward + backward (training step)"}
    tables = timing_tables(records)
    for t in tables:
        ref = t.reference or "dape-kerple (not in this run)"
        notes = [f"Ratio = PE time / {ref} time at the same size and length (full-model times)."]
        for size in t.sizes:
            timed, total = t.layers[size]
            if timed < total:
                notes.append(
                    f"{size}: {timed}L ms = {timed} of {total} blocks, measured; est. = {timed}L time x "
                    f"{total}/{timed} + embedding and head time (an estimate, not a measurement)."
                )
        notes.append("OOM: did not fit in memory. Median over repeats; IQR in the stored records.")
        table = Table(
            title=f"ms per sequence, {titles.get(t.mode, t.mode)}, batch 1, {'/'.join(t.devices)} "
            f"{'/'.join(t.precisions)}, backend {t.policy_text}",
            caption="\n".join(notes),
            caption_justify="left",
        )
        table.add_column("PE", no_wrap=True)
        table.add_column("backend", no_wrap=True)
        for size in t.sizes:
            timed, _ = t.layers[size]
            for n in t.lengths[size]:
                head = f"{size}\nN={n}"
                kinds = [f"{timed}L ms", "est. ms"] if t.sliced(size) else ["ms"]
                for kind in [*kinds, f"Ratio (PE/{t.reference or 'dape-kerple'})"]:
                    table.add_column(f"{head}\n{kind}", justify="right", no_wrap=True)
        for p in t.pes:
            row = [p, t.backends.get(p, "-")]
            for size in t.sizes:
                for n in t.lengths[size]:
                    e = t.entries.get((p, size, n))
                    cols = 3 if t.sliced(size) else 2
                    if e is None:
                        row += ["-"] * cols
                    elif e.oom:
                        row += ["OOM"] * (cols - 1) + ["-"]
                    else:
                        row += [_fmt_ms(e.ms)] + ([_fmt_ms(e.est_ms)] if cols == 3 else [])
                        row.append("-" if e.ratio is None else f"{e.ratio:.2f}")
            table.add_row(*row)
        _print_wide(table)
    checks = estimate_checks(records)
    if checks:
        table = Table(
            title="estimate check: K-layer time x M/K against the measured M-layer slice",
            caption="error = (predicted - measured) / measured; the full-model estimate scales a slice this way.",
            caption_justify="left",
        )
        for col in ("PE", "size", "N", "mode", "backend", "K", "M", "K ms", "predicted M ms", "measured M ms", "error"):
            table.add_column(col, justify="left" if col in ("PE", "size", "mode", "backend") else "right")
        for c in checks:
            table.add_row(c.pe, c.size, str(c.eval_len), c.mode, c.policy, str(c.k), str(c.m), _fmt_ms(c.k_ms),
                          _fmt_ms(c.predicted_ms), _fmt_ms(c.m_ms), f"{100 * c.rel_error:+.1f}%")
        _print_wide(table)
    memory = memory_table(records)
    if memory and tables:
        t = tables[0]
        modes = [x.mode for x in tables]
        table = Table(
            title=f"peak memory of the timed call above the model (MiB), {' / '.join(modes)}",
            caption="CUDA: max allocated; CPU: peak RSS delta. For K-layer slices: of the K timed blocks.",
        )
        table.add_column("PE", no_wrap=True)
        for size in t.sizes:
            for n in t.lengths[size]:
                table.add_column(f"{size}\nN={n}", justify="right", no_wrap=True)
        for p in t.pes:
            row = [p]
            for size in t.sizes:
                for n in t.lengths[size]:
                    vals = []
                    for m in modes:
                        key = (p, size, n, m)
                        v = memory.get(key)
                        vals.append("-" if key not in memory else "OOM" if v is None else f"{v:.0f}")
                    row.append(" / ".join(vals))
            table.add_row(*row)
        _print_wide(table)


def _print_wide(table: Table) -> None:
    """Print a table; when output is not a terminal (a file, a pipe), wide enough not to squeeze it."""
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(table)
        return
    width = Measurement.get(out, out.options.update_width(100_000), table).maximum
    Console(width=max(out.width, width)).print(table)


@app.command()
def report(
    results: Annotated[str, typer.Option("--results", help="Results root folder to read.")] = "results",
    suite: Annotated[str | None, typer.Option(help="Only this suite: che, ppl or timing.")] = None,
    out_dir: Annotated[str, typer.Option("--out", help="Report folder to write.")] = "report",
    formats: Annotated[str, typer.Option("--format", help="Table formats, any of md,csv,tex,html.")] = FORMATS,
    compare: Annotated[
        str | None, typer.Option(help="Also test PE A against PE B over seeds, written A,B (e.g. dape,alibi).")
    ] = None,
) -> None:
    """Tables, figures and paired significance tests from every finished and failed cell."""
    from lenbench.report import build_report, parse_formats
    from lenbench.report.render import rich_notes
    from lenbench.report.stats import parse_compare

    built = build_report(results, out_dir, suite, parse_formats(formats), parse_compare(compare))
    for table in built.tables:
        _print_wide(rich_notes(table))
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

    from lenbench.report.viz import visualize

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
