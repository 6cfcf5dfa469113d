"""The ppl suite's configuration: the YAML profile's frozen dataclasses, their checks, and
:func:`expand` (profile + grid + flags -> one :class:`PplCellConfig` per dataset, PE, training
length and seed). Defaults follow DAPE's NeoX configs (docs/dape.md §3(d)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lenbench.config import SuiteFile, from_dict, merge, parse_int_list
from lenbench.data.corpora import SPLIT_RULE, parse_dataset, python_version
from lenbench.data.tokenizer import check_tokenizer_spec
from lenbench.devices import check_precision
from lenbench.errors import LenbenchError
from lenbench.model.sizes import SIZES
from lenbench.pe.defaults import split_rules, with_length_defaults
from lenbench.pe.registry import pe_entries, resolve_pes
from lenbench.suites.base import Cell
from lenbench.suites.ppl.protocols import DEFAULT_PROTOCOL, check_protocol
from lenbench.train.parallel import split_batch

name = "ppl"


@dataclass(frozen=True)
class PplModel:
    """A preset from ``model/sizes.py``; ``layers``/``dim``/``heads`` override its shape."""

    size: str = "tiny"
    layers: int | None = None
    dim: int | None = None
    heads: int | None = None
    dropout: float = 0.0


@dataclass(frozen=True)
class PplTrain:
    length: int | list[int] = 128  # a list makes one cell per training length
    steps: int = 2000
    batch_size: int = 32  # global batch: sequences per optimizer step, over all ranks
    micro_batch_size: int | None = None  # sequences per forward on a rank; None: the rank's whole share
    lr: float = 6e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    warmup_frac: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 25
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model for training (compile seconds reported apart)


@dataclass(frozen=True)
class PplEval:
    lengths: str | list[int] = "128,256,512,1024,2048,4096,8192"
    protocol: str = DEFAULT_PROTOCOL  # fixed_targets | dape | documents (protocols.py)
    samples: int = 64  # at most this many fixed windows (fixed_targets) or sequences per length
    min_sequences: int = 8  # documents protocol: fewer long-enough documents -> concatenate documents
    last_tokens: int = 256  # ppl_last256 counts the last min(last_tokens, L) tokens
    tokens_per_batch: int = 16384  # evaluation batch = tokens_per_batch // L (at least 1)


@dataclass(frozen=True)
class PplData:
    tokenizer: str = "bytes"  # or bpe[:<vocab size>] (trained on the training split), hf:<name>
    field: str | None = None  # text field; None: the catalogue entry's, else "text"
    validation_fraction: float = 0.05  # hash split, when the dataset has no validation split


@dataclass(frozen=True)
class PplProfile:
    model: PplModel = field(default_factory=PplModel)
    train: PplTrain = field(default_factory=PplTrain)
    eval: PplEval = field(default_factory=PplEval)
    data: PplData = field(default_factory=PplData)
    pe_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PplGrid:
    datasets: str | list[str] = "default"
    pes: str | list[str] = "rope,alibi,kerple,dape"
    seeds: str | int | list[int] = 0
    catalogue: dict[str, Any] = field(default_factory=dict)  # name -> {source, field, note}


@dataclass(frozen=True)
class PplShape:
    """A cell's decoder shape: the preset's, with the profile's overrides applied and checked."""

    size: str
    layers: int
    dim: int
    heads: int
    dropout: float


@dataclass(frozen=True)
class PplCellConfig:
    """One cell, resolved: a dataset (``data``: its source, tokenizer, split rule), a PE (spec and
    identity, :func:`lenbench.pe.registry.pe_entries`), a seed, the decoder shape, training at one
    length (``train.length`` a number) and the evaluation with its lengths listed."""

    dataset: str
    data: dict[str, Any]
    pe: str
    pe_identity: dict[str, Any]
    seed: int
    model: PplShape
    train: PplTrain
    eval: PplEval

    @property
    def length(self) -> int:
        return int(self.train.length)  # type: ignore[arg-type]  # one number once expanded

    @property
    def lengths(self) -> list[int]:
        return list(self.eval.lengths)  # a list once expanded

    def to_dict(self) -> dict[str, Any]:
        """The stored form (``config.yaml``, the folder hash); ``train.tokens_per_step`` is derived."""
        return {"suite": name, "dataset": self.dataset, "data": dict(self.data), "pe": self.pe,
                "pe_identity": self.pe_identity, "seed": self.seed, "model": asdict(self.model),
                "train": {**asdict(self.train), "tokens_per_step": self.train.batch_size * self.length},
                "eval": asdict(self.eval)}

    @staticmethod
    def from_dict(config: dict[str, Any]) -> PplCellConfig:
        """A stored config (``config.yaml``) back to its typed form (``lenbench viz`` reads one)."""
        train = {k: v for k, v in config["train"].items() if k != "tokens_per_step"}
        return PplCellConfig(config["dataset"], dict(config["data"]), config["pe"], config.get("pe_identity") or {},
                             int(config["seed"]), PplShape(**config["model"]), PplTrain(**train),
                             PplEval(**config["eval"]))


def resolve_model(m: PplModel) -> PplShape:
    """The preset's shape with explicit overrides applied and checked."""
    size = SIZES.get(m.size)
    shape = PplShape(m.size, m.layers or size.layers, m.dim or size.dim, m.heads or size.heads, m.dropout)
    for key in ("layers", "dim", "heads"):
        if getattr(shape, key) < 1:
            raise LenbenchError(f"model {key} must be >= 1, got {getattr(shape, key)}")
    if shape.dim % shape.heads:
        raise LenbenchError(f"model width {shape.dim} is not divisible by {shape.heads} heads")
    if not 0.0 <= m.dropout < 1.0:
        raise LenbenchError(f"dropout must be in [0, 1), got {m.dropout}")
    return shape


def check_profile(prof: PplProfile, train_lengths: list[int], eval_lengths: list[int]) -> None:
    t, e = prof.train, prof.eval
    if min(train_lengths) < 1 or min(eval_lengths) < 1:
        raise LenbenchError("training and evaluation lengths must be >= 1")
    for what, value in (
        ("steps", t.steps),
        ("batch size", t.batch_size),
        ("evaluation samples", e.samples),
        ("eval.min_sequences", e.min_sequences),
        ("eval.last_tokens", e.last_tokens),
        ("eval.tokens_per_batch", e.tokens_per_batch),
    ):
        if value < 1:
            raise LenbenchError(f"{what} must be >= 1, got {value}")
    if t.lr <= 0:
        raise LenbenchError(f"learning rate must be > 0, got {t.lr}")
    split_batch(t.batch_size, t.micro_batch_size, 1)  # a micro batch that does not divide the batch
    check_protocol(e.protocol)
    check_precision(t.precision)
    if not 0.0 < prof.data.validation_fraction < 1.0:
        raise LenbenchError(f"data.validation_fraction must be in (0, 1), got {prof.data.validation_fraction}")
    check_tokenizer_spec(prof.data.tokenizer)


def _names(value: str | list[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v.strip()]


def expand(suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
    """Suite YAML + profile + CLI overrides -> one cell per (dataset, PE, training length, seed)."""
    where = f"{suite_file.path} profiles.{profile}"
    prof = from_dict(PplProfile, merge(suite_file.profiles[profile], overrides.get("profile", {})), where)
    grid = from_dict(PplGrid, merge(suite_file.grid, overrides.get("grid", {})), f"{suite_file.path} grid")
    train_lengths = parse_int_list(prof.train.length, "training lengths")
    eval_lengths = parse_int_list(prof.eval.lengths, "evaluation lengths")
    check_profile(prof, train_lengths, eval_lengths)
    model = resolve_model(prof.model)
    specs = [parse_dataset(n, grid.catalogue, prof.data.field) for n in _names(grid.datasets)]
    if not specs:
        raise LenbenchError("no dataset given")
    plain_defaults, length_rules = split_rules(prof.pe_defaults)
    pes = resolve_pes(grid.pes, plain_defaults)
    per_length = {length: with_length_defaults(pes, length_rules, length) for length in train_lengths}
    seeds = parse_int_list(grid.seeds, "seeds")
    data = {
        "tokenizer": prof.data.tokenizer,
        "validation_fraction": prof.data.validation_fraction,
        "split_rule": SPLIT_RULE,  # another split rule is another corpus: results are not reused across it
    }
    evaluation = replace(prof.eval, lengths=eval_lengths)
    cells = []
    for ds in specs:
        # the embedded corpus is this interpreter's stdlib: another Python version is another corpus
        version = {"python": python_version()} if ds.kind == "default" else {}
        for i in range(len(pes)):
            for length in train_lengths:
                pe = per_length[length][i]  # with the training length's rule values (e.g. fire:l0=64 at 512)
                for seed in seeds:
                    entries = pe_entries(pe)
                    config = PplCellConfig(ds.name, {**ds.to_dict(), **data, **version}, entries["pe"],
                                           entries["pe_identity"], seed, model, replace(prof.train, length=length),
                                           evaluation)
                    cells.append(Cell(name, f"{ds.label}-{pe.label}-T{length}-s{seed}", config))
    return cells
