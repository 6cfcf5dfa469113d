"""Leakage control for train/validation splits: a content key, and near-duplicates found by chunk hashes.

Split key: :func:`content_key` is the text with every run of whitespace collapsed to one space, so
copies that differ only in layout or line endings land on the same side of a hash split.

Near-duplicates: a validation document is cut into aligned chunks of ``w = 32`` UTF-8 bytes (offsets
0, w, 2w, ...; a tail shorter than ``w`` is ignored), and a chunk counts as *shared* when the same
``w`` bytes occur anywhere (at any offset) in a training document. The document is dropped from
validation when ``shared chunks / chunks >= max_shared`` (default 0.2: the "clean" bound, under 20%
contaminated, of Llama 2's contamination analysis, Touvron et al. 2023, App. A.6). Ordinary code and
prose share a few chunks with any large corpus (license headers, idioms such as
``if __name__ == "__main__":``), so the rule is a share, not "no shared chunk at all".

Windows are compared by a 64-bit polynomial hash, ``h(b_0..b_{w-1}) = sum_j b_j * P^(w-1-j) mod 2^64``
with ``P`` the 64-bit FNV prime: equal bytes give equal hashes, so a shared chunk is never missed;
a collision could only mark an unshared chunk as shared (probability ~ n / 2^64 per pair).
Cost: one pass over the training bytes (about 3 MB/s on one slow CPU core) and memory for the
validation chunks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

CHUNK_BYTES = 32
MAX_SHARED = 0.2
FNV_PRIME = 1099511628211


def content_key(text: str) -> str:
    """The text with each whitespace run collapsed to one space and the ends stripped."""
    return " ".join(text.split())


def _powers(width: int) -> np.ndarray:
    return np.array([pow(FNV_PRIME, width - 1 - j, 1 << 64) for j in range(width)], dtype=np.uint64)


def window_hashes(data: bytes, width: int = CHUNK_BYTES) -> np.ndarray:
    """Hash of every ``width``-byte window of ``data`` (``len(data) - width + 1`` of them), uint64."""
    count = len(data) - width + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    values = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        for j, power in enumerate(_powers(width)):
            hashes += values[j : j + count] * power
    return hashes


def chunk_hashes(data: bytes, width: int = CHUNK_BYTES) -> np.ndarray:
    """Hashes of the aligned chunks ``data[0:w], data[w:2w], ...`` (full chunks only)."""
    return window_hashes(data[: len(data) // width * width], width)[::width]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="replace")


@dataclass(frozen=True)
class Overlap:
    """Per validation document: its chunk count and how many of them occur in the training texts."""

    chunks: np.ndarray
    shared: np.ndarray

    def shares(self) -> np.ndarray:
        """``shared / chunks`` per document (0 for a document shorter than one chunk)."""
        return np.divide(self.shared, self.chunks, out=np.zeros(len(self.chunks)), where=self.chunks > 0)


def chunk_overlap(validation: Iterable[str], training: Iterable[str], width: int = CHUNK_BYTES) -> Overlap:
    """Count, for each validation text, its aligned chunks that occur at any offset of any training text."""
    per_doc = [chunk_hashes(_utf8(t), width) for t in validation]
    pool = np.unique(np.concatenate(per_doc)) if per_doc else np.zeros(0, dtype=np.uint64)
    seen = np.zeros(len(pool), dtype=bool)
    if len(pool):
        for text in training:
            windows = window_hashes(_utf8(text), width)
            where = np.minimum(np.searchsorted(pool, windows), len(pool) - 1)
            seen[where[pool[where] == windows]] = True
    shared = [int(seen[np.searchsorted(pool, h)].sum()) for h in per_doc]
    return Overlap(np.array([len(h) for h in per_doc], dtype=np.int64), np.array(shared, dtype=np.int64))


def near_duplicates(
    validation: Iterable[str], training: Iterable[str], max_shared: float = MAX_SHARED, width: int = CHUNK_BYTES
) -> list[int]:
    """Indices of the validation texts with ``shared chunks / chunks >= max_shared`` (see module docstring)."""
    shares = chunk_overlap(validation, training, width).shares()
    return [int(i) for i in np.flatnonzero(shares >= max_shared)]
