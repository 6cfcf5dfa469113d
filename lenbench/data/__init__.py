"""Data for the LM suite: corpora through Hugging Face ``datasets`` and tokenizers (docs/architecture.md)."""

from lenbench.data.corpora import (
    Corpus,
    DatasetSpec,
    TokenizedCorpus,
    TokenSplit,
    load_corpus,
    parse_dataset,
    tokenize_corpus,
)
from lenbench.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "Corpus",
    "DatasetSpec",
    "TokenSplit",
    "Tokenizer",
    "TokenizedCorpus",
    "load_corpus",
    "load_tokenizer",
    "parse_dataset",
    "tokenize_corpus",
]
