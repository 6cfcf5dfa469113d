"""Byte-level BPE trained offline on a corpus's training split with Hugging Face ``tokenizers``.

``bpe:<V>`` (``bpe`` alone: ``V = DEFAULT_VOCAB``) has ``V`` ids: GPT-2's 256 byte symbols, the merges
that ``tokenizers.trainers.BpeTrainer`` learns from the training documents (Sennrich et al. 2016,
byte-level as in GPT-2, Radford et al. 2019) up to ``V - 1`` symbols, and the separator ``V - 1``
placed after every document. Text is split by GPT-2's pre-tokenization regex
(``pre_tokenizers.ByteLevel(add_prefix_space=False)``), not normalized, and decoded by the byte-level
decoder, so ``decode(encode(text)) == text`` for any string. A small corpus may yield fewer merges:
the ids between the last merge and the separator are then unused, and ``vocab_size`` stays ``V``.

Only the training split is seen, never validation. Training is deterministic: the byte alphabet is
sorted and merges are chosen by (count, pair ids), with no continuing-subword prefix (the one
hash-map-ordered step, huggingface/tokenizers#2066). The trained tokenizer is cached as
``cache_root()/bpe/<key>.json`` with ``key = sha256(recipe | training-split fingerprint | V)``; its
name, ``bpe:<V>@<first 10 hex digits of sha256(tokenizer JSON)>``, identifies it in token caches
and results.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from lenbench.errors import LenbenchError
from lenbench.paths import cache_root

if TYPE_CHECKING:
    from lenbench.data.documents import Corpus

DEFAULT_VOCAB = 4096
MIN_VOCAB = 258  # 256 byte symbols, one merge, the separator
RECIPE = "bytelevel-bpe-v1"


def parse_bpe_spec(spec: str) -> int:
    """``bpe`` -> :data:`DEFAULT_VOCAB`; ``bpe:<V>`` -> ``V`` (an integer >= :data:`MIN_VOCAB`)."""
    if spec == "bpe":
        return DEFAULT_VOCAB
    text = spec.removeprefix("bpe:").strip()
    if not spec.startswith("bpe:") or not text.isdigit() or int(text) < MIN_VOCAB:
        raise LenbenchError(f"tokenizer {spec!r} must be 'bpe' or bpe:<vocab size>, an integer >= {MIN_VOCAB}")
    return int(text)


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise LenbenchError("tokenizer bpe needs the 'tokenizers' package (pip install tokenizers)") from exc
    return tokenizers


def _texts(corpus: Corpus) -> Iterator[str]:
    for batch in corpus.train.select_columns(["text"]).iter(batch_size=1024):
        yield from (t or "" for t in batch["text"])


def train_bpe(corpus: Corpus, vocab_size: int) -> Any:
    """A fresh ``tokenizers.Tokenizer`` with ``vocab_size - 1`` symbols learned on ``corpus.train``."""
    tk = _tokenizers()
    backend = tk.Tokenizer(tk.models.BPE())
    backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(corpus), trainer, length=len(corpus.train))
    return backend


class BPETokenizer:
    """A trained byte-level BPE behind the ``Tokenizer`` interface; the separator is id ``vocab_size - 1``."""

    def __init__(self, backend: Any, vocab_size: int, digest: str) -> None:
        self.backend = backend
        self.vocab_size = vocab_size
        self.sep_id = vocab_size - 1
        self.merged_vocab = int(backend.get_vocab_size())
        self.name = f"bpe:{vocab_size}@{digest[:10]}"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return str(self.backend.decode([int(i) for i in ids if int(i) < self.merged_vocab]))


def bpe_cache_path(corpus: Corpus, vocab_size: int) -> Any:
    key = hashlib.sha256(f"{RECIPE}|{corpus.train._fingerprint}|{vocab_size}".encode()).hexdigest()[:20]
    return cache_root() / "bpe" / f"{key}.json"


def load_bpe(spec: str, corpus: Corpus | None) -> BPETokenizer:
    """The ``bpe`` tokenizer of ``corpus``'s training split: from the cache, else trained and cached."""
    vocab_size = parse_bpe_spec(spec)
    if corpus is None:
        raise LenbenchError(f"tokenizer {spec} is trained on a corpus's training split; none was given")
    tk = _tokenizers()
    path = bpe_cache_path(corpus, vocab_size)
    if path.exists():
        text = path.read_text(encoding="utf-8")
        backend = tk.Tokenizer.from_str(text)
    else:
        backend = train_bpe(corpus, vocab_size)
        text = backend.to_str()
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise LenbenchError(f"cannot write the tokenizer cache {path}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return BPETokenizer(backend, vocab_size, hashlib.sha256(text.encode()).hexdigest())
