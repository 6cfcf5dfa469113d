"""PE formulas against hand-computed values (docs/pe.md §3, §5, §11, §12, §17; docs/dape.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from lenbench.errors import LenbenchError
from lenbench.pe import PEContext, parse_pe_list, parse_pe_spec, pe_class, validate_spec
from lenbench.pe.absolute import sinusoid_table
from lenbench.pe.bias import ALiBi, KerpleLog, alibi_slopes
from lenbench.pe.dape import DAPEKerple
from lenbench.pe.rotary import RoPE


def ctx(heads: int = 4, dim: int = 32, causal: bool = True) -> PEContext:
    return PEContext(dim=dim, heads=heads, causal=causal, train_length=16, max_length=64)


@pytest.mark.parametrize(
    "heads, log2",
    [
        (8, [-1, -2, -3, -4, -5, -6, -7, -8]),
        (12, [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]),
        (4, [-2, -4, -6, -8]),
        (6, [-2, -4, -6, -8, -1, -3]),
    ],
)
def test_alibi_slopes(heads: int, log2: list[float]) -> None:
    assert torch.allclose(alibi_slopes(heads), torch.tensor([2.0**x for x in log2]))


def test_alibi_causal_and_bidirectional_values() -> None:
    pos = torch.arange(3)
    causal = ALiBi(ctx(4, causal=True)).bias(pos, pos)
    # head 0 slope 1/4 (4 heads): B(2,0) = -0.25 * 2
    assert causal[0, 2, 0].item() == pytest.approx(-0.5)
    assert causal[0, 1, 1].item() == 0.0
    enc = ALiBi(ctx(4, causal=False)).bias(pos, pos)
    m = 0.25
    # bidirectional: m * (-|i-j| + 0.5 [j < i])
    assert enc[0, 2, 0].item() == pytest.approx(m * (-2 + 0.5))
    assert enc[0, 0, 2].item() == pytest.approx(m * -2)
    assert enc[0, 1, 0].item() != enc[0, 0, 1].item()  # left and right differ


def test_kerple_values_and_clamp() -> None:
    pe = KerpleLog(ctx(2, causal=True))
    with torch.no_grad():
        pe.r1.copy_(torch.tensor([[1.5, -3.0]]))
        pe.r2.copy_(torch.tensor([[0.5, 0.001]]))
    pos = torch.arange(4)
    b = pe.bias(pos, pos)
    # clamp in place to >= 0.01 before the forward (KER)
    assert pe.r1[0, 1].item() == pytest.approx(0.01)
    assert pe.r2[0, 1].item() == pytest.approx(0.01)
    assert b[0, 3, 0].item() == pytest.approx(-1.5 * math.log(1 + 0.5 * 3))
    assert b[1, 2, 1].item() == pytest.approx(-0.01 * math.log(1 + 0.01 * 1))
    assert b[0, 2, 2].item() == 0.0


def test_kerple_bidirectional_uses_separate_future_parameters() -> None:
    pe = KerpleLog(ctx(1, dim=8, causal=False))
    with torch.no_grad():
        pe.r1.copy_(torch.tensor([[1.0], [2.0]]))
        pe.r2.copy_(torch.tensor([[1.0], [0.5]]))
    pos = torch.arange(3)
    b = pe.bias(pos, pos)
    assert b[0, 2, 0].item() == pytest.approx(-1.0 * math.log(1 + 2))  # past: r1=1, r2=1
    assert b[0, 0, 2].item() == pytest.approx(-2.0 * math.log(1 + 0.5 * 2))  # future: r1=2, r2=.5


def test_sinusoid_values() -> None:
    table = sinusoid_table(torch.tensor([0, 1, 3]), 4)
    # w = [1, 1e4^(-2/4)=0.01]; layout [sin w0, sin w1, cos w0, cos w1]
    expected = torch.tensor(
        [
            [0, 0, 1, 1],
            [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
            [math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03)],
        ]
    )
    assert torch.allclose(table, expected, atol=1e-6)


def test_rope_preserves_norm_and_is_relative() -> None:
    pe = RoPE(ctx(2, dim=16))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)

    def dot(m: int, n: int) -> torch.Tensor:
        qr, _ = pe.rotate(q, q, torch.tensor([m]), torch.tensor([m]))
        _, kr = pe.rotate(k, k, torch.tensor([n]), torch.tensor([n]))
        assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
        return (qr * kr).sum(-1)

    assert torch.allclose(dot(7, 3), dot(107, 103), atol=1e-4)
    assert not torch.allclose(dot(7, 3), dot(7, 5), atol=1e-3)
    # position 0 is the identity rotation
    qr, _ = pe.rotate(q, q, torch.tensor([0]), torch.tensor([0]))
    assert torch.allclose(qr, q)


def test_rope_hand_rotation() -> None:
    pe = RoPE(PEContext(dim=2, heads=1, causal=True, train_length=4, max_length=8))
    x = torch.tensor([[[[1.0, 0.0]]]])
    out, _ = pe.rotate(x, x, torch.tensor([2]), torch.tensor([2]))
    # d=2: theta_0 = 1, angle 2: (x0 cos - x1 sin, x1 cos + x0 sin)
    assert torch.allclose(out[0, 0, 0], torch.tensor([math.cos(2), math.sin(2)]), atol=1e-6)


def test_dape_concat_residual_by_hand() -> None:
    torch.manual_seed(0)
    pe = DAPEKerple(ctx(2, dim=8), hidden=3)
    s = torch.randn(1, 2, 3, 3)
    pos = torch.arange(3)
    out = pe.scores(s, s, s, pos, pos)
    b = pe.base.bias(pos, pos)
    w1, b1, w2, b2 = pe.fc1.weight, pe.fc1.bias, pe.fc2.weight, pe.fc2.bias
    expected = torch.empty_like(s)
    for i in range(3):
        for j in range(3):
            z = torch.cat([s[0, :, i, j], b[:, i, j]])  # [S heads..., B heads...]
            hidden = torch.nn.functional.leaky_relu(w1 @ z + b1, 0.01)
            f = w2 @ hidden + b2
            expected[0, :, i, j] = s[0, :, i, j] + b[:, i, j] + f
    assert torch.allclose(out, expected, atol=1e-5)


def test_dape_variants_differ_as_specified() -> None:
    torch.manual_seed(1)
    s = torch.randn(2, 2, 4, 4)
    pos = torch.arange(4)
    res = DAPEKerple(ctx(2, dim=8), variant="concat_residual", hidden=4)
    plain = DAPEKerple(ctx(2, dim=8), variant="concat", hidden=4)
    plain.load_state_dict(res.state_dict())
    b = res.base.bias(pos, pos)
    # concat = concat_residual - B for the same weights
    assert torch.allclose(res.scores(s, s, s, pos, pos) - b, plain.scores(s, s, s, pos, pos), atol=1e-6)
    add = DAPEKerple(ctx(2, dim=8), variant="add_residual", hidden=4)
    assert add.fc1.in_features == 2 and res.fc1.in_features == 4
    with pytest.raises(LenbenchError):
        DAPEKerple(ctx(2, dim=8), variant="nonsense")


def test_spec_parsing_and_validation() -> None:
    specs = parse_pe_list("dape-kerple:variant=concat,hidden=64,alibi")
    assert [s.name for s in specs] == ["dape-kerple", "alibi"]
    assert specs[0].options == {"variant": "concat", "hidden": 64}
    assert pe_class(parse_pe_spec("dape")) is not None
    with pytest.raises(LenbenchError, match="did you mean 'alibi'"):
        pe_class(parse_pe_spec("alibii"))
    with pytest.raises(LenbenchError, match="unknown option"):
        validate_spec(parse_pe_spec("alibi:hidden=3"))
    validate_spec(parse_pe_spec("dape:hidden=3,variant=concat"))


def test_a_pe_class_names_its_baseline() -> None:
    """DAPE-X's class names X (docs/dape.md); the report pairs PEs through it, not through their names."""
    from lenbench.pe import PES
    from lenbench.pe.registry import pe_baseline

    for name, cls in PES.items():
        if name.startswith("dape"):
            expected = "kerple" if name == "dape" else name.rsplit("-", 1)[-1]  # dape is dape-kerple
            assert cls.baseline == expected and expected in PES, name
        else:
            assert cls.baseline is None, name
    assert pe_baseline("dape") == pe_baseline("dape-kerple:hidden=64") == "kerple"
    assert pe_baseline("dape-v2-fire:kernel=3") == "fire" and pe_baseline("dape-alibi") == "alibi"
    assert pe_baseline("alibi") is None and pe_baseline("log-bias:scale=2") is None
    assert pe_baseline("my_pe.py:Bias") is None
