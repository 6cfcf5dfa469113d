"""The 15 CHE tasks against docs/che.md §1: hand-worked targets, edge cases, sampler
shapes and agreement with ``target``, masks, label distributions, chance, independent checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenbench.tasks.che import TASKS, CheTask
from lenbench.tasks.che.base import mask_through_terminator

ORDER = [
    "even_pairs", "modular_arithmetic", "parity_check", "cycle_navigation",
    "stack_manipulation", "reverse_string", "modular_arithmetic_brackets", "solve_equation",
    "duplicate_string", "missing_duplicate_string", "odds_first", "binary_addition",
    "binary_multiplication", "compute_sqrt", "bucket_sort",
]  # fmt: skip
LEVEL = {
    **dict.fromkeys(ORDER[:4], "regular"),
    **dict.fromkeys(ORDER[4:8], "dcf"),
    **dict.fromkeys(ORDER[8:], "cs"),
}
# (V_in, C, T_out(N) as a function) from the docs/che.md §1 summary table
TABLE = {
    "even_pairs": (2, 2, lambda n: 1),
    "modular_arithmetic": (9, 5, lambda n: 1),
    "parity_check": (2, 2, lambda n: 1),
    "cycle_navigation": (3, 5, lambda n: 1),
    "stack_manipulation": (5, 3, lambda n: n + 1),
    "reverse_string": (2, 2, lambda n: n),
    "modular_arithmetic_brackets": (11, 5, lambda n: 1),
    "solve_equation": (11, 5, lambda n: 1),
    "duplicate_string": (2, 2, lambda n: 2 * n),
    "missing_duplicate_string": (4, 2, lambda n: 1),
    "odds_first": (2, 2, lambda n: n),
    "binary_addition": (3, 3, lambda n: n + 1),
    "binary_multiplication": (3, 3, lambda n: n),
    "compute_sqrt": (2, 2, lambda n: (n + 1) // 2),
    "bucket_sort": (5, 5, lambda n: n),
}
TERMINATOR_TASKS = ["stack_manipulation", "binary_addition", "binary_multiplication"]
LENGTHS = [1, 2, 3, 5, 40, 41, 100, 300]

MAB_CHARS = {**{i: str(i) for i in range(5)}, 5: "+", 6: "-", 7: "*", 8: "(", 9: ")"}
SOLVE_CHARS = {**{i: str(i) for i in range(5)}, 5: "+", 6: "-", 7: "(", 8: ")", 9: "x", 10: "="}
MA_CHARS = {**{i: str(i) for i in range(5)}, 5: "+", 6: "-", 7: "*"}


def task(name: str) -> CheTask:
    return TASKS.get(name)()


def n_in(name: str, n: int) -> int:
    return n - 1 if name == "modular_arithmetic" and n % 2 == 0 else n


def decode(ids: list[int], chars: dict[int, str]) -> str:
    return "".join(chars[i] for i in ids)


# ---------------------------------------------------------------- registry and class attributes


def test_registry_order_and_attributes() -> None:
    assert TASKS.names()[: len(ORDER)] == ORDER
    for name in ORDER:
        cls = TASKS.get(name)
        assert issubclass(cls, CheTask) and cls.name == name and cls.level == LEVEL[name]
        assert isinstance(cls.description, str) and cls.description and "\n" not in cls.description
        assert cls.__doc__ and "docs/che.md" in cls.__doc__
        v_in, c, t_out = TABLE[name]
        t = cls()
        assert (t.input_size, t.output_size) == (v_in, c)
        assert [t.output_length(n) for n in (1, 2, 7, 40, 500)] == [t_out(n) for n in (1, 2, 7, 40, 500)]


def test_chance_is_one_over_classes() -> None:
    for name in ORDER:
        t = task(name)
        assert t.chance == pytest.approx(1 / t.output_size)
    assert task("even_pairs").chance == 0.5 and task("bucket_sort").chance == pytest.approx(0.2)
    assert task("stack_manipulation").chance == pytest.approx(1 / 3)
    assert task("modular_arithmetic_brackets").chance == pytest.approx(0.2)


# ---------------------------------------------------------------- hand-worked targets

HAND = [
    ("even_pairs", [0], [0]),
    ("even_pairs", [1], [0]),
    ("even_pairs", [0, 1], [1]),
    ("even_pairs", [0, 1, 1, 0], [0]),
    ("even_pairs", [1, 0, 0], [1]),
    ("even_pairs", [1, 1, 0, 1, 0], [1]),
    ("modular_arithmetic", [3], [3]),
    ("modular_arithmetic", [2, 5, 3, 7, 4], [4]),  # 2+3*4 = 14
    ("modular_arithmetic", [1, 6, 4, 7, 4], [0]),  # 1-4*4 = -15
    ("modular_arithmetic", [4, 7, 4, 6, 3], [3]),  # 4*4-3 = 13
    ("modular_arithmetic", [2, 6, 3, 6, 4], [0]),  # (2-3)-4 = -5, left-associative
    ("modular_arithmetic", [3, 7, 4, 7, 2, 5, 1], [0]),  # 3*4*2+1 = 25
    ("parity_check", [0], [0]),
    ("parity_check", [1, 1], [0]),
    ("parity_check", [1, 0, 1, 1], [1]),
    ("cycle_navigation", [1, 1], [0]),
    ("cycle_navigation", [0], [4]),
    ("cycle_navigation", [2, 2, 2], [3]),
    ("cycle_navigation", [0, 0, 2, 1], [4]),
    ("cycle_navigation", [2, 2, 2, 2, 2], [0]),
    ("stack_manipulation", [1, 2], [2, 0, 0]),  # stack [1], POP
    ("stack_manipulation", [1], [1, 2]),  # N = 1: the stack alone
    ("stack_manipulation", [0, 1, 1, 0, 4, 2, 2], [1, 1, 0, 2, 0, 0, 0, 0]),  # reference docstring
    ("stack_manipulation", [1, 1, 0, 2, 2, 2], [2, 0, 0, 0, 0, 0, 0]),  # reference docstring
    ("stack_manipulation", [0, 2, 2, 3], [0, 2, 0, 0, 0]),  # the second POP is on an empty stack
    ("stack_manipulation", [0, 1, 4, 3], [0, 1, 1, 0, 2]),  # output is top-to-bottom
    ("reverse_string", [1], [1]),
    ("reverse_string", [1, 0, 0], [0, 0, 1]),
    ("modular_arithmetic_brackets", [3], [3]),  # d
    ("modular_arithmetic_brackets", [6, 3], [2]),  # -d
    ("modular_arithmetic_brackets", [8, 3, 9], [3]),  # (d)
    ("modular_arithmetic_brackets", [8, 6, 3, 9], [2]),  # (-d)
    ("modular_arithmetic_brackets", [8, 2, 7, 4, 9], [3]),  # (2*4)
    ("modular_arithmetic_brackets", [8, 1, 6, 6, 2, 9], [3]),  # (1--2)
    ("modular_arithmetic_brackets", [8, 8, 1, 5, 2, 9, 7, 6, 4, 9], [3]),  # ((1+2)*-4) = -12
    ("modular_arithmetic_brackets", [8, 8, 6, 4, 9, 6, 8, 3, 7, 3, 9, 9], [2]),  # ((-4)-(3*3)) = -13
    ("solve_equation", [0], [0]),  # N < 3 is degenerate
    ("solve_equation", [0, 0], [0]),
    ("solve_equation", [9, 10, 2], [2]),  # x=2
    ("solve_equation", [6, 9, 10, 1], [4]),  # -x=1
    ("solve_equation", [7, 9, 5, 3, 8, 10, 1], [3]),  # (x+3)=1
    ("solve_equation", [7, 2, 6, 9, 8, 10, 4], [3]),  # (2-x)=4
    ("solve_equation", [7, 4, 6, 7, 6, 9, 8, 8, 10, 0], [1]),  # (4-(-x))=0
    ("duplicate_string", [1], [1, 1]),
    ("duplicate_string", [1, 0], [1, 0, 1, 0]),
    ("missing_duplicate_string", [1], [1]),  # N = 1 is degenerate
    ("missing_duplicate_string", [0, 2], [0]),
    ("missing_duplicate_string", [1, 0, 2, 0], [1]),
    ("missing_duplicate_string", [1, 2, 1, 1], [1]),
    ("missing_duplicate_string", [2, 1, 0, 1, 3], [0]),  # odd N: trailing pad 3
    ("odds_first", [1], [1]),
    ("odds_first", [1, 0, 0], [0, 1, 0]),  # 0-based: odd positions first
    ("odds_first", [0, 0, 1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 0, 1, 0, 0]),
    ("binary_addition", [0, 0, 1, 2, 1], [1, 0, 1, 2, 0, 0]),  # 4+1
    ("binary_addition", [0, 0, 1, 2, 0, 1, 1, 0, 1], [0, 1, 0, 1, 1, 2, 0, 0, 0, 0]),  # 4+22
    ("binary_addition", [1, 1, 2, 1], [0, 0, 1, 2, 0]),  # 3+1 carries out
    ("binary_addition", [1, 2, 1], [0, 1, 2, 0]),
    ("binary_addition", [0], [0, 2]),  # N = 1 degenerate: the number itself
    ("binary_addition", [0, 0], [0, 2, 0]),
    ("binary_addition", [1, 0], [1, 2, 0]),
    ("binary_addition", [0, 1], [0, 1, 2]),
    ("binary_multiplication", [0], [2]),  # N <= 2: fixed targets
    ("binary_multiplication", [0, 1], [0, 2]),
    ("binary_multiplication", [1, 0], [0, 2]),
    ("binary_multiplication", [1, 2, 1], [1, 2, 0]),
    ("binary_multiplication", [1, 1, 2, 1, 1], [1, 0, 0, 1, 2]),  # 3*3 = 9
    ("binary_multiplication", [0, 0, 1, 2, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 0, 1, 2, 0]),  # 4*22 = 88
    ("compute_sqrt", [1], [1]),
    ("compute_sqrt", [1, 0], [1]),
    ("compute_sqrt", [1, 1, 1], [1, 0]),
    ("compute_sqrt", [0, 0, 0, 1], [0, 1]),
    ("compute_sqrt", [1, 1, 1, 1], [1, 1]),
    ("compute_sqrt", [1, 1, 0, 0, 1], [1, 0, 1]),  # isqrt(25) = 5
    ("compute_sqrt", [1, 1, 0, 0, 0], [1, 0, 0]),  # isqrt(24) = 4
    ("bucket_sort", [3], [3]),
    ("bucket_sort", [4, 0, 3, 0, 1], [0, 0, 1, 3, 4]),
]


@pytest.mark.parametrize(("name", "inputs", "expected"), HAND)
def test_hand_worked_target(name: str, inputs: list[int], expected: list[int]) -> None:
    t = task(name)
    assert t.target(inputs) == expected
    assert len(expected) == t.output_length(len(inputs)) or name == "modular_arithmetic"


def test_every_task_has_hand_worked_examples() -> None:
    assert {name for name, _, _ in HAND} == set(ORDER)


def test_odds_first_is_not_the_docstring_order() -> None:
    # The reference docstring's 1-based reading would give 0100 0111; the code (0-based) gives 0111 0100.
    assert task("odds_first").target([0, 0, 1, 1, 0, 1, 0, 1]) != [0, 1, 0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------- sampler contract


@pytest.mark.parametrize("name", ORDER)
def test_sample_shapes_ranges_and_agreement(name: str) -> None:
    t = task(name)
    rng = np.random.default_rng(123)
    for n in LENGTHS:
        batch = 64 if n <= 41 else 16
        x, y = t.sample(rng, batch, n)
        assert x.dtype == torch.long and y.dtype == torch.long
        assert tuple(x.shape) == (batch, n_in(name, n)), (name, n)
        assert tuple(y.shape) == (batch, t.output_length(n)), (name, n)
        assert 0 <= int(x.min()) and int(x.max()) < t.input_size
        assert 0 <= int(y.min()) and int(y.max()) < t.output_size
        for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
            assert t.target(xi) == yi, (name, n, xi)


@pytest.mark.parametrize("name", ORDER)
def test_determinism_and_rng_isolation(name: str) -> None:
    t = task(name)
    np.random.seed(7)
    torch.manual_seed(7)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    for n in (1, 5, 41):
        a = t.sample(np.random.default_rng(5), 32, n)
        b = t.sample(np.random.default_rng(5), 32, n)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x1, _ = t.sample(np.random.default_rng(1), 32, 41)
    x2, _ = t.sample(np.random.default_rng(2), 32, 41)
    assert not torch.equal(x1, x2)
    # only the passed Generator is used: neither numpy's nor torch's global state moved
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------- edge cases from docs/che.md


def test_modular_arithmetic_even_length_lowered() -> None:
    t = task("modular_arithmetic")
    rng = np.random.default_rng(0)
    for n, expect in [(1, 1), (2, 1), (3, 3), (4, 3), (40, 39), (41, 41)]:
        x, y = t.sample(rng, 50, n)
        assert x.shape == (50, expect)
        assert (x[:, 0::2] < 5).all() and ((x[:, 1::2] >= 5) & (x[:, 1::2] <= 7)).all()
    x, _ = t.sample(rng, 2000, 41)
    ops = x[:, 1::2]
    assert 8 not in x  # the blank is never sampled
    assert {5, 6, 7} == set(ops.unique().tolist())


def test_stack_manipulation_structure() -> None:
    t = task("stack_manipulation")
    rng = np.random.default_rng(0)
    x, y = t.sample(rng, 200, 1)
    assert (x < 2).all() and (y[:, 1] == 2).all() and torch.equal(y[:, 0], x[:, 0])
    x, _ = t.sample(rng, 500, 10)
    for row in x.tolist():
        k = next(i for i, v in enumerate(row + [9]) if v >= 2)
        assert 1 <= k <= 9 and all(v >= 2 for v in row[k:])  # stack bits first, then actions
    sizes = [next(i for i, v in enumerate(row + [9]) if v >= 2) for row in x.tolist()]
    assert set(sizes) == set(range(1, 10))  # k ~ U{1..N-1}, N=10


def test_mab_small_lengths_table() -> None:
    t = task("modular_arithmetic_brackets")
    rng = np.random.default_rng(0)
    patterns = {1: "d", 2: "-d", 3: "(d)", 4: "(-d)"}
    for n, pattern in patterns.items():
        x, y = t.sample(rng, 100, n)
        for row, (value,) in zip(x.tolist(), y.tolist(), strict=True):
            s = decode(row, MAB_CHARS)
            digit = int(s.strip("()-"))
            assert s == pattern.replace("d", str(digit))
            assert value == (-digit % 5 if "-" in pattern else digit)
        assert len(set(x.flatten().tolist()) & set(range(5))) == 5  # every digit occurs


def test_mab_uses_mult_and_never_x_or_equals() -> None:
    x, _ = task("modular_arithmetic_brackets").sample(np.random.default_rng(0), 200, 41)
    assert (x < 10).all()
    assert {5, 6, 7, 8, 9} <= set(x.unique().tolist())
    for row in x.tolist()[:50]:
        s = decode(row, MAB_CHARS)
        assert s.count("(") == s.count(")")


def test_solve_equation_structure_and_degenerate() -> None:
    t = task("solve_equation")
    rng = np.random.default_rng(0)
    for n in (1, 2):
        x, y = t.sample(rng, 20, n)
        assert x.shape == (20, n) and (x == 0).all() and (y == 0).all()
    x, y = t.sample(rng, 300, 30)
    assert (x[:, -2] == 10).all() and (x[:, -1] < 5).all()
    assert ((x == 9).sum(dim=1) == 1).all()  # exactly one x
    assert (x[:, :-2] != 10).all()
    ops = set(x[:, :-2].unique().tolist()) - set(range(5))
    assert ops == {5, 6, 7, 8, 9}  # + - ( ) x: no multiplication id in this map
    x, _ = t.sample(rng, 50, 3)  # e = gen(1) = one digit, which becomes x
    assert (x[:, 0] == 9).all() and (x[:, 1] == 10).all()


def test_solve_equation_x_position_advances_cyclically_forward() -> None:
    # N = 7: e = "(a op b)"; idx ~ U{0..4} moves forward (wrapping) to a digit, so idx in {4, 0, 1}
    # lands on a (position 1) and idx in {2, 3} on b (position 3): P(x at 1) = 3/5, not 2/5.
    x, _ = task("solve_equation").sample(np.random.default_rng(0), 3000, 7)
    at = (x == 9).int().argmax(dim=1)
    assert set(at.tolist()) == {1, 3}
    assert 0.55 < float((at == 1).float().mean()) < 0.65


def test_missing_duplicate_structure() -> None:
    t = task("missing_duplicate_string")
    rng = np.random.default_rng(0)
    x, y = t.sample(rng, 10, 1)
    assert (x == 1).all() and (y == 1).all()
    for n in (2, 7, 40, 41):
        x, y = t.sample(rng, 200, n)
        body = x[:, : 2 * (n // 2)]
        assert ((body == 2).sum(dim=1) == 1).all() and not (body == 3).any()
        if n % 2:
            assert (x[:, -1] == 3).all()
        filled = body.clone()
        filled[body == 2] = y[:, 0]
        half = n // 2
        assert torch.equal(filled[:, :half], filled[:, half:])
    positions = (t.sample(rng, 2000, 6)[0] == 2).int().argmax(dim=1)
    assert set(positions.tolist()) == set(range(6))


def test_binary_degenerate_lengths() -> None:
    add, mul = task("binary_addition"), task("binary_multiplication")
    rng = np.random.default_rng(0)
    x, y = add.sample(rng, 200, 1)
    assert (x == 0).all() and (y == torch.tensor([0, 2])).all()  # N = 1 is always [0]
    x, y = add.sample(rng, 600, 2)
    assert {tuple(r) for r in x.tolist()} == {(0, 0), (1, 0), (0, 1)}  # v ~ U{0..2}, no separator
    x, y = mul.sample(rng, 50, 1)
    assert (y == torch.tensor([2])).all()
    x, y = mul.sample(rng, 50, 2)
    assert (x < 2).all() and (y == torch.tensor([0, 2])).all()


@pytest.mark.parametrize("name", ["binary_addition", "binary_multiplication"])
def test_binary_operand_structure(name: str) -> None:
    t = task(name)
    x, _ = t.sample(np.random.default_rng(0), 400, 8)
    assert ((x == 2).sum(dim=1) == 1).all()
    len_n = (x == 2).int().argmax(dim=1)
    assert set(len_n.tolist()) == set(range(1, 7))  # l_n ~ U{1..N-2}
    for row in x.tolist():
        at = row.index(2)
        assert any(row[:at]) and any(row[at + 1 :])  # n, m >= 1


def test_compute_sqrt_lengths_and_range() -> None:
    t = task("compute_sqrt")
    assert [t.output_length(n) for n in (1, 2, 3, 4, 5, 40, 41)] == [1, 1, 2, 2, 3, 20, 21]
    x, _ = t.sample(np.random.default_rng(0), 500, 3)
    assert x.any(dim=1).all()  # x >= 1
    assert len({tuple(r) for r in x.tolist()}) == 7
    x, _ = t.sample(np.random.default_rng(0), 2000, 41)
    assert 0.4 < float(x[:, 0].float().mean()) < 0.6  # leading zeros allowed, big-endian


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("name", TERMINATOR_TASKS)
def test_terminator_mask(name: str) -> None:
    t = task(name)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 9, 41):
        _, y = t.sample(rng, 64, n)
        mask = t.accuracy_mask(y)
        assert mask.dtype == torch.bool and mask.shape == y.shape
        for row, m in zip(y.tolist(), mask.tolist(), strict=True):
            end = row.index(2)
            assert m == [i <= end for i in range(len(row))]
            assert all(v == 0 for v in row[end + 1 :])


def test_mask_hand_worked_and_default() -> None:
    y = torch.tensor([[1, 0, 1, 2, 0, 0], [2, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 2]])
    expect = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    for name in TERMINATOR_TASKS:
        assert torch.equal(task(name).accuracy_mask(y), expect)
    assert torch.equal(mask_through_terminator(torch.tensor([[0, 1, 1]])), torch.ones(1, 3, dtype=torch.bool))
    for name in set(ORDER) - set(TERMINATOR_TASKS):
        _, y = task(name).sample(np.random.default_rng(0), 4, 6)
        mask = task(name).accuracy_mask(y)
        assert mask.dtype == torch.bool and mask.shape == y.shape and mask.all()


# ---------------------------------------------------------------- distributions and chance


def test_mab_labels_skewed_to_zero() -> None:
    _, y = task("modular_arithmetic_brackets").sample(np.random.default_rng(0), 400, 100)
    freq = np.bincount(y[:, 0].numpy(), minlength=5) / 400
    assert 0.23 < freq[0] < 0.40
    assert all(0.09 < f < 0.27 for f in freq[1:])


@pytest.mark.parametrize("name", TERMINATOR_TASKS)
def test_masked_token_distribution(name: str) -> None:
    t = task(name)
    _, y = t.sample(np.random.default_rng(0), 300, 100)
    tokens = y[t.accuracy_mask(y)]
    freq = np.bincount(tokens.numpy(), minlength=3) / tokens.numel()
    assert 0.4 < freq[0] < 0.56 and 0.4 < freq[1] < 0.56 and 0.002 < freq[2] < 0.05


UNIFORM = [n for n in ORDER if n not in TERMINATOR_TASKS and n != "modular_arithmetic_brackets"]


@pytest.mark.parametrize("name", UNIFORM)
def test_constant_predictor_is_at_chance(name: str) -> None:
    t = task(name)
    rng = np.random.default_rng(0)
    batch = 2000 if t.output_length(41) == 1 else 200
    for n in (41, 100):
        _, y = t.sample(rng, batch, n)
        mask = t.accuracy_mask(y)
        for c in range(t.output_size):
            acc = float(((y == c) & mask).sum()) / float(mask.sum())
            assert abs(acc - t.chance) < 0.05, (name, n, c, acc)


# ---------------------------------------------------------------- independent checks of definitions


def test_modular_arithmetic_matches_eval() -> None:
    x, y = task("modular_arithmetic").sample(np.random.default_rng(0), 300, 15)
    for row, (value,) in zip(x.tolist(), y.tolist(), strict=True):
        assert eval(decode(row, MA_CHARS)) % 5 == value


def test_mab_matches_eval() -> None:
    t = task("modular_arithmetic_brackets")
    rng = np.random.default_rng(0)
    for n in (5, 6, 7, 12, 41, 100):
        x, y = t.sample(rng, 100, n)
        for row, (value,) in zip(x.tolist(), y.tolist(), strict=True):
            assert eval(decode(row, MAB_CHARS)) % 5 == value


def test_solve_equation_solution_is_unique_and_correct() -> None:
    x, y = task("solve_equation").sample(np.random.default_rng(0), 200, 25)
    for row, (sol,) in zip(x.tolist(), y.tolist(), strict=True):
        lhs, rhs = decode(row, SOLVE_CHARS).split("=")
        solutions = [d for d in range(5) if eval(lhs.replace("x", str(d))) % 5 == int(rhs)]
        assert solutions == [sol]


def test_compute_sqrt_matches_isqrt() -> None:
    t = task("compute_sqrt")
    for n in (1, 2, 9, 64, 65, 130):
        x, y = t.sample(np.random.default_rng(n), 50, n)
        for row, out in zip(x.tolist(), y.tolist(), strict=True):
            assert int("".join(map(str, out)), 2) == math.isqrt(int("".join(map(str, row)), 2))


@pytest.mark.parametrize("name", ["binary_addition", "binary_multiplication"])
def test_binary_arithmetic_matches_python(name: str) -> None:
    t = task(name)
    for n in (3, 10, 70, 150):
        x, y = t.sample(np.random.default_rng(n), 50, n)
        for row, out in zip(x.tolist(), y.tolist(), strict=True):
            a, b = "".join(map(str, row)).split("2")
            a_val, b_val = int(a[::-1], 2), int(b[::-1], 2)
            expect = a_val + b_val if name == "binary_addition" else a_val * b_val
            digits = "".join(map(str, out[: out.index(2)]))
            assert int(digits[::-1], 2) == expect and (digits[-1] == "1" or digits == "0")


def test_sequence_definitions() -> None:
    rng = np.random.default_rng(0)
    x, y = task("bucket_sort").sample(rng, 50, 60)
    assert (y[:, 1:] >= y[:, :-1]).all()
    assert torch.equal(torch.sort(x, dim=1).values, y)
    x, y = task("duplicate_string").sample(rng, 50, 33)
    assert torch.equal(y, torch.cat([x, x], dim=1))
    x, y = task("reverse_string").sample(rng, 50, 33)
    assert torch.equal(y, x.flip(1))
    x, y = task("odds_first").sample(rng, 50, 33)
    assert torch.equal(y[:, :16], x[:, 1::2]) and torch.equal(y[:, 16:], x[:, 0::2])


def test_regular_classes_from_counts() -> None:
    rng = np.random.default_rng(0)
    x, y = task("parity_check").sample(rng, 100, 41)
    assert torch.equal(y[:, 0], x.sum(1) % 2)
    x, y = task("cycle_navigation").sample(rng, 100, 41)
    assert torch.equal(y[:, 0], (x.sum(1) - 41) % 5)
    x, y = task("even_pairs").sample(rng, 100, 41)
    assert torch.equal(y[:, 0], (x[:, 1:] != x[:, :-1]).sum(1) % 2)
