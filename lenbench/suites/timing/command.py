"""``lenbench timing``: the timing suite's own command (a Typer function the CLI registers).

Expands the timing suite from its flags, estimates the run, times each group in this process with
one overall progress bar, and prints the suite's tables through the one renderer
(:func:`lenbench.present.terminal.print_table`). What it needs from above the suites (running cells,
reading finished ones) comes in through the Typer context (:class:`lenbench.suites.services.Services`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lenbench.present.terminal import err, out, print_table
from lenbench.progress import RichReporter


def timing(
    ctx: typer.Context,
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
    from lenbench.results import ResultStore
    from lenbench.suites import get_suite
    from lenbench.suites.services import services as suite_services
    from lenbench.suites.timing.cost import fmt_duration, machine_rate, run_seconds
    from lenbench.suites.timing.run import reference_and_pes
    from lenbench.suites.timing.tables import timing_report_tables

    services = suite_services(ctx)
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
            section, key = path.split(".")
            overrides.setdefault(section, {})[key] = value
    cells = module.expand(suite_file, chosen, overrides)
    err.print(f"[dim]{reason}[/dim]")
    if added:
        err.print(f"added the reference PE {reference} to the PEs: a Ratio pairs times of the same rounds")
    store = ResultStore(out_dir)
    todo = [c for c in cells if not store.cell(c.suite, c.label, c.config).is_done(c.config)]
    rate = machine_rate([c.spec for c in cells])
    estimates = run_seconds([c.spec for c in todo], rate)
    cfg = cells[0].spec
    err.print(
        f"{len(cells)} group(s) of {len(cfg.pes)} PEs ({', '.join(cfg.pes)}) -> {store.root}/timing/; "
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
            outcomes += services.run_cells([cell], store, module, reporter)
    err.print(f"timed {len(todo)} group(s) in {fmt_duration(time.time() - started)} "
              f"(estimated {fmt_duration(sum(estimates))})")
    finished = [o.cell_dir for o in outcomes if o.status in ("done", "skipped", "failed")]
    if finished:
        tables, summary = timing_report_tables(services.collect(finished, "this run").frame, reference)
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
        table.add_row(cell.label, str(len(cell.spec.pes)), str(cell.spec.repeats), fmt_duration(seconds))
    out.print(table)
