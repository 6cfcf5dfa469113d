"""What the tokenizers and the corpus loader share, below both: a resolved dataset spec and a loaded
corpus (:class:`Corpus`). Loading lives in :mod:`lenbench.data.corpora`; the cache folder is
:func:`lenbench.paths.cache_root`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class DatasetSpec:
    """A resolved ``--dataset`` value: where the documents come from and which field holds the text."""

    name: str  # as given by the user (catalogue name, hf:..., path, or default)
    kind: str  # "default", "hf" or "local"
    source: str = ""  # hub id, or a local file/folder/glob
    config: str | None = None  # hub config name
    split: str | None = None  # hub split to use (then split by hash)
    field: str = "text"

    @property
    def label(self) -> str:
        """Short name for cell labels: the catalogue/default name, hub id, file stem or folder name."""
        if self.kind == "local" and self.name == self.source:
            path = Path(self.source.rstrip("/"))
            if any(c in self.source for c in GLOB_CHARS):
                path = next((p for p in path.parents if not GLOB_CHARS.intersection(p.name)), path.parent)
            return path.stem or "files"
        return self.name.removeprefix("hf:")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Corpus:
    """Train and validation documents as ``datasets.Dataset`` objects with one ``text`` column."""

    spec: DatasetSpec
    train: Any  # datasets.Dataset
    validation: Any  # datasets.Dataset
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identity of the documents (``datasets``' fingerprints of both splits)."""
        return f"{self.train._fingerprint}-{self.validation._fingerprint}"
