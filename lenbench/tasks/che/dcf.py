"""CHE deterministic context-free tasks: stack_manipulation, reverse_string,
modular_arithmetic_brackets and solve_equation (docs/che.md §1.5-§1.8).
"""

from __future__ import annotations

import numpy as np
import torch

from lenbench.tasks.che.base import TASKS, CheTask, mask_through_terminator
from lenbench.tasks.che.regular import MODULUS, Symbols, as_long, evaluate_mod

_TERMINATOR = 2


@TASKS.register("stack_manipulation")
class StackManipulation(CheTask):
    """stack_manipulation (docs/che.md §1.5): run stack actions, output the final stack top-to-bottom.

    Input (N tokens): k ~ U{1..N-1} bits (the initial stack, bottom-to-top; k = 1 for N = 1), then
    N-k actions uniform over 2=POP, 3=PUSH 0, 4=PUSH 1. A POP on an empty stack is ignored.
    Target (length N+1): the final stack top-to-bottom, the terminator 2, then 0s. Accuracy counts
    positions up to and including the terminator.
    """

    name = "stack_manipulation"
    level = "dcf"
    description = "apply POP/PUSH actions to a bit stack; output it top-to-bottom, then terminator 2"
    input_size = 5
    output_size = 3
    POP, PUSH0, PUSH1 = 2, 3, 4

    def output_length(self, length: int) -> int:
        return length + 1

    def accuracy_mask(self, targets: torch.Tensor) -> torch.Tensor:
        return mask_through_terminator(targets, _TERMINATOR)

    def target(self, inputs: list[int]) -> list[int]:
        stack: list[int] = []
        acting = False
        for tok in inputs:
            if tok in (0, 1):
                if acting:
                    raise ValueError("the initial stack bits must come before the actions")
                stack.append(tok)
                continue
            acting = True
            if tok == self.POP:
                if stack:
                    stack.pop()
            elif tok in (self.PUSH0, self.PUSH1):
                stack.append(tok - self.PUSH0)
            else:
                raise ValueError(f"unknown stack token {tok}")
        out = stack[::-1] + [_TERMINATOR]
        return out + [0] * (len(inputs) + 1 - len(out))

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        cols = np.arange(length)
        k = np.ones(batch, dtype=np.int64) if length == 1 else rng.integers(1, length, size=batch)
        bits = rng.integers(0, 2, size=(batch, length), dtype=np.int64)
        actions = rng.integers(self.POP, self.PUSH1 + 1, size=(batch, length), dtype=np.int64)
        x = np.where(cols[None, :] < k[:, None], bits, actions)
        # Every stack bit and PUSH is a push of `value`; the depth is a walk clamped at 0, which equals
        # the free walk minus its running minimum (with 0 included).
        is_push = x != self.POP
        value = np.where(x >= self.PUSH0, x - self.PUSH0, x)
        walk = np.cumsum(np.where(is_push, 1, -1), axis=1)
        depth = walk - np.minimum(np.minimum.accumulate(walk, axis=1), 0)
        # A push that leaves depth j survives iff the depth never drops below j afterwards.
        suffix_min = np.minimum.accumulate(depth[:, ::-1], axis=1)[:, ::-1]
        survives = is_push & (suffix_min >= depth)
        final = depth[:, -1]
        y = np.zeros((batch, length + 1), dtype=np.int64)
        rows, where = np.nonzero(survives)
        y[rows, final[rows] - depth[rows, where]] = value[rows, where]
        y[np.arange(batch), final] = _TERMINATOR
        return as_long(x), as_long(y)


@TASKS.register("reverse_string")
class ReverseString(CheTask):
    """reverse_string (docs/che.md §1.6): N uniform bits; target = the bits in reverse order (length N)."""

    name = "reverse_string"
    level = "dcf"
    description = "output the input bits in reverse order"
    input_size = 2
    output_size = 2

    def output_length(self, length: int) -> int:
        return length

    def target(self, inputs: list[int]) -> list[int]:
        return list(reversed(inputs))

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.integers(0, 2, size=(batch, length), dtype=np.int64)
        return as_long(x), as_long(x[:, ::-1])


def generate_expression(
    length: int, draws: list[float], sym: Symbols, n_ops: int, modulus: int = MODULUS
) -> tuple[list[int], int]:
    """The recursive bracket-expression generator of docs/che.md §1.7, run iteratively.

    ``gen(1..4)`` are ``d``, ``-d``, ``(d)``, ``(-d)``; ``gen(N >= 5)`` is ``( gen(l) op gen(N-3-l) )``
    with l ~ U{1..N-4} and op uniform over the first ``n_ops`` of ``+, -, *``. Random choices are read
    in order from ``draws`` (uniform floats in [0, 1); ``length`` of them always suffice). Returns
    the token ids (exactly ``length`` of them) and the value mod ``modulus``.
    """
    ops = (sym.plus, sym.minus, sym.times)
    assert sym.open is not None and sym.close is not None
    tokens: list[int] = []
    values: list[int] = []
    work: list[tuple[int, int]] = [(0, length)]  # (0, n): generate n chars; (1, op): emit op; (2, op): close
    pos = 0
    while work:
        kind, arg = work.pop()
        if kind == 0:
            n = arg
            if n < 5:
                d = int(draws[pos] * modulus)
                pos += 1
                body = [d] if n % 2 == 1 else [sym.minus, d]
                tokens.extend(body if n < 3 else [sym.open, *body, sym.close])
                values.append(d if n % 2 == 1 else -d % modulus)
            else:
                left = 1 + int(draws[pos] * (n - 4))
                op = ops[int(draws[pos + 1] * n_ops)]
                pos += 2
                tokens.append(sym.open)
                work.extend([(2, op), (0, n - 3 - left), (1, op), (0, left)])
        elif kind == 1:
            tokens.append(arg)
        else:
            tokens.append(sym.close)
            right, left_value = values.pop(), values.pop()
            if arg == sym.plus:
                values.append((left_value + right) % modulus)
            elif arg == sym.minus:
                values.append((left_value - right) % modulus)
            else:
                values.append((left_value * right) % modulus)
    return tokens, values[0]


@TASKS.register("modular_arithmetic_brackets")
class ModularArithmeticBrackets(CheTask):
    """modular_arithmetic_brackets (docs/che.md §1.7): value mod 5 of a random bracketed expression.

    N is the exact character count; the generator is ``generate_expression`` with ops ``+ - *``
    (mult=True, the paper setting). Ids: digits 0-4, ``+``=5, ``-``=6, ``*``=7, ``(``=8, ``)``=9
    (``x``=10 and ``=``=11 are never used; V_in = 11). Labels are skewed towards 0 (about 30%).
    """

    name = "modular_arithmetic_brackets"
    level = "dcf"
    description = "value mod 5 of a random fully bracketed expression over + - * (N = exact length)"
    input_size = MODULUS + 6
    output_size = MODULUS
    SYMBOLS = Symbols(plus=5, minus=6, times=7, open=8, close=9)

    def target(self, inputs: list[int]) -> list[int]:
        return [evaluate_mod(inputs, self.SYMBOLS)]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length < 1:
            raise ValueError(f"modular_arithmetic_brackets needs length >= 1, got {length}")
        draws = rng.random((batch, length)).tolist()
        x = np.empty((batch, length), dtype=np.int64)
        y = np.empty((batch, 1), dtype=np.int64)
        for b in range(batch):
            tokens, value = generate_expression(length, draws[b], self.SYMBOLS, n_ops=3)
            x[b] = tokens
            y[b, 0] = value
        return as_long(x), as_long(y)


@TASKS.register("solve_equation")
class SolveEquation(CheTask):
    """solve_equation (docs/che.md §1.8): find the digit x in ``expr(x) = v`` mod 5.

    e = ``generate_expression(N-2)`` with ops ``+ -`` only (no multiplication, so x is unique); a digit
    at idx ~ U{0..N-3}, advanced cyclically to the next digit when e[idx] is not one, is replaced
    by ``x``; then ``=`` and the value of e are appended. Ids: digits 0-4, ``+``=5, ``-``=6, ``(``=7,
    ``)``=8, ``x``=9, ``=``=10 (V_in = 11). N < 3 is degenerate: all-zero input, target 0.
    """

    name = "solve_equation"
    level = "dcf"
    description = "solve a bracketed +/- equation mod 5 for the unknown digit x"
    input_size = MODULUS + 6
    output_size = MODULUS
    SYMBOLS = Symbols(plus=5, minus=6, open=7, close=8)
    X, EQUALS = 9, 10

    def target(self, inputs: list[int]) -> list[int]:
        if len(inputs) < 3:
            return [0]
        if inputs[-2] != self.EQUALS or inputs.count(self.X) != 1:
            raise ValueError("expected '<expression with one x> = <digit>'")
        lhs = inputs[:-2]
        at = lhs.index(self.X)
        # The left side is a*x + b mod 5 with a = +-1, since only + and - occur.
        b = evaluate_mod(lhs[:at] + [0] + lhs[at + 1 :], self.SYMBOLS)
        a = (evaluate_mod(lhs[:at] + [1] + lhs[at + 1 :], self.SYMBOLS) - b) % MODULUS
        return [(inputs[-1] - b) * pow(a, -1, MODULUS) % MODULUS]

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length < 3:
            return as_long(np.zeros((batch, length))), as_long(np.zeros((batch, 1)))
        n = length - 2
        draws = rng.random((batch, n)).tolist()
        starts = rng.integers(0, n, size=batch).tolist()
        x = np.empty((batch, length), dtype=np.int64)
        y = np.empty((batch, 1), dtype=np.int64)
        for b in range(batch):
            tokens, value = generate_expression(n, draws[b], self.SYMBOLS, n_ops=2)
            at = starts[b]
            while tokens[at] >= MODULUS:
                at = (at + 1) % n
            y[b, 0] = tokens[at]
            tokens[at] = self.X
            x[b] = [*tokens, self.EQUALS, value]
        return as_long(x), as_long(y)
