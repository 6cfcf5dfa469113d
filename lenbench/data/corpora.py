"""Corpora for the LM suite, all through Hugging Face ``datasets``, and their tokenized cache.

A dataset spec (``--dataset``) is one of:

- ``default``: the embedded corpus, the ``.py`` source files of the running interpreter's standard
  library (``sysconfig`` ``stdlib`` path), one document per file. Skipped: ``site-packages`` /
  ``dist-packages`` (not the stdlib) and every ``test``/``tests``/``idle_test`` folder (test
  fixtures include deliberately malformed files). Needs no network and ships with every Python.
- a catalogue name from the suite YAML (``arxiv``, ``pg19``, ...), mapped to another spec + field;
- ``hf:<id>[:<config>][@<split>]``: a dataset on the Hugging Face Hub (``datasets.load_dataset``);
- a local file, folder or glob of ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files, loaded with
  ``datasets``' own ``text`` (one file = one document), ``json`` and ``parquet`` builders.

Train/validation split: a hub dataset's own ``validation`` split when it has one (and no ``@split``
was asked for); otherwise a deterministic split by content: a document goes to validation when
``int(sha256(key)[:8]) / 2**64 < validation_fraction``, ``key`` being its text with whitespace runs
collapsed (:func:`lenbench.data.dedup.content_key`), so copies land on one side. For the embedded
corpus and local files, validation documents that are near-duplicates of training documents (20% or
more of their aligned 32-byte chunks occur in the training split, :mod:`lenbench.data.dedup`) are
then dropped; ``info["near_duplicates"]`` records the rule and the counts (and, for the embedded
corpus, the dropped paths). Hub datasets are not scanned (their size makes the pass costly).

Tokenized splits are cached under ``$LENBENCH_CACHE`` (default ``~/.cache/lenbench``) as flat token
files (each document followed by the separator id) plus document offsets, keyed by the datasets'
fingerprints and the tokenizer, and memory-mapped on later runs.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenbench.data.dedup import CHUNK_BYTES, MAX_SHARED, content_key, near_duplicates
from lenbench.data.documents import GLOB_CHARS, Corpus, DatasetSpec
from lenbench.data.tokenizer import Tokenizer
from lenbench.errors import LenbenchError
from lenbench.paths import cache_root

# Extension -> datasets builder (text: one document per file).
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")
CACHE_FORMAT = 1
# How the hash split and its near-duplicate filter work; part of every ppl cell's config, so results
# made with another split are not taken for this one's.
SPLIT_RULE = (
    f"sha256(whitespace-collapsed text); default and local files: validation documents with >= {MAX_SHARED} "
    f"of their {CHUNK_BYTES}-byte chunks in the training split dropped"
)


def parse_hf(text: str) -> tuple[str, str | None, str | None]:
    """``hf:<id>[:<config>][@<split>]`` -> (id, config, split)."""
    body = text.removeprefix("hf:").strip()
    body, _, split = body.partition("@")
    repo, _, config = body.partition(":")
    if not repo.strip():
        raise LenbenchError(f"dataset {text!r} must be written hf:<id>[:<config>][@<split>]")
    return repo.strip(), config.strip() or None, split.strip() or None


def parse_dataset(text: str, catalogue: dict[str, Any], field_override: str | None = None) -> DatasetSpec:
    """Resolve a ``--dataset`` value (see the module docstring); local files must exist."""
    name = text.strip()
    if not name:
        raise LenbenchError("empty dataset name")
    if name == "default":
        return DatasetSpec(name, "default", field=field_override or "text")
    if name in catalogue:
        entry = catalogue[name]
        if not isinstance(entry, dict):
            raise LenbenchError(f"catalogue entry {name!r} must be a mapping with 'source' and 'field'")
        source = entry.get("source")
        if not source:
            note = f" ({entry['note']})" if entry.get("note") else ""
            raise LenbenchError(
                f"dataset {name!r} has no source in the catalogue{note}; pass local files "
                f"(--dataset path/to/{name}/*.jsonl) or use --dataset default"
            )
        inner = parse_dataset(str(source), {}, field_override or str(entry.get("field", "text")))
        return DatasetSpec(name, inner.kind, inner.source, inner.config, inner.split, inner.field)
    if name.startswith("hf:"):
        repo, config, split = parse_hf(name)
        return DatasetSpec(name, "hf", repo, config, split, field_override or "text")
    local_files(name)  # fails with one line when nothing usable matches
    return DatasetSpec(name, "local", name, field=field_override or "text")


def local_files(pattern: str) -> list[str]:
    """Files named by a path, folder (searched recursively) or glob; one supported extension only."""
    path = Path(pattern).expanduser()
    if any(c in pattern for c in GLOB_CHARS):
        files = sorted(glob.glob(str(path), recursive=True))
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
    elif path.is_file():
        files = [str(path)]
    else:
        known = "'default', a catalogue name, hf:<id>[:<config>][@<split>]"
        raise LenbenchError(f"unknown dataset {pattern!r}: not {known}, or an existing file, folder or glob")
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise LenbenchError(f"no .txt, .jsonl or .parquet files match {pattern!r}")
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds:
        bad = next(f for f in files if Path(f).suffix.lower() not in BUILDERS)
        raise LenbenchError(f"unsupported file {bad!r}: use .txt, .jsonl, .json or .parquet")
    if len(kinds) > 1:
        raise LenbenchError(f"{pattern!r} mixes file types ({', '.join(sorted(k for k in kinds if k))}); use one")
    return files


def in_validation(key: str, fraction: float) -> bool:
    """Deterministic split: ``int(sha256(key)[:8 bytes]) / 2**64 < fraction``."""
    digest = hashlib.sha256(key.encode("utf-8", errors="replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every ``.py`` file under the stdlib path, minus :data:`SKIPPED_DIRS`, sorted by relative path."""
    root = stdlib_root()
    if not root.is_dir():
        raise LenbenchError(f"the standard library folder {root} is missing; use another --dataset")
    files = [
        p for p in root.rglob("*.py") if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def python_version() -> str:
    return f"{platform.python_implementation()} {sys.version.split()[0]}"


def _split_by_content(ds: Any, fraction: float) -> tuple[Any, Any]:
    """(train, validation) selections of ``ds`` by :func:`in_validation` of each text's :func:`content_key`."""
    flags: list[bool] = []
    for batch in ds.select_columns(["text"]).iter(batch_size=1024):
        flags.extend(in_validation(content_key(t or ""), fraction) for t in batch["text"])
    mask = np.asarray(flags, dtype=bool)
    return ds.select(np.flatnonzero(~mask)), ds.select(np.flatnonzero(mask))


def _texts(ds: Any) -> Iterator[str]:
    for batch in ds.select_columns(["text"]).iter(batch_size=1024):
        yield from (t or "" for t in batch["text"])


def drop_near_duplicates(train: Any, validation: Any) -> tuple[Any, dict[str, Any]]:
    """Validation without its near-duplicates of training documents, and a record of what was dropped."""
    dropped = near_duplicates(_texts(validation), _texts(train))
    kept = sorted(set(range(len(validation))) - set(dropped))
    record: dict[str, Any] = {
        "rule": f">= {MAX_SHARED} of the aligned {CHUNK_BYTES}-byte chunks occur in the training split",
        "validation_before": len(validation),
        "dropped": len(dropped),
    }
    if "path" in validation.column_names:
        record["dropped_paths"] = [validation[i]["path"] for i in dropped]
    return (validation.select(kept) if dropped else validation), record


def stdlib_corpus(fraction: float) -> Corpus:
    """The embedded default: one document per stdlib ``.py`` file, split by content, near-duplicates dropped."""
    import datasets

    root = stdlib_root()
    files = stdlib_files()
    paths = [p.relative_to(root).as_posix() for p in files]
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in files]
    ds = datasets.Dataset.from_dict({"path": paths, "text": texts})
    train, val = _split_by_content(ds, fraction)
    val, dropped = drop_near_duplicates(train, val)
    info = {
        "kind": "default",
        "source": f"Python standard library ({root})",
        "python": python_version(),
        "split": f"sha256(whitespace-collapsed text) < {fraction} -> validation",
        "near_duplicates": dropped,
    }
    return Corpus(DatasetSpec("default", "default"), train, val, info)


def _reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


# Libraries whose warnings are silenced while a Hub dataset loads: ``huggingface_hub`` logs two
# lines per HTTP retry ("... thrown while requesting HEAD ...", "Retrying in 1s [Retry 1/5]"), so an
# unreachable Hub would print ten lines before lenbench's one-line error.
QUIET_LOGGERS = ("huggingface_hub", "datasets")


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Raise the :data:`QUIET_LOGGERS` to ``ERROR`` for the duration, then restore their levels.

    The libraries are imported first: importing one configures its root logger (handler, level
    from ``HF_HUB_VERBOSITY``), which would undo a level set before.
    """
    for name in QUIET_LOGGERS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _hub_load(repo: str, config: str | None, split: str | None) -> Any:
    """``datasets.load_dataset`` on the Hub (separate so tests can replace it)."""
    import datasets

    return datasets.load_dataset(repo, config, split=split)


def _text_column(ds: Any, spec: DatasetSpec, where: str) -> Any:
    if spec.field not in ds.column_names:
        raise LenbenchError(
            f"{where} has no field {spec.field!r} (columns: {', '.join(ds.column_names)}); "
            "set 'field' in the catalogue entry or data.field in the suite profile"
        )
    ds = ds.select_columns([spec.field])
    return ds if spec.field == "text" else ds.rename_column(spec.field, "text")


def hub_corpus(spec: DatasetSpec, fraction: float) -> Corpus:
    """A Hub dataset; unreachable or unknown ones give one line naming the dataset and the ways out.

    The line names the catalogue entry too (``arxiv (hf:timaeus/pile-arxiv)``); the Hub client's
    retry warnings are silenced meanwhile (:func:`quiet_hub_logs`), so that line is all that shows.
    """
    shown = f"hf:{spec.source}" + (f":{spec.config}" if spec.config else "")
    named = shown if spec.name.startswith("hf:") else f"{spec.name} ({shown})"
    try:
        with quiet_hub_logs():
            loaded = _hub_load(spec.source, spec.config, spec.split)
    except Exception as exc:
        raise LenbenchError(
            f"cannot load dataset {named} from the Hugging Face Hub ({_reason(exc)}); "
            "pass local files (--dataset path/to/*.jsonl) or use --dataset default"
        ) from exc
    info: dict[str, Any] = {"kind": "hf", "source": shown, "field": spec.field}
    if spec.split is not None:
        ds = _text_column(loaded, spec, shown)
        train, val = _split_by_content(ds, fraction)
        info["split"] = f"split {spec.split!r}; sha256(whitespace-collapsed text) < {fraction} -> validation"
        return Corpus(spec, train, val, info)
    splits = list(loaded.keys())
    if "train" not in splits:
        raise LenbenchError(f"dataset {shown} has no 'train' split (has: {', '.join(splits)}); add @<split>")
    train = _text_column(loaded["train"], spec, shown)
    own = next((s for s in VALIDATION_SPLITS if s in splits), None)
    if own is not None:
        info["split"] = f"the dataset's own 'train' and {own!r} splits"
        return Corpus(spec, train, _text_column(loaded[own], spec, shown), info)
    train, val = _split_by_content(train, fraction)
    info["split"] = f"'train' split; sha256(whitespace-collapsed text) < {fraction} -> validation"
    return Corpus(spec, train, val, info)


def local_corpus(spec: DatasetSpec, fraction: float) -> Corpus:
    """Local files through ``datasets``' ``text`` (one file = one document), ``json`` or ``parquet`` builder."""
    import datasets

    datasets.disable_progress_bars()  # local files load in seconds; keep stderr for errors
    files = local_files(spec.source)
    builder = BUILDERS[Path(files[0]).suffix.lower()]
    options: dict[str, Any] = {"sample_by": "document", "keep_linebreaks": True} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(
            builder, data_files=files, split="train", cache_dir=str(cache_root() / "datasets"), **options
        )
    except Exception as exc:
        reason = _reason(exc)
        raise LenbenchError(f"cannot read {spec.source!r} with the datasets {builder!r} builder: {reason}") from exc
    ds = _text_column(ds, spec, repr(spec.source))
    total = len(ds)
    ds = ds.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(ds) == 0:
        raise LenbenchError(f"dataset {spec.source!r} is empty: {total} document(s), none with text")
    train, val = _split_by_content(ds, fraction)
    val, dropped = drop_near_duplicates(train, val)
    info = {
        "kind": "local",
        "source": spec.source,
        "files": len(files),
        "field": spec.field,
        "split": f"sha256(whitespace-collapsed text) < {fraction} -> validation",
        "near_duplicates": dropped,
    }
    return Corpus(spec, train, val, info)


def load_corpus(spec: DatasetSpec, validation_fraction: float) -> Corpus:
    """Documents of ``spec`` as train/validation ``datasets.Dataset`` objects (see module docstring)."""
    if not 0.0 < validation_fraction < 1.0:
        raise LenbenchError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    if spec.kind == "default":
        corpus = stdlib_corpus(validation_fraction)
    elif spec.kind == "hf":
        corpus = hub_corpus(spec, validation_fraction)
    else:
        corpus = local_corpus(spec, validation_fraction)
    corpus.info["documents"] = {"train": len(corpus.train), "validation": len(corpus.validation)}
    if len(corpus.train) == 0 or len(corpus.validation) == 0:
        raise LenbenchError(
            f"dataset {spec.name!r} has {len(corpus.train)} training and {len(corpus.validation)} validation "
            "documents; both must be non-empty (add documents or raise the validation fraction)"
        )
    return corpus


@dataclass
class TokenSplit:
    """Documents as one flat token array (each followed by the separator) and their offsets.

    Document ``i`` is ``tokens[offsets[i] : offsets[i + 1] - 1]``; the training stream is ``tokens``.
    """

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Tokens per document, separator excluded."""
        return np.diff(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]


@dataclass
class TokenizedCorpus:
    """A corpus after tokenization: both splits, the tokenizer, and what to record about it."""

    train: TokenSplit
    validation: TokenSplit
    tokenizer: Tokenizer
    info: dict[str, Any]


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def _write_split(ds: Any, tokenizer: Tokenizer, path: Path, dtype: np.dtype) -> np.ndarray:
    """Stream the split's tokens to ``path`` (raw ``dtype``); returns the document offsets."""
    offsets = [0]
    sep = np.array([tokenizer.sep_id], dtype=dtype)
    with open(path, "wb") as fh:
        for batch in ds.iter(batch_size=1024):
            for ids in tokenizer.encode_batch([t or "" for t in batch["text"]]):
                fh.write(np.asarray(ids, dtype=dtype).tobytes())
                fh.write(sep.tobytes())
                offsets.append(offsets[-1] + len(ids) + 1)
    return np.asarray(offsets, dtype=np.int64)


def _read_split(folder: Path, split: str, dtype: np.dtype) -> TokenSplit:
    offsets = np.load(folder / f"{split}.offsets.npy")
    total = int(offsets[-1])
    tokens = np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r", shape=(total,)) if total else np.zeros(0, dtype)
    return TokenSplit(tokens, offsets)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer) -> TokenizedCorpus:
    """Tokenize both splits once, cache them (see module docstring) and memory-map them."""
    key = hashlib.sha256(f"{CACHE_FORMAT}|{corpus.fingerprint}|{tokenizer.name}".encode()).hexdigest()[:20]
    folder = cache_root() / "tokens" / key
    dtype = _token_dtype(tokenizer.vocab_size)
    info_path = folder / "info.json"
    if not info_path.exists():
        tmp = folder.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
            counts = {}
            for split in ("train", "validation"):
                offsets = _write_split(getattr(corpus, split), tokenizer, tmp / f"{split}.bin", dtype)
                np.save(tmp / f"{split}.offsets.npy", offsets)
                counts[split] = int(offsets[-1])
            meta = {"tokenizer": tokenizer.name, "dtype": dtype.name, "tokens": counts, "corpus": corpus.info}
            (tmp / "info.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process cached it first
                pass
        except OSError as exc:
            raise LenbenchError(f"cannot write the token cache {folder}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    train = _read_split(folder, "train", dtype)
    validation = _read_split(folder, "validation", dtype)
    info = {
        **corpus.info,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "tokens": {"train": int(train.offsets[-1]), "validation": int(validation.offsets[-1])},
    }
    return TokenizedCorpus(train, validation, tokenizer, info)
