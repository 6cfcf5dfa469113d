"""CHE context-sensitive tasks: duplicate_string, missing_duplicate_string, odds_first,
binary_addition, binary_multiplication, compute_sqrt and bucket_sort (docs/che.md
§1.9-§1.15).

Numbers too large for int64 go through Python ints: bit rows are packed with ``np.packbits`` and
read with ``int.from_bytes`` (and back), so only the arithmetic itself loops over samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lenbench.tasks.che.base import TASKS, CheTask, mask_through_terminator
from lenbench.tasks.che.regular import as_long

_TERMINATOR = 2


def _nonzero_bits(rng: np.random.Generator, widths: np.ndarray, columns: int) -> np.ndarray:
    """Bit rows [B, columns]: row r is uniform over the nonzero patterns of its first ``widths[r]`` bits
    (zeros beyond), i.e. a number uniform in {1..2^width - 1} written with ``width`` bits."""
    cols = np.arange(columns)
    bits = rng.integers(0, 2, size=(len(widths), columns), dtype=np.int64)
    bits[cols[None, :] >= widths[:, None]] = 0
    redo = np.flatnonzero(~bits.any(axis=1))
    while redo.size:
        fresh = rng.integers(0, 2, size=(redo.size, columns), dtype=np.int64)
        fresh[cols[None, :] >= widths[redo, None]] = 0
        bits[redo] = fresh
        redo = redo[~fresh.any(axis=1)]
    return bits


def _le_bits_to_ints(bits: np.ndarray) -> list[int]:
    """Little-endian bit rows [B, W] -> Python ints."""
    packed = np.packbits(bits.astype(np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _ints_to_le_bits(values: list[int], columns: int) -> np.ndarray:
    """Python ints -> little-endian bit rows [B, columns] (each value must fit)."""
    nbytes = max(1, (columns + 7) // 8)
    raw = b"".join(v.to_bytes(nbytes, "little") for v in values)
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(len(values), nbytes)
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :columns].astype(np.int64)


def _le_value(bits: list[int]) -> int:
    return sum(b << i for i, b in enumerate(bits))


def _le_digits(value: int) -> list[int]:
    """Little-endian bits without high-order zeros; 0 is ``[0]``."""
    return [(value >> i) & 1 for i in range(max(1, value.bit_length()))]


def _terminated(digits: list[int], total: int) -> list[int]:
    out = digits + [_TERMINATOR]
    return out + [0] * (total - len(out))


def _operands(
    rng: np.random.Generator, batch: int, length: int, separator: int
) -> tuple[np.ndarray, list[int], list[int]]:
    """Inputs ``bits(n) ++ [separator] ++ bits(m)`` for N >= 3 (docs/che.md §1.12), and n and m.

    l_n ~ U{1..N-2}, l_m = N-1-l_n; n, m uniform in {1..2^l - 1}, little-endian, zero-padded to l.
    """
    width = length - 2
    len_n = rng.integers(1, length - 1, size=batch)
    len_m = length - 1 - len_n
    n_bits = _nonzero_bits(rng, len_n, width)
    m_bits = _nonzero_bits(rng, len_m, width)
    cols = np.arange(length)[None, :]
    from_m = np.take_along_axis(m_bits, np.clip(cols - len_n[:, None] - 1, 0, width - 1), axis=1)
    from_n = np.take_along_axis(n_bits, np.minimum(cols, width - 1).repeat(batch, axis=0), axis=1)
    x = np.where(cols < len_n[:, None], from_n, np.where(cols == len_n[:, None], separator, from_m))
    return x, _le_bits_to_ints(n_bits), _le_bits_to_ints(m_bits)


def _degenerate_operand(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """N <= 2 (docs/che.md §1.12): v ~ U{0..2^N - 2} written as N little-endian bits, no separator."""
    values = rng.integers(0, 2**length - 1, size=batch)
    return (values[:, None] >> np.arange(length)[None, :]) & 1, values


def _split_operands(inputs: list[int], separator: int) -> tuple[list[int], list[int]]:
    if inputs.count(separator) != 1:
        raise ValueError("expected 'bits separator bits'")
    at = inputs.index(separator)
    return inputs[:at], inputs[at + 1 :]


@TASKS.register("duplicate_string")
class DuplicateString(CheTask):
    """duplicate_string (docs/che.md §1.9): N uniform bits s; target s·s (length 2N, no separator)."""

    name = "duplicate_string"
    level = "cs"
    description = "output the input bits twice"
    input_size = 2
    output_size = 2

    def output_length(self, length: int) -> int:
        return 2 * length

    def target(self, inputs: list[int]) -> list[int]:
        return inputs + inputs

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, 2, size=(batch, length), dtype=np.int64)
        return as_long(x), as_long(np.concatenate([x, x], axis=1))


@TASKS.register("missing_duplicate_string")
class MissingDuplicateString(CheTask):
    """missing_duplicate_string (docs/che.md §1.10): find the bit hidden by the missing token in ww.

    N >= 2: w ~ U{0,1}^(N//2); one uniform position i of ww becomes 2 and the target is ww[i];
    odd N appends one pad token 3. N = 1 is degenerate: input [1], target 1.
    """

    name = "missing_duplicate_string"
    level = "cs"
    description = "ww with one bit replaced by 2 (odd N: pad 3): output the missing bit"
    input_size = 4
    output_size = 2
    MISSING, PAD = 2, 3

    def target(self, inputs: list[int]) -> list[int]:
        if len(inputs) < 2:
            return [1]
        half = len(inputs) // 2
        at = inputs.index(self.MISSING)
        return [inputs[at + half] if at < half else inputs[at - half]]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length < 2:
            return as_long(np.ones((batch, length))), as_long(np.ones((batch, 1)))
        half = length // 2
        w = rng.integers(0, 2, size=(batch, half), dtype=np.int64)
        x = np.concatenate([w, w], axis=1)
        at = rng.integers(0, 2 * half, size=batch)
        rows = np.arange(batch)
        y = x[rows, at][:, None].copy()
        x[rows, at] = self.MISSING
        if length % 2:
            x = np.concatenate([x, np.full((batch, 1), self.PAD, dtype=np.int64)], axis=1)
        return as_long(x), as_long(y)


@TASKS.register("odds_first")
class OddsFirst(CheTask):
    """odds_first (docs/che.md §1.11): N uniform bits; target = s[1::2] ++ s[0::2] (0-based positions).

    The reference docstring shows the 1-based order; its code, which defines the benchmark, puts
    the elements at odd 0-based positions first: [1, 0, 0] -> [0, 1, 0].
    """

    name = "odds_first"
    level = "cs"
    description = "output the bits at odd (0-based) positions, then those at even positions"
    input_size = 2
    output_size = 2

    def output_length(self, length: int) -> int:
        return length

    def target(self, inputs: list[int]) -> list[int]:
        return inputs[1::2] + inputs[0::2]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, 2, size=(batch, length), dtype=np.int64)
        return as_long(x), as_long(np.concatenate([x[:, 1::2], x[:, 0::2]], axis=1))


@TASKS.register("binary_addition")
class BinaryAddition(CheTask):
    """binary_addition (docs/che.md §1.12): little-endian ``n + m``; N counts both operands and the ``+``=2.

    N >= 3: l_n ~ U{1..N-2}, l_m = N-1-l_n, n and m uniform in {1..2^l - 1}, zero-padded to their l.
    Target (length N+1): bits of n+m without high-order zeros, the terminator 2, then 0s.
    N <= 2 is degenerate: N bits of v ~ U{0..2^N - 2} (so N = 1 is always [0]) and the target is v.
    """

    name = "binary_addition"
    level = "cs"
    description = "add two little-endian binary numbers; output the sum, then terminator 2"
    input_size = 3
    output_size = 3
    PLUS = 2

    def output_length(self, length: int) -> int:
        return length + 1

    def accuracy_mask(self, targets: torch.Tensor) -> torch.Tensor:
        return mask_through_terminator(targets, _TERMINATOR)

    def target(self, inputs: list[int]) -> list[int]:
        if self.PLUS not in inputs:
            value = _le_value(inputs)
        else:
            n, m = _split_operands(inputs, self.PLUS)
            value = _le_value(n) + _le_value(m)
        return _terminated(_le_digits(value), len(inputs) + 1)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length <= 2:
            x, values = _degenerate_operand(rng, batch, length)
            sums = [int(v) for v in values]
        else:
            x, ns, ms = _operands(rng, batch, length, self.PLUS)
            sums = [n + m for n, m in zip(ns, ms, strict=True)]
        y = _ints_to_le_bits(sums, length + 1)
        y[np.arange(batch), [max(1, s.bit_length()) for s in sums]] = _TERMINATOR
        return as_long(x), as_long(y)


@TASKS.register("binary_multiplication")
class BinaryMultiplication(CheTask):
    """binary_multiplication (docs/che.md §1.13): little-endian ``n * m``, sampled as binary_addition.

    Target (length N): bits of n*m (at most N-1 of them), the terminator 2, then 0s.
    N <= 2 is degenerate: the input is as in binary_addition and the target is fixed, [2] for N = 1
    and [0, 2] for N = 2.
    """

    name = "binary_multiplication"
    level = "cs"
    description = "multiply two little-endian binary numbers; output the product, then terminator 2"
    input_size = 3
    output_size = 3
    TIMES = 2

    def output_length(self, length: int) -> int:
        return length

    def accuracy_mask(self, targets: torch.Tensor) -> torch.Tensor:
        return mask_through_terminator(targets, _TERMINATOR)

    def target(self, inputs: list[int]) -> list[int]:
        if len(inputs) <= 2:
            return [0] * (len(inputs) - 1) + [_TERMINATOR]
        n, m = _split_operands(inputs, self.TIMES)
        return _terminated(_le_digits(_le_value(n) * _le_value(m)), len(inputs))

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length <= 2:
            x, _ = _degenerate_operand(rng, batch, length)
            y = np.zeros((batch, length), dtype=np.int64)
            y[:, -1] = _TERMINATOR
            return as_long(x), as_long(y)
        x, ns, ms = _operands(rng, batch, length, self.TIMES)
        products = [n * m for n, m in zip(ns, ms, strict=True)]
        y = _ints_to_le_bits(products, length)
        y[np.arange(batch), [p.bit_length() for p in products]] = _TERMINATOR
        return as_long(x), as_long(y)


@TASKS.register("compute_sqrt")
class ComputeSqrt(CheTask):
    """compute_sqrt (docs/che.md §1.14): x ~ U{1..2^N - 1} as N big-endian bits (leading zeros allowed);
    target floor(sqrt(x)) as ceil(N/2) big-endian bits."""

    name = "compute_sqrt"
    level = "cs"
    description = "integer square root of a big-endian binary number, as ceil(N/2) bits"
    input_size = 2
    output_size = 2

    def output_length(self, length: int) -> int:
        return (length + 1) // 2

    def target(self, inputs: list[int]) -> list[int]:
        root = math.isqrt(int("".join(map(str, inputs)), 2))
        out_len = self.output_length(len(inputs))
        return [(root >> (out_len - 1 - i)) & 1 for i in range(out_len)]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out_len = self.output_length(length)
        # Uniform nonzero bit rows are uniform numbers; reversing the columns makes them big-endian.
        little = _nonzero_bits(rng, np.full(batch, length), length)
        roots = [math.isqrt(v) for v in _le_bits_to_ints(little)]
        y = _ints_to_le_bits(roots, out_len)[:, ::-1]
        return as_long(little[:, ::-1]), as_long(y)


@TASKS.register("bucket_sort")
class BucketSort(CheTask):
    """bucket_sort (docs/che.md §1.15): N tokens uniform over {0..4}; target = the tokens sorted ascending."""

    name = "bucket_sort"
    level = "cs"
    description = "sort tokens from {0..4} in ascending order"
    input_size = 5
    output_size = 5

    def output_length(self, length: int) -> int:
        return length

    def target(self, inputs: list[int]) -> list[int]:
        return sorted(inputs)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, self.input_size, size=(batch, length), dtype=np.int64)
        return as_long(x), as_long(np.sort(x, axis=1))
