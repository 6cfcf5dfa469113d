"""Which validation tokens the ppl suite scores at each evaluation length: three named protocols.

An evaluation set at length L is a matrix of rows of ``L + 1`` token ids (inputs ``row[:-1]``,
labels ``row[1:]``) and, per row, how many of its last labels are the scored targets; the
perplexity ``ppl_last256`` is ``exp(mean CE)`` over exactly those targets (``perplexity`` in
:mod:`lenbench.suites.ppl`). With ``K = eval.last_tokens`` (256):

- ``fixed_targets`` (the default; docs/statistics.md §7: the same target tokens at every evaluation length):
  ``samples`` windows of ``W`` tokens at fixed positions of the packed validation stream
  (documents joined by the separator, cut into consecutive non-overlapping blocks of ``W``; a
  seeded choice of blocks shared by every cell). The targets are the last ``S = min(K, max L)``
  tokens of each window, identical at every length. At ``L >= S`` each window gives one row: the
  ``L + 1`` tokens ending at the window's end, scoring its last ``S`` labels, so every target sees
  ``L - S`` to ``L - 1`` tokens of context. At ``L < S`` the span is covered by ``ceil(S / L)``
  consecutive rows of ``L + 1`` tokens ending at the span's end, ``end - L``, ...; each scores
  its labels that fall in the span (all ``L``, the earliest row fewer), so every target is still
  scored once, with 0 to ``L - 1`` tokens of context, the model's view at length L (DAPE scores
  every token when ``L <= 256``). ``W = max(max L, max over L < S of ceil(S / L) * L) + 1``.
- ``dape``: DAPE's own protocol (docs/dape.md §4.2; GPT-NeoX's validation set is the packed stream
  cut into samples of ``L + 1`` tokens in random order): per length, ``samples`` of the
  non-overlapping ``L + 1``-token blocks of the packed stream, chosen at random with a seed of
  (``EVAL_SEED``, L), scoring the last ``min(K, L)`` labels. Different tokens at each length.
- ``documents``: lenbench's first protocol, the first ``L + 1`` tokens of validation documents at
  least that long, with a fallback to the packed stream (:func:`document_windows`). The
  document set shrinks as L grows, so the content drifts with the length. Records written before
  protocols were named used it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lenbench.data.corpora import TokenSplit
from lenbench.errors import LenbenchError

PROTOCOLS = ("fixed_targets", "dape", "documents")
DEFAULT_PROTOCOL = "fixed_targets"
EVAL_SEED = 0  # the evaluation windows are the same for every cell
PROTOCOL_TEXT = {  # one line per protocol, for report notes
    "fixed_targets": "fixed_targets protocol: the same target tokens at every L (the last 256 tokens of fixed "
    "windows of the validation stream), each scored with L tokens of context",
    "dape": "dape protocol (DAPE's): at each L, random windows of L + 1 tokens of the validation stream, "
    "the last min(256, L) scored, so each L scores different tokens",
    "documents": "documents protocol: the first L + 1 tokens of validation documents that long, the last "
    "min(256, L) scored; the documents (and so the content) change with L",
}


@dataclass(frozen=True)
class EvalSet:
    """Rows ``[m, L + 1]`` to run the model on and how many trailing labels of each row are scored."""

    windows: np.ndarray
    scored: np.ndarray  # [m] int64, 1 <= scored[i] <= L
    concatenated: bool  # the rows are windows of the packed stream (documents joined by the separator)
    long_documents: int | None = None  # documents of >= L + 1 tokens (documents protocol only)
    spans: int | None = None  # fixed windows whose targets are scored (fixed_targets only)

    @property
    def length(self) -> int:
        return self.windows.shape[1] - 1

    def targets(self) -> np.ndarray:
        """The scored label ids in row order (for fixed_targets: the spans, each in stream order)."""
        return np.concatenate([row[len(row) - k :] for row, k in zip(self.windows, self.scored, strict=True)])


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise LenbenchError(f"unknown evaluation protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")


def packed_blocks(split: TokenSplit, width: int, samples: int, seed: list[int], what: str) -> np.ndarray:
    """``samples`` of the consecutive non-overlapping ``width``-token blocks of the packed stream,
    a seeded random choice kept in stream order -> ``[n, width]`` int64."""
    blocks = len(split.tokens) // width
    if blocks == 0:
        raise LenbenchError(
            f"the validation split has {len(split.tokens)} tokens, fewer than one sequence of {width} ({what}); "
            "use shorter evaluation lengths or a larger corpus"
        )
    chosen = np.sort(np.random.default_rng(seed).permutation(blocks)[:samples])
    index = chosen[:, None] * width + np.arange(width)[None, :]
    return np.asarray(split.tokens[index], dtype=np.int64)


def span_length(lengths: list[int], last_tokens: int) -> int:
    """``S = min(K, max L)``: the targets per fixed window."""
    return min(last_tokens, max(lengths))


def fixed_window_length(lengths: list[int], last_tokens: int) -> int:
    """``W``: room for the longest length's context and for every short length's chunks (module doc)."""
    span = span_length(lengths, last_tokens)
    return max([max(lengths), *(math.ceil(span / n) * n for n in lengths if n < span)]) + 1


def fixed_windows(split: TokenSplit, lengths: list[int], samples: int, last_tokens: int) -> np.ndarray:
    """The fixed windows ``[n, W]`` of the ``fixed_targets`` protocol (the same for every length)."""
    width = fixed_window_length(lengths, last_tokens)
    return packed_blocks(split, width, samples, [EVAL_SEED], "a fixed_targets window")


def fixed_target_set(windows: np.ndarray, length: int, span: int) -> EvalSet:
    """Rows at length L scoring the last ``span`` tokens of every fixed window (module doc)."""
    width = windows.shape[1]
    chunks = max(1, math.ceil(span / length))
    if chunks * length + 1 > width:
        raise LenbenchError(f"fixed windows of {width} tokens are too short for length {length}")
    rows, scored = [], []
    for j in reversed(range(chunks)):  # earliest chunk first, so the targets come out in stream order
        end = width - j * length
        rows.append(windows[:, end - length - 1 : end])
        scored.append(min(length, span - j * length))
    m = len(windows)
    stacked = np.stack(rows, axis=1).reshape(m * chunks, length + 1)
    counts = np.tile(np.asarray(scored, dtype=np.int64), m)
    return EvalSet(np.ascontiguousarray(stacked), counts, concatenated=True, spans=m)


def dape_set(split: TokenSplit, length: int, samples: int, last_tokens: int) -> EvalSet:
    """DAPE's protocol at length L: random non-overlapping blocks of ``L + 1`` tokens of the packed stream."""
    windows = packed_blocks(split, length + 1, samples, [EVAL_SEED, length], f"length {length} + 1")
    return EvalSet(windows, np.full(len(windows), min(last_tokens, length), dtype=np.int64), concatenated=True)


def document_windows(split: TokenSplit, length: int, samples: int, min_sequences: int) -> tuple[np.ndarray, bool, int]:
    """Evaluation sequences of ``length + 1`` tokens -> (windows, concatenated, long documents).

    The first ``length + 1`` tokens of each validation document at least that long (a fixed random
    subset of ``samples`` of them); with fewer than ``min(min_sequences, samples)`` such documents,
    consecutive windows of the whole validation stream (documents joined by the separator).
    """
    need = length + 1
    long_docs = np.flatnonzero(split.lengths() >= need)
    if len(long_docs) >= min(min_sequences, samples):
        rng = np.random.default_rng(EVAL_SEED)
        chosen = np.sort(rng.permutation(long_docs)[:samples])
        windows = np.stack([np.asarray(split.tokens[split.offsets[i] : split.offsets[i] + need]) for i in chosen])
        return windows.astype(np.int64), False, len(long_docs)
    count = min(samples, len(split.tokens) // need)
    if count == 0:
        raise LenbenchError(
            f"the validation split has {len(split.tokens)} tokens, fewer than one sequence of {need}; "
            "use shorter evaluation lengths or a larger corpus"
        )
    windows = np.asarray(split.tokens[: count * need]).reshape(count, need)
    return windows.astype(np.int64), True, len(long_docs)


def document_set(split: TokenSplit, length: int, samples: int, min_sequences: int, last_tokens: int) -> EvalSet:
    windows, concatenated, long_docs = document_windows(split, length, samples, min_sequences)
    scored = np.full(len(windows), min(last_tokens, length), dtype=np.int64)
    return EvalSet(windows, scored, concatenated, long_documents=long_docs)


class EvalPlan:
    """The evaluation sets of one cell, per length, under its protocol (fixed windows drawn once)."""

    def __init__(self, split: TokenSplit, protocol: str, lengths: list[int], samples: int, min_sequences: int,
                 last_tokens: int) -> None:
        check_protocol(protocol)
        self.split, self.protocol, self.samples = split, protocol, samples
        self.min_sequences, self.last_tokens = min_sequences, last_tokens
        self.span = span_length(lengths, last_tokens)
        self.fixed = fixed_windows(split, lengths, samples, last_tokens) if protocol == "fixed_targets" else None
        if self.fixed is None:  # the longest length must fit too: say so before any training
            self.at(max(lengths))

    def at(self, length: int) -> EvalSet:
        if self.fixed is not None:
            return fixed_target_set(self.fixed, length, self.span)
        if self.protocol == "dape":
            return dape_set(self.split, length, self.samples, self.last_tokens)
        return document_set(self.split, length, self.samples, self.min_sequences, self.last_tokens)

    def describe(self) -> str:
        """One line saying which tokens were scored (fixed_targets and dape; printed after evaluation)."""
        if self.fixed is not None:
            n, width = self.fixed.shape
            return (f"fixed targets: the last {self.span} tokens of {n} fixed windows of {width} tokens of the "
                    f"validation stream, each scored with L tokens of context at every length L")
        return (f"DAPE's protocol: at each length L, up to {self.samples} random windows of L + 1 tokens of "
                f"the validation stream, scoring the last min({self.last_tokens}, L)")
