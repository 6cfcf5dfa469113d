"""CHE suite end to end: it learns, finished cells are skipped, an interrupted cell resumes exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import StopAt

from lenbench.config import load_suite
from lenbench.execute.inprocess import run_in_process
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, get_suite
from lenbench.suites.base import RunContext
from lenbench.suites.che import config as che_config
from lenbench.suites.che import run as che
from lenbench.tasks.che import TASKS

TINY = {
    "model": {"layers": 2, "dim": 32, "heads": 4, "dropout": 0.0},
    "train": {"steps": 24, "batch_size": 16, "lr": 1e-3, "max_length": 8, "checkpoint_every": 8, "log_every": 4},
    "eval": {"lengths": [9, 12], "samples": 32, "batch_size": 16},
}


def cells(task: str, pe: str, seeds: str = "0", **profile: Any) -> list:
    suite = load_suite("che")
    overrides = {"grid": {"tasks": task, "pes": pe, "seeds": seeds}, "profile": {**TINY, **profile}}
    return get_suite("che").expand(suite, "quick", overrides)


def run(cell_list: list, root: Path, reporter: Any = None) -> list:
    return run_in_process(cell_list, ResultStore(root), get_suite("che"), reporter or SilentReporter())


def test_tiny_model_learns_even_pairs(tmp_path: Path) -> None:
    # Measured over seeds 0-2: 0.994, 1.0, 1.0 final train accuracy (about 1.5 s each on 2 CPU cores).
    profile = {
        "model": {"layers": 2, "dim": 64, "heads": 4, "dropout": 0.0},
        "train": {"steps": 500, "batch_size": 64, "lr": 1e-3, "max_length": 8, "checkpoint_every": 0, "log_every": 10},
    }
    (outcome,) = run(cells("even_pairs", "sinusoidal", **profile), tmp_path)
    log = [json.loads(x) for x in outcome.cell_dir.log_path.read_text().splitlines()]
    final_acc = sum(r["acc"] for r in log[-5:]) / 5
    assert final_acc > 0.9, log[-5:]


def test_cells_records_and_skip(tmp_path: Path) -> None:
    grid = cells("parity_check,reverse_string", "alibi,dape", seeds="0,1")
    assert len(grid) == 8 and len({c.label for c in grid}) == 8
    first = run(grid[:2], tmp_path)
    assert [o.status for o in first] == ["done", "done"]
    records = json.loads(first[0].cell_dir.metrics_path.read_text())
    accs = [r for r in records if r["metric"] == "accuracy"]
    assert [r["eval_len"] for r in accs] == [9, 12]
    score = next(r for r in records if r["metric"] == "score")["value"]
    assert score == pytest.approx(sum(r["value"] for r in accs) / 2)
    assert {"config.yaml", "manifest.json", "metrics.json", "train_log.jsonl", "DONE"} <= {
        p.name for p in first[0].cell_dir.path.iterdir()
    }
    reporter = SilentReporter()
    again = run(grid[:2], tmp_path, reporter)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert any("already done" in m for m in reporter.messages)
    # a changed config is a new cell, not a reuse of the old one
    changed = cells("parity_check", "alibi", train={**TINY["train"], "steps": 12})
    assert run(changed, tmp_path)[0].cell_dir.path != first[0].cell_dir.path


@pytest.mark.parametrize("pe", ["dape", "sinusoidal"])
def test_resume_matches_uninterrupted_run(tmp_path: Path, pe: str) -> None:
    (cell,) = cells("reverse_string", pe)
    (straight,) = run([cell], tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run([cell], tmp_path / "b", StopAt(13))  # killed after step 13; checkpoint at step 8
    partial = ResultStore(tmp_path / "b").cell("che", cell.label, cell.config)
    assert partial.status() == "partial"
    (resumed,) = run([cell], tmp_path / "b")
    assert resumed.summary["resumed_from"] == 8
    assert resumed.cell_dir.metrics_path.read_text() == straight.cell_dir.metrics_path.read_text()
    assert resumed.cell_dir.log_path.read_text() == straight.cell_dir.log_path.read_text()


# ---------------------------------------------------------------- the encoder of docs/che.md §2.3

ENCODER = {"layers": 5, "dim": 64, "heads": 8, "dropout": 0.1}  # the reference TransformerConfig


def encoder(task: str = "even_pairs", pe: str = "nope", **model: Any) -> Any:
    cfg = che_config.CheCellConfig(task, pe, {}, 0, che_config.CheModel(**{**ENCODER, **model}),
                                   che_config.CheTrain(max_length=40), che_config.CheEval(lengths=[41]))
    return che.build_model(cfg, TASKS.get(task)())


def block_inputs(model: Any, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The input of every block, and the logits, of one forward pass."""
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())) for b in model.blocks]
    try:
        logits = model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def test_encoder_parameter_count_matches_the_reference() -> None:
    # docs/che.md §2.3 [RUN]: 248,962 parameters for even_pairs with PE=NONE (E=64, 5 layers, 8 heads).
    assert encoder().num_parameters() == 248_962


def test_encoder_forward_is_post_ln_relu_with_scaled_embedding() -> None:
    torch.manual_seed(0)
    model = encoder().eval()
    block = model.blocks[0]
    assert isinstance(block.act, torch.nn.ReLU)
    assert (block.ff_in.in_features, block.ff_in.out_features) == (64, 256) and block.ff_in.bias is not None
    assert block.attn.qkv.bias is None and block.attn.out.bias is None  # q, k, v, out without bias
    assert block.norm1.eps == 1e-5 and isinstance(model.final_norm, torch.nn.Identity)  # no final LN
    ids = torch.randint(0, 3, (4, 12))
    inputs, logits = block_inputs(model, ids)
    assert torch.allclose(inputs[0], model.embed.weight[ids] * 8.0)  # one-hot embedding x sqrt(E)
    with torch.no_grad():
        h = inputs[0]
        a = block.norm1(h + block.attn(h))  # a = LN(h + MHA(h))
        expect = block.norm2(a + block.ff_out(torch.relu(block.ff_in(a))))  # h = LN(a + FFN(a))
        assert torch.allclose(inputs[1], expect, atol=1e-5)
        last = model.blocks[-1](inputs[-1])
        assert torch.allclose(logits, model.head(last), atol=1e-5)  # per-position head, no final LN
    assert logits.shape == (4, 12, 2)
    for out in inputs[1:]:  # post-LN: every block's output is layer-normalised
        assert torch.allclose(out.mean(-1), torch.zeros(4, 12), atol=1e-4)
        assert torch.allclose(out.var(-1, unbiased=False), torch.ones(4, 12), atol=1e-3)


def test_encoder_is_bidirectional() -> None:
    torch.manual_seed(0)
    model = encoder().eval()
    ids = torch.randint(0, 2, (1, 10))
    changed = ids.clone()
    changed[0, -1] = 1 - changed[0, -1]
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])  # position 0 sees the last key


def test_encoder_haiku_initialisation() -> None:
    torch.manual_seed(0)
    model = encoder(task="bucket_sort", dim=128)
    emb = model.embed.weight.detach()
    assert float(emb.abs().max()) <= 0.04 and 0.015 < float(emb.std()) < 0.02  # TruncNormal(0.02), +-2 sigma
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 * 4 + 1
    for lin in linears:
        sigma = 1 / math.sqrt(lin.in_features)
        w = lin.weight.detach()
        assert float(w.abs().max()) <= 2 * sigma + 1e-7  # truncated at 2 sigma
        if w.numel() > 1000:
            assert 0.84 * sigma < float(w.std()) < 0.92 * sigma  # std of N(0, sigma) cut at 2 sigma: 0.88 sigma
        assert lin.bias is None or not lin.bias.any()


@pytest.mark.parametrize(("pe", "dropped"), [("nope", False), ("alibi", False), ("rope", False), ("sinusoidal", True)])
def test_embedding_dropout_only_with_additive_pes(pe: str, dropped: bool) -> None:
    torch.manual_seed(0)
    model = encoder(pe=pe, dropout=0.5).train()
    ids = torch.randint(0, 3, (8, 20))
    inputs, _ = block_inputs(model, ids)
    zeros = float((inputs[0] == 0).float().mean())
    assert (zeros > 0.3) == dropped, zeros  # p = 0.5 zeroes about half the entries


def test_batches_and_model_follow_the_compute_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # "meta" stands in for CUDA: every tensor the cell makes must land on compute_device().
    task = TASKS.get("binary_addition")()
    inputs = torch.zeros(2, 5, dtype=torch.long, device="meta")
    assert che.pack(task, inputs, 6).device.type == "meta"
    seen: dict[str, Any] = {}

    def fake_train(model: Any, step_fn: Any, *args: Any, **kwargs: Any) -> int:
        seen["model"] = next(model.parameters()).device.type
        loss, _ = step_fn(model, np.random.default_rng(0), 0)
        seen["loss"] = loss.device.type
        raise KeyboardInterrupt

    monkeypatch.setattr(che, "compute_device", lambda: torch.device("meta"))
    monkeypatch.setattr(che, "train", fake_train)
    monkeypatch.setattr(che, "masked_accuracy", lambda *a: 0.0)
    (cell,) = cells("binary_addition", "alibi")
    cell_dir = ResultStore(tmp_path).cell("che", cell.label, cell.config)
    cell_dir.path.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        che.run_cell(cell, cell_dir, RunContext(SilentReporter()))
    assert seen == {"model": "meta", "loss": "meta"}
