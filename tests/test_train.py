"""The training loop's gradient accumulation and the global-batch split over torchrun ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lenbench.errors import LenbenchError
from lenbench.model.transformer import Transformer, cross_entropy
from lenbench.pe.registry import parse_pe_spec
from lenbench.suites.ppl import run as ppl
from lenbench.suites.ppl.config import PplShape
from lenbench.train import OptimConfig, train
from lenbench.train.parallel import BatchSplit, split_batch


def decoder() -> Transformer:
    shape = PplShape("tiny", layers=2, dim=32, heads=4, dropout=0.0)
    torch.manual_seed(0)
    # float64: Adam's first update is about lr x sign(g), so a float32 rounding difference in a
    # gradient near zero would move a parameter visibly; in float64 sums in any order agree
    return Transformer(ppl.model_config(shape, 16, [16], 50), parse_pe_spec("kerple")).double()


Step = tuple[dict[str, torch.Tensor], list[float], np.ndarray]


def one_step(micro: int, accumulation: int, grad_clip: float) -> Step:
    """One AdamW step of the ppl loss on ``micro x accumulation`` windows -> (parameters, logged
    losses, the windows drawn)."""
    model = decoder()
    stream = np.random.default_rng(1).integers(0, 50, size=4000)
    seen: list[np.ndarray] = []

    def step_fn(net: nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = ppl.sample_windows(stream, rng, micro, 16)
        seen.append(batch.numpy())
        return cross_entropy(net(batch[:, :-1]), batch[:, 1:]), {"rows": float(len(batch))}

    losses: list[float] = []
    optim = OptimConfig(steps=1, lr=1e-2, grad_clip=grad_clip, weight_decay=0.1, beta2=0.95, schedule="cosine")
    train(model, step_fn, optim, seed=7, on_step=lambda s, m: losses.append(m["loss"]), accumulation=accumulation)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, np.concatenate(seen)


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])  # 1e-3: clipping acts, on the summed gradient
def test_accumulation_gives_the_update_of_one_big_batch(grad_clip: float) -> None:
    big, big_loss, big_windows = one_step(8, 1, grad_clip)
    accumulated, acc_loss, acc_windows = one_step(2, 4, grad_clip)
    assert big_windows.shape == (8, 17) and np.array_equal(acc_windows, big_windows)  # the same 8 windows
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)  # the logged loss is the mean over micro-batches
    start = decoder().state_dict()
    moved = 0
    for key, value in big.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-9, atol=1e-12)
        moved += int(not torch.equal(value, start[key]))
    assert moved > 10  # the step changed the parameters, so equality is not trivial
    # a step on the first micro-batch alone lands elsewhere: the comparison above can fail
    first, _, _ = one_step(2, 1, grad_clip)
    assert any(not torch.allclose(first[k], big[k], rtol=1e-5, atol=1e-6) for k in big)


def test_accumulated_metrics_are_means_and_bad_counts_are_refused() -> None:
    model = nn.Linear(2, 1)
    calls = iter([1.0, 3.0, 5.0, 7.0])

    def step_fn(net: nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        value = next(calls)
        return net(torch.ones(1, 2)).sum() * 0 + value, {"x": 10 * value}

    seen: list[dict[str, float]] = []
    train(model, step_fn, OptimConfig(steps=1), seed=0, on_step=lambda s, m: seen.append(m), accumulation=4)
    assert seen[0]["loss"] == pytest.approx(4.0) and seen[0]["x"] == pytest.approx(40.0)
    with pytest.raises(LenbenchError, match="accumulation must be >= 1"):
        train(model, step_fn, OptimConfig(steps=1), seed=0, accumulation=0)


def test_global_batch_split_over_ranks_and_micro_batches() -> None:
    assert split_batch(256, 32, 1) == BatchSplit(per_rank=256, micro=32, accumulation=8)  # one GPU
    assert split_batch(256, 32, 8) == BatchSplit(32, 32, 1)  # DAPE's 8 GPUs: no accumulation
    assert split_batch(256, 32, 2) == BatchSplit(128, 32, 4)
    assert split_batch(256, 64, 8) == BatchSplit(32, 32, 1)  # a micro batch above the rank's share shrinks
    assert split_batch(256, None, 4) == BatchSplit(64, 64, 1)  # no micro batch: the rank's whole share
    assert split_batch(32, None, 1) == BatchSplit(32, 32, 1)  # the quick profile, as before
    for batch, micro, world, message in [
        (256, 32, 3, "not divisible by 3 ranks"),
        (256, 48, 1, "micro batch size 48 does not divide the 256 sequences per rank"),
        (256, 0, 1, "micro batch size must be >= 1"),
        (0, None, 1, "batch size must be >= 1"),
    ]:
        with pytest.raises(LenbenchError, match=message):
            split_batch(batch, micro, world)
