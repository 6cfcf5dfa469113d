"""The timing suite's configuration: the YAML profile, its checks, and :func:`expand` (profile +
grid + flags -> one group cell per model size, length, mode and slice, each timing every PE of the
grid plus the identical-work control pair). Defaults follow DAPE Table 1 (docs/timing.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.errors import LenbenchError
from lenbench.model.sizes import SIZES, ModelSize
from lenbench.pe.defaults import split_rules, with_length_defaults
from lenbench.pe.registry import PESpec, pe_identity, resolve_pes
from lenbench.suites.base import Cell
from lenbench.suites.timing.ratios import MODES, POLICIES, size_params

name = "timing"
GPT2_VOCAB = 50257
DEFAULT_PES = "rope,t5,alibi,kerple,fire,dape-kerple"
DEFAULT_CONTROL = "rope,rope:base=10001"  # identical work: RoPE's base changes only the angles' values
CHECK_LAYERS = (1, 2, 4)  # slices timed by --check-estimate
PRECISIONS = ("fp32", "bf16", "fp16")  # lenbench.suites.timing.measure.DTYPES maps them to torch dtypes


@dataclass(frozen=True)
class TimingProfile:
    sizes: str | list[str] = "350m"
    lengths: str | list[int] = "512,1024,2048"
    modes: str | list[str] = "both"
    layers: int | None = None  # blocks timed; None: 1 on CPU, every layer on CUDA
    repeats: int = 10  # measured rounds (fewer only when max_seconds would be exceeded)
    warmup: int = 1  # warm-up calls per PE in the discarded warm-up round
    min_warmup_ms: float = 250.0  # and keep warming up until this much time has passed
    min_repeat_ms: float = 200.0  # calls per repeat so that one repeat lasts this long
    max_seconds: float | None = 600.0  # budget of one group's measured rounds; None: no budget
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    vocab_size: int = GPT2_VOCAB
    train_length: int = 512
    isolate: str | bool = "auto"  # measure in a worker process; auto: on CPU only
    backend: str = "fastest"  # fastest, paper, or a backend name forced for every PE
    check_estimate: bool = False  # also time 1-, 2- and 4-block slices to measure the estimate's error
    control: str | list[str] = DEFAULT_CONTROL  # two PEs doing identical work, or "none"
    pe_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. l0: dape-neox (lenbench/pe/defaults.py)


@dataclass(frozen=True)
class TimingCellConfig:
    """One timing group, resolved: a model size's shape, every PE timed in its rounds (``pes``, with
    their identities; the control pair included), one length and mode, the slice timed
    (``layers_timed``), the measuring protocol and the backend policy. ``pe`` is not stored: it
    names one PE in the view the model builders and estimates read (:func:`for_pe`)."""

    size: str
    layers: int
    dim: int
    heads: int
    pes: list[str]
    pe_identities: dict[str, Any]
    control: list[str] | None
    eval_len: int
    train_len: int
    mode: str
    layers_timed: int
    batch_size: int
    vocab_size: int
    precision: str
    device: str
    repeats: int
    warmup: int
    min_warmup_ms: float
    min_repeat_ms: float
    max_seconds: float | None
    isolate: bool
    backend_policy: str
    estimate_check: bool = False
    pe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``config.yaml``, the folder hash); ``estimate_check`` only when set."""
        out = asdict(self)
        out.pop("pe")
        if not self.estimate_check:
            out.pop("estimate_check")
        return {"suite": name, **out}

    def for_pe(self, pe: str) -> TimingCellConfig:
        """One PE's view of the group (what the model builders and memory estimates read)."""
        return replace(self, pe=pe)

    @property
    def full(self) -> bool:
        """Whether every block is timed (else a slice, extrapolated to the full model)."""
        return self.layers_timed >= self.layers


@dataclass(frozen=True)
class TimingGrid:
    pes: str | list[str] = DEFAULT_PES


def _items(value: str | list[Any]) -> list[str]:
    raw = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for item in (r.strip() for r in raw):
        if item and item not in out:
            out.append(item)
    return out


def resolve_sizes(value: str | list[str]) -> list[ModelSize]:
    names = _items(value)
    if not names:
        raise LenbenchError("no model size given (e.g. --sizes 350m,2.7b,6.7b)")
    sizes = [SIZES.get(n.lower()) for n in names]
    return sorted(sizes, key=lambda s: (size_params(s.name), s.name))


def resolve_lengths(value: str | list[int]) -> list[int]:
    lengths = list(dict.fromkeys(parse_int_list(value, "lengths")))
    bad = [n for n in lengths if n < 1]
    if bad:
        raise LenbenchError(f"sequence lengths must be >= 1, got {bad[0]}")
    return lengths


def resolve_modes(value: str | list[str]) -> list[str]:
    modes = _items(value)
    if modes == ["both"]:
        return list(MODES)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise LenbenchError(f"unknown mode {bad[0] if bad else ''!r} (choose fwd, train or both)")
    return modes


def resolve_precision(value: str, cuda: bool) -> str:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; fp16/bf16 only on CUDA (CPU half kernels are not
    what the paper's GPUs run, and are slower than fp32 there)."""
    precision = ("bf16" if cuda else "fp32") if value == "auto" else value
    if precision not in PRECISIONS:
        raise LenbenchError(f"unknown precision {value!r} (choose auto, {', '.join(PRECISIONS)})")
    if precision != "fp32" and not cuda:
        raise LenbenchError(f"precision {precision} needs CUDA; CPU timing runs fp32")
    return precision


def resolve_backend(value: str) -> str:
    """``fastest``, ``paper`` or a forced attention backend name -> the cell's ``backend_policy``."""
    from lenbench.model.attention import BACKENDS

    policy = value.strip().lower()
    if policy == "auto":
        policy = "fastest"
    if policy not in POLICIES and policy not in BACKENDS:
        names = ", ".join([*POLICIES, *(b for b in BACKENDS if b != "auto")])
        raise LenbenchError(f"unknown timing backend {value!r} (choose {names})")
    return policy


def resolve_control(value: str | list[str]) -> tuple[PESpec, PESpec] | None:
    """``control``: two PE specs doing identical work (``"none"``: no control) -> the two specs."""
    if isinstance(value, str) and value.strip().lower() in ("none", ""):
        return None
    specs = list({str(s): s for s in resolve_pes(value)}.values())
    if len(specs) != 2:
        raise LenbenchError(f"control takes two different PEs doing identical work (e.g. {DEFAULT_CONTROL}) "
                            f"or 'none', got {value!r}")
    return specs[0], specs[1]


def resolve_isolate(value: str | bool, cuda: bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("auto", "true", "false"):
        return not cuda if value.lower() == "auto" else value.lower() == "true"
    raise LenbenchError(f"isolate must be auto, true or false, got {value!r}")


def check_profile(prof: TimingProfile) -> None:
    for what, value, low in (
        ("--layers", prof.layers, 1),
        ("--repeats", prof.repeats, 1),
        ("--warmup", prof.warmup, 1),
        ("vocab_size", prof.vocab_size, 1),
        ("train_length", prof.train_length, 1),
    ):
        if value is not None and value < low:
            raise LenbenchError(f"{what} must be >= {low}, got {value}")
    for what, number in (("min_repeat_ms", prof.min_repeat_ms), ("min_warmup_ms", prof.min_warmup_ms)):
        if number < 0:
            raise LenbenchError(f"{what} must be >= 0, got {number}")
    if prof.max_seconds is not None and prof.max_seconds <= 0:
        raise LenbenchError(f"--max-seconds must be > 0, got {prof.max_seconds}")


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one group cell per (size, length, mode[, slice]),
    each timing every PE of the grid plus the control pair, sizes smallest first."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(TimingProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid = from_dict(TimingGrid, merge(suite_file.grid, overrides.get("grid", {})), f"{suite_file.path} grid")
    check_profile(prof)
    sizes, lengths, modes = resolve_sizes(prof.sizes), resolve_lengths(prof.lengths), resolve_modes(prof.modes)
    control = resolve_control(prof.control)
    plain_defaults, length_rules = split_rules(prof.pe_defaults)  # DAPE's NeoX l0 for the trained length
    timed = with_length_defaults(resolve_pes(grid.pes, plain_defaults), length_rules, prof.train_length)
    specs = {str(s): s for s in [*timed, *(control or ())]}
    pes = sorted(specs)
    identities = {pe: pe_identity(specs[pe]) for pe in pes}  # a plugin's code makes another group
    cuda = torch.cuda.is_available()
    precision, isolate = resolve_precision(prof.precision, cuda), resolve_isolate(prof.isolate, cuda)
    policy = resolve_backend(prof.backend)
    cells = []
    for size in sizes:
        timed = min(prof.layers or (size.layers if cuda else 1), size.layers)
        slices = [(timed, False)]
        if prof.check_estimate:
            slices += [(k, True) for k in CHECK_LAYERS if k < size.layers and k != timed]
        for n in lengths:
            for mode in modes:
                for k, check in slices:
                    config = TimingCellConfig(
                        size.name, size.layers, size.dim, size.heads, pes, identities,
                        [str(c) for c in control] if control else None, n, prof.train_length, mode, k, 1,
                        prof.vocab_size, precision, "cuda" if cuda else "cpu", prof.repeats, prof.warmup,
                        prof.min_warmup_ms, prof.min_repeat_ms, prof.max_seconds, isolate, policy, check,
                    )
                    tags = ("" if policy == "fastest" else f"-{policy}") + (f"-K{k}" if check else "")
                    cells.append(Cell(name, f"{size.name}-L{n}-{mode}{tags}", config))
    return cells
