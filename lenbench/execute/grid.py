"""The grid options, defined once: the flags that pick and override a suite's grid, shared by
``lenbench run`` and ``lenbench status`` (docs/architecture.md).

Each :class:`GridOption` names its flag, its help and the suite-YAML path its value goes to;
:func:`grid_options` adds them to a command's Typer signature and hands the command one dict of
their values; :func:`overrides_from` turns that dict into the override tree a suite's ``expand``
reads, and :func:`expand_grid` expands the grid. A flag's value keeps its parsed type on the way
(``--steps 3`` reaches the suite as the int 3 at ``profile.train.steps``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from lenbench.errors import LenbenchError


@dataclass(frozen=True)
class GridOption:
    """One grid flag: its parameter ``name``, value ``type`` (None when not given), ``help``, the
    suite-YAML ``path`` it overrides (None: handled apart, as ``--profile`` and ``--set``), and its
    flag declarations when they are not the name's (``--compile/--no-compile``)."""

    name: str
    type: Any
    help: str
    path: str | None
    decls: tuple[str, ...] = ()
    default: Any = None

    def parameter(self) -> inspect.Parameter:
        """The Typer parameter: ``name: Annotated[type, typer.Option(...)] = default``."""
        option = typer.Option(*self.decls, help=self.help)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                 annotation=Annotated[self.type, option])


GRID_OPTIONS: tuple[GridOption, ...] = (
    GridOption("pe", str | None, "PEs, comma-separated, e.g. dape,alibi or 'all'; options as name:k=v; a plugin "
               "as path/to/file.py:Class. \\[default: the suite's grid]", "grid.pes"),
    GridOption("task", str | None, "Tasks of task-based suites, comma-separated, 'all' or a group such as 'dape' "
               "(DAPE's table). \\[default: the profile's]", "grid.tasks"),
    GridOption("seeds", str | None, "Seeds: 0,1,2 or 0-4. \\[default: the profile's]", "grid.seeds"),
    GridOption("profile", str, "paper, quick, or auto (paper on CUDA, quick on CPU).", None, default="auto"),
    GridOption("steps", int | None, "Training steps per cell.", "profile.train.steps"),
    GridOption("batch_size", int | None, "Training batch size.", "profile.train.batch_size"),
    GridOption("lr", str | None, "Learning rate(s): 1e-3, or a grid axis 1e-4,3e-4,5e-4.", "profile.train.lr"),
    GridOption("test_lengths", str | None, "Test lengths: 41,77,100 or 41-500 or 41-500:20.", "profile.eval.lengths"),
    GridOption("eval_samples", int | None, "Samples per test length.", "profile.eval.samples"),
    GridOption("layers", int | None, "Encoder layers.", "profile.model.layers"),
    GridOption("dim", int | None, "Model width.", "profile.model.dim"),
    GridOption("heads", int | None, "Attention heads.", "profile.model.heads"),
    GridOption("dataset", str | None, "Datasets of language-model suites: catalogue name, "
               "hf:<id>\\[:<config>]\\[@<split>], local files, or 'default'.", "grid.datasets"),
    GridOption("model", str | None, "Language-model suites: model size preset (tiny, 125m, 350m).",
               "profile.model.size"),
    GridOption("train_length", int | None, "Language-model suites: training sequence length.",
               "profile.train.length"),
    GridOption("eval_lengths", str | None, "Language-model suites: evaluation lengths, e.g. 128,256,512.",
               "profile.eval.lengths"),
    GridOption("tokenizer", str | None, "Language-model suites: bytes, bpe\\[:<V>] or hf:<name>.",
               "profile.data.tokenizer"),
    GridOption("compile_model", bool | None, "Train through torch.compile (compile time reported apart).",
               "profile.train.compile", decls=("--compile/--no-compile",)),
    GridOption("set_values", list[str] | None, "Any suite value, e.g. --set profile.train.grad_clip=0.5 "
               "(repeatable; YAML).", None, decls=("--set",)),
)
"""Every grid option in ``--help`` order; ``--profile`` and ``--set`` have no single path."""

NAMES = tuple(o.name for o in GRID_OPTIONS)


def grid_options(after: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command whose ``grid`` parameter takes the grid options' values as one dict: Typer
    sees the :data:`GRID_OPTIONS` in place of ``grid``, inserted after the parameter ``after``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.parameters.values() if p.name != "grid"]
        at = [p.name for p in params].index(after) + 1
        params[at:at] = [o.parameter() for o in GRID_OPTIONS]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            grid = {name: kwargs.pop(name) for name in NAMES}
            return command(grid=grid, **kwargs)

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
        return wrapper

    return decorate


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


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
    """``--lr 1e-3`` -> 1e-3; a comma list (a learning-rate axis) stays text for the suite to parse."""
    if "," in text:
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise LenbenchError(f"--lr must be a number or a comma list of numbers, got {text!r}") from exc


def overrides_from(grid: dict[str, Any]) -> dict[str, Any]:
    """The grid options' values -> the override tree of the suite YAML (``--set`` values last)."""
    overrides: dict[str, Any] = {}
    for option in GRID_OPTIONS:
        value = grid.get(option.name)
        if option.path is not None and value is not None:
            _set(overrides, option.path, _lr_value(value) if option.name == "lr" else value)
    for path, value in map(parse_set, grid.get("set_values") or []):
        _set(overrides, path, value)
    return overrides


@dataclass(frozen=True)
class Grid:
    """An expanded grid: the suite's name and file, the profile chosen (and why), the overrides, the cells."""

    suite: str
    suite_file: str
    profile: str
    reason: str
    overrides: dict[str, Any]
    cells: list[Any]


def expand_grid(suite: str, grid: dict[str, Any]) -> Grid:
    """Expand suite ``suite`` (a name or a YAML path) with the grid options' values."""
    import torch

    from lenbench.config import choose_profile, load_suite
    from lenbench.suites import get_suite

    suite_file = load_suite(suite)
    module = get_suite(suite_file.name)
    chosen, reason = choose_profile(suite_file, grid.get("profile") or "auto", torch.cuda.is_available())
    overrides = overrides_from(grid)
    cells = module.expand(suite_file, chosen, overrides)
    return Grid(suite_file.name, str(suite_file.path), chosen, reason, overrides, cells)
