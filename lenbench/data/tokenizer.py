"""Tokenizers for the LM suite: bytes, a BPE trained here (no download), or a Hugging Face tokenizer.

``bytes``: the UTF-8 bytes of the text are the ids 0..255; id 256 is the separator placed after
every document (``<|sep|>``), so ``vocab_size = 257``. Lossless and download-free.

``bpe`` / ``bpe:<V>``: a byte-level BPE with ``V`` ids trained offline on the training split of the
cell's corpus with the ``tokenizers`` package and cached (:mod:`lenbench.data.bpe`). Lossless.

``hf:<name>``: a tokenizer from the Hub (e.g. ``hf:gpt2``, the DAPE setup, docs/dape.md §3(d)) loaded
with the ``tokenizers`` package, or with ``transformers`` when only that one is installed. Its EOS
token (``<|endoftext|>`` for GPT-2) is the separator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lenbench.errors import LenbenchError

if TYPE_CHECKING:
    from lenbench.data.documents import Corpus


class Tokenizer(Protocol):
    """Text -> int ids. ``name`` identifies it in caches and results; ``sep_id`` ends every document."""

    name: str
    vocab_size: int
    sep_id: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: list[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus the separator 256 (``vocab_size = 257``)."""

    name = "bytes"
    vocab_size = 257
    sep_id = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        data = bytes(int(i) for i in ids if int(i) < 256)
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (preferred) or a ``transformers`` tokenizer behind one interface."""

    def __init__(self, name: str, backend: Any, kind: str) -> None:
        self.name = f"hf:{name}"
        self.backend = backend
        self.kind = kind
        if kind == "tokenizers":
            self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
            sep = None
            for token in ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>"):
                sep = backend.token_to_id(token)
                if sep is not None:
                    break
        else:
            self.vocab_size = int(len(backend))
            sep = backend.eos_token_id if backend.eos_token_id is not None else backend.sep_token_id
        if sep is None:  # no end-of-text token: append one id past the vocabulary
            sep = self.vocab_size
            self.vocab_size += 1
        self.sep_id = int(sep)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.kind == "tokenizers":
            return [np.asarray(e.ids, dtype=np.int64) for e in self.backend.encode_batch(texts)]
        ids = self.backend(texts, add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return str(self.backend.decode([int(i) for i in ids]))


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def load_hf_tokenizer(name: str) -> HFTokenizer:
    """``tokenizers.Tokenizer.from_pretrained(name)``, else ``transformers.AutoTokenizer``."""
    tokenizers = _import("tokenizers")
    transformers = _import("transformers") if tokenizers is None else None
    if tokenizers is None and transformers is None:
        raise LenbenchError(
            f"tokenizer hf:{name} needs the 'tokenizers' or 'transformers' package "
            "(pip install tokenizers), or use --tokenizer bytes"
        )
    try:
        if tokenizers is not None:
            return HFTokenizer(name, tokenizers.Tokenizer.from_pretrained(name), "tokenizers")
        return HFTokenizer(name, transformers.AutoTokenizer.from_pretrained(name), "transformers")
    except LenbenchError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise LenbenchError(
            f"cannot load tokenizer hf:{name} ({reason}); check the name and the network, or use --tokenizer bytes"
        ) from exc


def check_tokenizer_spec(spec: str) -> None:
    """Validate the spelling only (no loading, no network): used when expanding a suite."""
    if spec == "bpe" or spec.startswith("bpe:"):
        from lenbench.data.bpe import parse_bpe_spec

        parse_bpe_spec(spec)
    elif spec != "bytes" and not (spec.startswith("hf:") and spec[3:].strip()):
        raise LenbenchError(f"unknown tokenizer {spec!r}: use bytes, bpe[:<vocab size>] or hf:<name> (e.g. hf:gpt2)")


def spec_vocab_size(spec: str) -> int:
    """The vocabulary size a spec gives, without a corpus (``bpe:<V>`` has ``V`` ids whatever it learned)."""
    check_tokenizer_spec(spec)
    if spec == "bpe" or spec.startswith("bpe:"):
        from lenbench.data.bpe import parse_bpe_spec

        return parse_bpe_spec(spec)
    return load_tokenizer(spec).vocab_size


def load_tokenizer(spec: str, corpus: Corpus | None = None) -> Tokenizer:
    """``bytes`` (no corpus needed), ``bpe[:<V>]`` (trained on ``corpus``'s training split) or ``hf:<name>``."""
    check_tokenizer_spec(spec)
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("bpe"):
        from lenbench.data.bpe import load_bpe

        return load_bpe(spec, corpus)
    return load_hf_tokenizer(spec[3:].strip())
