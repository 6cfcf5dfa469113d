"""CHE regular-language tasks: even_pairs, modular_arithmetic, parity_check, cycle_navigation.

Definitions follow docs/che.md §1.1-§1.4. Also home of ``evaluate_mod``, the modular
infix evaluator that the bracket tasks in ``dcf`` reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from lenbench.tasks.che.base import TASKS, CheTask

MODULUS = 5


def as_long(array: np.ndarray) -> torch.Tensor:
    """A numpy integer array as a torch LongTensor (always a fresh C-ordered copy; views such as
    ``x[:, ::-1]`` may carry negative strides, which torch rejects)."""
    return torch.from_numpy(np.array(array, dtype=np.int64, order="C"))


def _bits(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    return rng.integers(0, 2, size=(batch, length), dtype=np.int64)


@dataclass(frozen=True)
class Symbols:
    """Token ids of an arithmetic vocabulary; digits are the ids ``0..modulus-1``."""

    plus: int
    minus: int
    times: int | None = None
    open: int | None = None
    close: int | None = None


_NEG = -1  # unary minus on the operator stack


def evaluate_mod(tokens: list[int], sym: Symbols, modulus: int = MODULUS) -> int:
    """Value mod ``modulus`` of an infix expression of token ids, in {0..modulus-1}.

    Normal precedence (unary minus, then ``*``, then left-associative ``+``/``-``) and brackets, as
    Python's ``eval`` reads the decoded string. Iterative (shunting-yard), so deep nesting is fine.
    """
    prec = {_NEG: 3, sym.plus: 1, sym.minus: 1}
    if sym.times is not None:
        prec[sym.times] = 2
    values: list[int] = []
    ops: list[int] = []

    def apply() -> None:
        op = ops.pop()
        if op == _NEG:
            values[-1] = -values[-1] % modulus
            return
        right = values.pop()
        left = values.pop()
        if op == sym.plus:
            values.append((left + right) % modulus)
        elif op == sym.minus:
            values.append((left - right) % modulus)
        else:
            values.append((left * right) % modulus)

    after_operand = False
    for tok in tokens:
        if 0 <= tok < modulus:
            values.append(tok)
            after_operand = True
        elif tok == sym.open:
            ops.append(tok)
            after_operand = False
        elif tok == sym.close:
            while ops[-1] != sym.open:
                apply()
            ops.pop()
            after_operand = True
        elif tok == sym.minus and not after_operand:
            ops.append(_NEG)
        elif tok in prec:
            while ops and ops[-1] != sym.open and prec[ops[-1]] >= prec[tok]:
                apply()
            ops.append(tok)
            after_operand = False
        else:
            raise ValueError(f"token id {tok} is not part of the expression vocabulary")
    while ops:
        apply()
    if len(values) != 1:
        raise ValueError("malformed expression")
    return values[0] % modulus


@TASKS.register("even_pairs")
class EvenPairs(CheTask):
    """even_pairs (docs/che.md §1.1): N uniform bits; class = (#"01" + #"10" adjacent pairs) mod 2.

    Equivalently ``[s_0 != s_{N-1}]`` (0 for N=1), which is how ``sample`` computes it.
    """

    name = "even_pairs"
    level = "regular"
    description = "is the number of unequal adjacent bit pairs even (0) or odd (1)"
    input_size = 2
    output_size = 2

    def target(self, inputs: list[int]) -> list[int]:
        return [sum(a != b for a, b in pairwise(inputs)) % 2]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _bits(rng, batch, length)
        y = (x[:, 0] != x[:, -1]).astype(np.int64)[:, None]
        return as_long(x), as_long(y)


@TASKS.register("modular_arithmetic")
class ModularArithmetic(CheTask):
    """modular_arithmetic (docs/che.md §1.2): value mod 5 of ``d op d op ... d`` without brackets.

    Even N is lowered to N-1, so the input has odd length 2k+1: k+1 uniform digits 0-4 at even
    positions and k operators uniform over ``+``=5, ``-``=6, ``*``=7 between them (the blank ``_``=8
    is in the vocabulary but never sampled). Normal precedence, ``*`` first.
    """

    name = "modular_arithmetic"
    level = "regular"
    description = "value mod 5 of a bracket-free expression over + - * (even N lowered to N-1)"
    input_size = MODULUS + 4
    output_size = MODULUS
    PLUS, MINUS, TIMES, BLANK = 5, 6, 7, 8
    SYMBOLS = Symbols(plus=PLUS, minus=MINUS, times=TIMES)

    @staticmethod
    def input_length(length: int) -> int:
        """N_in: N for odd N, N-1 for even N."""
        return length if length % 2 == 1 else length - 1

    def target(self, inputs: list[int]) -> list[int]:
        return [evaluate_mod(inputs, self.SYMBOLS)]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_in = self.input_length(length)
        if n_in < 1:
            raise ValueError(f"modular_arithmetic needs length >= 1, got {length}")
        k = (n_in - 1) // 2
        digits = rng.integers(0, MODULUS, size=(batch, k + 1), dtype=np.int64)
        ops = rng.integers(self.PLUS, self.TIMES + 1, size=(batch, k), dtype=np.int64)
        x = np.empty((batch, n_in), dtype=np.int64)
        x[:, 0::2] = digits
        x[:, 1::2] = ops
        # Left-to-right scan: total of finished +/- terms, the running product term and its sign.
        total = np.zeros(batch, dtype=np.int64)
        term = digits[:, 0].copy()
        sign = np.ones(batch, dtype=np.int64)
        for i in range(k):
            op, d = ops[:, i], digits[:, i + 1]
            times = op == self.TIMES
            total = np.where(times, total, (total + sign * term) % MODULUS)
            term = np.where(times, (term * d) % MODULUS, d)
            sign = np.where(times, sign, np.where(op == self.MINUS, -1, 1))
        y = ((total + sign * term) % MODULUS)[:, None]
        return as_long(x), as_long(y)


@TASKS.register("parity_check")
class ParityCheck(CheTask):
    """parity_check (docs/che.md §1.3): N uniform bits; class = (number of 1s) mod 2."""

    name = "parity_check"
    level = "regular"
    description = "is the number of 1s even (0) or odd (1)"
    input_size = 2
    output_size = 2

    def target(self, inputs: list[int]) -> list[int]:
        return [sum(inputs) % 2]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _bits(rng, batch, length)
        return as_long(x), as_long(x.sum(axis=1, keepdims=True) % 2)


@TASKS.register("cycle_navigation")
class CycleNavigation(CheTask):
    """cycle_navigation (docs/che.md §1.4): N actions uniform over ids 0=left, 1=stay, 2=right on a 5-cycle.

    Starting at 0, class = (sum of (a_i - 1)) mod 5.
    """

    name = "cycle_navigation"
    level = "regular"
    description = "final position on a 5-cycle after moves 0=-1, 1=stay, 2=+1 from position 0"
    input_size = 3
    output_size = MODULUS

    def target(self, inputs: list[int]) -> list[int]:
        return [sum(a - 1 for a in inputs) % MODULUS]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, 3, size=(batch, length), dtype=np.int64)
        return as_long(x), as_long((x - 1).sum(axis=1, keepdims=True) % MODULUS)
