"""The training fast paths equal the plain forms they replace (issue 9: correctness only, no timing)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from lenbench.model.dropout import Dropout, dropout, keep_mask
from lenbench.model.transformer import ModelConfig, Transformer
from lenbench.pe.registry import parse_pe_spec


def test_keep_mask_has_the_keep_probability_and_reproduces_under_the_seed() -> None:
    torch.manual_seed(3)
    mask = keep_mask(torch.Size([1000, 1000]), 0.9, torch.device("cpu"))
    sigma = math.sqrt(0.9 * 0.1 / mask.numel())
    assert abs(mask.float().mean().item() - 0.9) < 5 * sigma
    torch.manual_seed(3)
    assert torch.equal(mask, keep_mask(torch.Size([1000, 1000]), 0.9, torch.device("cpu")))
    # Neighbouring elements come from the two halves of one 64-bit draw: they must be uncorrelated.
    flat = mask.flatten().float()
    even, odd = flat[0::2], flat[1::2]
    corr = torch.corrcoef(torch.stack([even, odd]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(even.numel())


@pytest.mark.parametrize("keep", [0.5, 0.25, 1 - 1e-12])
def test_keep_mask_other_probabilities(keep: float) -> None:
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400_001]), keep, torch.device("cpu"))  # odd count: half a draw unused
    assert mask.shape == (400_001,)
    sigma = math.sqrt(keep * (1 - keep) / mask.numel()) or 1e-9
    assert abs(mask.float().mean().item() - keep) < max(5 * sigma, 1e-6)


def test_dropout_values_and_gradient_are_inverted_dropout() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 33, 16, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)
    assert torch.equal(dropout(x, 0.1, training=False), x)
    assert torch.equal(Dropout(0.1).eval()(x), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    assert torch.count_nonzero(dropout(x, 1.0, training=True)) == 0


def test_dropout_matches_torch_dropout_in_distribution() -> None:
    """Mean and second moment of dropout(ones) agree with F.dropout's within sampling error."""
    torch.manual_seed(2)
    ones = torch.ones(2_000_000)
    ours, theirs = dropout(ones, 0.3, True), F.dropout(ones, 0.3, True)
    for a, b in ((ours.mean(), theirs.mean()), ((ours**2).mean(), (theirs**2).mean())):
        assert abs(a.item() - b.item()) < 0.01


PES = ["nope", "sinusoidal", "alibi", "kerple", "t5", "fire", "rope", "dape", "dape-v2-kerple", "cope",
       "transformer-xl", "randomized-learned"]


@pytest.mark.parametrize("pe", PES)
def test_reading_the_last_positions_equals_slicing_the_full_forward(pe: str) -> None:
    """Transformer(ids, last=k) == Transformer(ids)[:, -k:], outputs and parameter gradients."""
    cfg = ModelConfig(vocab_size=6, out_size=3, dim=32, layers=2, heads=4, dropout=0.0, train_length=12,
                      max_length=48)
    torch.manual_seed(0)
    model = Transformer(cfg, parse_pe_spec(pe))
    ids = torch.randint(0, 6, (3, 19))
    for last in (1, 7, 19):
        grads = []
        outs = []
        for kwargs in ({}, {"last": last}):
            model.zero_grad()
            torch.manual_seed(5)  # randomized PEs draw the same positions in both forwards
            out = model(ids, **kwargs)
            out = out[:, -last:] if not kwargs else out
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            outs.append(out.detach())
            grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
        assert outs[1].shape == (3, last, 3)
        assert torch.allclose(outs[0], outs[1], atol=1e-5), pe
        for g0, g1 in zip(*grads, strict=True):
            assert torch.allclose(g0, g1, atol=1e-5), pe


def test_reading_the_last_positions_is_for_the_encoder_only() -> None:
    cfg = ModelConfig(vocab_size=6, out_size=3, dim=16, layers=1, heads=2, dropout=0.0, causal=True)
    model = Transformer(cfg, parse_pe_spec("alibi"))
    with pytest.raises(ValueError, match="encoder"):
        model(torch.zeros(1, 5, dtype=torch.long), last=2)
    with pytest.raises(ValueError, match="last 6 of 5"):
        model(torch.zeros(1, 5, dtype=torch.long), last=6)


NO_CXX = shutil.which("g++") is None and shutil.which("c++") is None


@pytest.mark.skipif(NO_CXX, reason="Inductor on CPU needs a C++ compiler")
def test_compiled_training_matches_eager_and_times_its_compilation() -> None:
    """--compile: the same losses as eager training (float tolerance), compile seconds counted apart."""
    import numpy as np

    from lenbench.model.transformer import cross_entropy
    from lenbench.train import CompileClock, OptimConfig, train

    cfg = ModelConfig(vocab_size=4, out_size=2, dim=16, layers=1, heads=2, dropout=0.0)

    def step_fn(model: torch.nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = int(rng.integers(3, 9))
        ids = torch.as_tensor(rng.integers(0, 4, size=(4, n)))
        logits = model(ids, last=1)
        return cross_entropy(logits, ids[:, :1] % 2), {"length": n}

    losses: dict[bool, list[float]] = {}
    clock = CompileClock()
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Transformer(cfg, parse_pe_spec("alibi"))
        losses[compiled] = seen = []

        def record(step: int, metrics: dict[str, float], seen: list[float] = seen) -> None:
            seen.append(metrics["loss"])

        train(model, step_fn, OptimConfig(steps=4, lr=1e-2), seed=0, on_step=record,
              compile_clock=clock if compiled else None)
    assert np.allclose(losses[False], losses[True], atol=1e-4), losses
    assert clock.seconds > 0
