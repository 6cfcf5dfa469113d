"""The CHE suite's configuration: the YAML profile's frozen dataclasses, their checks, and
:func:`expand` (profile + grid + flags -> one :class:`CheCellConfig` per task, PE, rate and seed).

Defaults follow the reference CHE/RPE code (docs/che.md §2); the ``paper`` profile in
``suites/che.yaml`` names which of its items DAPE published and which are reconstructed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.devices import check_precision
from lenbench.errors import LenbenchError
from lenbench.pe.registry import pe_entries, resolve_pes
from lenbench.suites.base import Cell
from lenbench.tasks.che import TASKS

name = "che"


@dataclass(frozen=True)
class CheModel:
    layers: int = 5
    dim: int = 64
    heads: int = 8
    dropout: float = 0.1


@dataclass(frozen=True)
class CheTrain:
    steps: int = 10000
    batch_size: int = 128
    lr: float | list[float] | str = 1e-4  # a list is a grid axis: one cell per learning rate
    grad_clip: float = 1.0
    min_length: int = 1
    max_length: int = 40
    checkpoint_every: int = 500
    log_every: int = 25
    precision: str = "fp32"  # fp32 everywhere, as the JAX reference; bf16 (or auto): bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model for training (compile seconds reported apart)


@dataclass(frozen=True)
class CheEval:
    lengths: str | list[int] = "41-500"
    samples: int = 512
    batch_size: int = 64
    dropout: bool = True  # the reference evaluates with dropout on (docs/che.md §2.6)
    train_lengths: str | list[int] | None = None  # in-distribution accuracy; None: every training length
    train_samples: int = 64
    fit_threshold: float = 0.9  # in-distribution score below this: "did not fit"


@dataclass(frozen=True)
class CheProfile:
    model: CheModel = field(default_factory=CheModel)
    train: CheTrain = field(default_factory=CheTrain)
    eval: CheEval = field(default_factory=CheEval)
    pe_defaults: dict[str, Any] = field(default_factory=dict)
    tasks: str | list[str] | None = None  # the profile's tasks and seeds, unless --task/--seeds say
    seeds: str | int | list[int] | None = None


@dataclass(frozen=True)
class CheGrid:
    tasks: str | list[str] = "all"
    pes: str | list[str] = "dape"
    seeds: str | int | list[int] = 0


@dataclass(frozen=True)
class CheCellConfig:
    """One cell, resolved: a task, a PE (spec and identity, :func:`lenbench.pe.registry.pe_entries`),
    a seed, the model, training at one learning rate (``train.lr`` a number) and the evaluation with
    its lengths listed (``eval.lengths``, ``eval.train_lengths``)."""

    task: str
    pe: str
    pe_identity: dict[str, Any]
    seed: int
    model: CheModel
    train: CheTrain
    eval: CheEval

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``config.yaml``, the folder hash): plain dicts and lists."""
        return {"suite": name, "task": self.task, "pe": self.pe, "pe_identity": self.pe_identity,
                "seed": self.seed, "model": asdict(self.model), "train": asdict(self.train),
                "eval": asdict(self.eval)}

    @property
    def lr(self) -> float:
        return float(self.train.lr)  # type: ignore[arg-type]  # one number once expanded

    @property
    def lengths(self) -> list[int]:
        return list(self.eval.lengths)  # a list once expanded

    @property
    def train_lengths(self) -> list[int]:
        return list(self.eval.train_lengths or [])


# Named task sets for ``--task``/``tasks:`` besides ``all`` (Ruoss et al.'s 15).
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    # DAPE's CHE table (NeurIPS 2024, Table 2 / Table 4; docs/dape.md §3(a)): 14 tasks, Ruoss et al.'s 15
    # without binary_multiplication ("14 tasks", "11 permutation-variant" in its prose).
    "dape": (
        "even_pairs", "modular_arithmetic", "parity_check", "cycle_navigation",
        "stack_manipulation", "reverse_string", "modular_arithmetic_brackets", "solve_equation",
        "duplicate_string", "missing_duplicate_string", "odds_first", "binary_addition", "compute_sqrt",
        "bucket_sort",
    ),
}


def _as_list(value: str | list[str]) -> list[str]:
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]


def resolve_tasks(value: str | list[str]) -> list[str]:
    """Task names, ``all``, or a group of :data:`TASK_GROUPS` (e.g. ``dape``), in the registry's order
    for the named sets; unknown names are a one-line error."""
    names = _as_list(value)
    if names == ["all"]:
        return TASKS.names()
    if len(names) == 1 and names[0] in TASK_GROUPS:
        return [t for t in TASKS.names() if t in TASK_GROUPS[names[0]]]
    for n in names:
        TASKS.get(n)
    return names


def check_model(model: CheModel) -> None:
    """Reject encoder shapes that cannot be built, before any cell starts."""
    for what, value in (("layers", model.layers), ("width (dim)", model.dim), ("heads", model.heads)):
        if value < 1:
            raise LenbenchError(f"{what} must be >= 1, got {value}")
    if model.dim % model.heads:
        raise LenbenchError(f"width {model.dim} is not divisible by {model.heads} heads")
    if not 0.0 <= model.dropout < 1.0:
        raise LenbenchError(f"dropout must be in [0, 1), got {model.dropout}")


def check_lengths(train_cfg: CheTrain, lengths: list[int]) -> None:
    if train_cfg.min_length < 1 or train_cfg.max_length < train_cfg.min_length:
        raise LenbenchError(
            f"training lengths {train_cfg.min_length}..{train_cfg.max_length} are impossible (need 1 <= min <= max)"
        )
    bad = [n for n in lengths if n <= train_cfg.max_length]
    if bad:
        raise LenbenchError(
            f"test lengths must exceed the training maximum {train_cfg.max_length}; got {bad[:5]}"
        )
    for what, value in (("steps", train_cfg.steps), ("batch size", train_cfg.batch_size)):
        if value < 1:
            raise LenbenchError(f"{what} must be >= 1, got {value}")
    for lr in learning_rates(train_cfg.lr):
        if lr <= 0:
            raise LenbenchError(f"learning rate must be > 0, got {lr}")
    check_precision(train_cfg.precision)


def learning_rates(value: float | list[float] | str) -> list[float]:
    """``train.lr`` as a list: a number, a YAML list, or ``--lr 1e-4,3e-4,5e-4`` text."""
    items = value if isinstance(value, list) else [value] if isinstance(value, int | float) else str(value).split(",")
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError) as exc:
            raise LenbenchError(f"learning rates must be numbers, got {item!r}") from exc
    if not out:
        raise LenbenchError("no learning rate given")
    return list(dict.fromkeys(out))


def check_eval(ev: CheEval, train_cfg: CheTrain, train_lengths: list[int]) -> None:
    if ev.samples < 2 or ev.batch_size < 1 or ev.train_samples < 2:
        raise LenbenchError("evaluation samples must be >= 2 (a standard error needs two) and batch size >= 1")
    outside = [n for n in train_lengths if not train_cfg.min_length <= n <= train_cfg.max_length]
    if outside:
        raise LenbenchError(
            f"eval.train_lengths must lie in the training range {train_cfg.min_length}..{train_cfg.max_length}; "
            f"got {outside[:5]}"
        )
    if not 0.0 <= ev.fit_threshold <= 1.0:
        raise LenbenchError(f"eval.fit_threshold must be in [0, 1], got {ev.fit_threshold}")


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one cell per (task, PE, seed)."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(CheProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid_raw = dict(suite_file.grid)
    given = overrides.get("grid", {})
    for key in ("tasks", "seeds"):  # the profile's choice beats the suite grid; a flag beats both
        if getattr(prof, key) is not None and key not in given:
            grid_raw[key] = getattr(prof, key)
    grid = from_dict(CheGrid, merge(grid_raw, given), f"{suite_file.path} grid")
    tasks = resolve_tasks(grid.tasks)
    pes = resolve_pes(grid.pes, prof.pe_defaults)
    seeds = parse_int_list(grid.seeds, "seeds")
    if any(seed < 0 for seed in seeds):
        raise LenbenchError(f"seeds must be >= 0, got {min(seeds)}")
    lengths = parse_int_list(prof.eval.lengths, "test lengths")
    train_lengths = (
        parse_int_list(prof.eval.train_lengths, "eval.train_lengths") if prof.eval.train_lengths is not None
        else list(range(prof.train.min_length, prof.train.max_length + 1))
    )
    lrs = learning_rates(prof.train.lr)
    check_model(prof.model)
    check_lengths(prof.train, lengths)
    check_eval(prof.eval, prof.train, train_lengths)
    evaluation = replace(prof.eval, lengths=lengths, train_lengths=train_lengths)
    cells = []
    for task in tasks:
        for spec in pes:
            for lr in lrs:
                for seed in seeds:
                    entries = pe_entries(spec)
                    config = CheCellConfig(task, entries["pe"], entries["pe_identity"], seed, prof.model,
                                           replace(prof.train, lr=lr), evaluation)
                    lr_part = f"-lr{lr:g}" if len(lrs) > 1 else ""
                    cells.append(Cell(name, f"{task}-{spec.label}{lr_part}-s{seed}", config))
    return cells
