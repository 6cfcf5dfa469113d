"""The ppl suite: perplexity arithmetic, evaluation windows, grid expansion, a short real run, 8x lengths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import StopAt
from torch import nn

from lenbench.cli import main
from lenbench.config import load_suite
from lenbench.data.corpora import TokenSplit
from lenbench.errors import LenbenchError
from lenbench.execute.inprocess import run_in_process
from lenbench.model.transformer import Transformer
from lenbench.pe import PES
from lenbench.pe.registry import parse_pe_spec
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, get_suite
from lenbench.suites.ppl import run as ppl
from lenbench.suites.ppl.config import PplShape
from lenbench.suites.ppl.protocols import EvalPlan, document_windows, fixed_window_length


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lenbench-cache"))


class Uniform(nn.Module):
    """Zero logits: every token has probability 1/V, so perplexity is V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


class RightOnTheEnd(nn.Module):
    """Knows the rule ``next = (token + 1) % V`` but uses it only on the last ``k`` positions."""

    def __init__(self, vocab: int, k: int) -> None:
        super().__init__()
        self.vocab, self.k = vocab, k

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, self.vocab)
        sure = torch.nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float() * 100.0
        logits[:, -self.k :] = sure[:, -self.k :]
        return logits


def counting_windows(n: int, length: int, vocab: int) -> np.ndarray:
    return (np.arange(n)[:, None] + np.arange(length + 1)[None, :]) % vocab


def test_uniform_logits_give_vocab_size() -> None:
    last, full = ppl.perplexity(Uniform(257), counting_windows(5, 300, 257), batch_size=2)
    assert last == pytest.approx(257, rel=1e-6) and full == pytest.approx(257, rel=1e-6)


@pytest.mark.parametrize("length", [64, 600])
def test_last_tokens_slice_aligns_logits_and_labels(length: int) -> None:
    vocab, k = 50, min(256, length)
    windows = counting_windows(3, length, vocab)
    last, full = ppl.perplexity(RightOnTheEnd(vocab, k), windows, batch_size=2, last_tokens=256)
    assert last == pytest.approx(1.0, abs=1e-6)  # right on exactly the scored positions
    assert full == pytest.approx(math.exp((length - k) / length * math.log(vocab)), rel=1e-5)
    # one position short of the window: the first scored token is uniform, so ppl_last rises
    shifted, _ = ppl.perplexity(RightOnTheEnd(vocab, k - 1), windows, batch_size=3, last_tokens=256)
    assert shifted == pytest.approx(math.exp(math.log(vocab) / k), rel=1e-5)


def split_of(lengths: list[int], sep: int = 9) -> TokenSplit:
    parts, offsets = [], [0]
    for i, n in enumerate(lengths):
        parts.append(np.full(n, i % 9, dtype=np.int64))
        parts.append(np.array([sep]))
        offsets.append(offsets[-1] + n + 1)
    return TokenSplit(np.concatenate(parts), np.array(offsets))


def test_eval_windows_long_documents_then_concatenation() -> None:
    split = split_of([40, 10, 33, 50, 5, 41] + [20] * 6)
    windows, concatenated, long_docs = document_windows(split, 32, samples=10, min_sequences=3)
    assert not concatenated and long_docs == 4 and windows.shape == (4, 33)
    assert sorted(int(w[0]) for w in windows) == [0, 2, 3, 5]  # each window starts at its document's start
    windows, concatenated, long_docs = document_windows(split, 32, samples=2, min_sequences=3)
    assert not concatenated and windows.shape == (2, 33)  # samples caps, and below samples no concatenation
    windows, concatenated, long_docs = document_windows(split, 45, samples=10, min_sequences=3)
    assert concatenated and long_docs == 1 and windows.shape == (len(split.tokens) // 46, 46)
    assert np.array_equal(windows.reshape(-1), split.tokens[: windows.size])
    with pytest.raises(LenbenchError, match="fewer than one sequence"):
        document_windows(split, 10_000, samples=4, min_sequences=2)
    said = ppl.describe_documents(
        {32: {"n_sequences": 4, "concatenated": False, "long_documents": 4},
         45: {"n_sequences": len(windows), "concatenated": True, "long_documents": 1}},
        256,
    )  # fmt: skip
    assert said.endswith(
        f"32: 4 of the 4 documents of >= 33 tokens; 45: {len(windows)} windows of the joined documents "
        "(only 1 of >= 46 tokens)"
    )


def stream_split(n: int) -> TokenSplit:
    """A validation split whose token ids are their stream positions (ids name where they came from)."""
    return TokenSplit(np.arange(n, dtype=np.int64), np.array([0, n]))


class KnowsTargets(nn.Module):
    """Knows ``next = token + 1`` only where the next token is one of ``targets``; uniform elsewhere."""

    def __init__(self, vocab: int, targets: np.ndarray) -> None:
        super().__init__()
        self.vocab = vocab
        self.known = torch.zeros(vocab, dtype=torch.bool)
        self.known[torch.from_numpy(targets)] = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        nxt = (ids + 1) % self.vocab
        sure = torch.nn.functional.one_hot(nxt, self.vocab).float() * 100.0
        return torch.where(self.known[nxt][..., None], sure, torch.zeros_like(sure))


def test_fixed_targets_score_identical_token_ids_at_every_length() -> None:
    lengths = [32, 64, 100, 256, 512]
    assert fixed_window_length(lengths, 256) == 513  # 100 needs 3 x 100 = 300 tokens of room, 512 more
    split = stream_split(513 * 10 + 7)
    plan = EvalPlan(split, "fixed_targets", lengths, samples=3, min_sequences=1, last_tokens=256)
    starts = [int(w[0]) for w in plan.fixed]
    assert len(starts) == 3 and all(s % 513 == 0 for s in starts)  # 3 of the 10 non-overlapping blocks
    expected = np.concatenate([np.arange(s + 513 - 256, s + 513) for s in starts])  # the last 256 of each
    for length in lengths:
        rows = plan.at(length)
        assert rows.windows.shape[1] == length + 1
        assert np.array_equal(rows.targets(), expected), length  # the same ids, in the same order
        assert all(np.array_equal(r, np.arange(r[0], r[0] + length + 1)) for r in rows.windows)  # contiguous
        assert rows.scored.sum() == 3 * 256 and rows.scored.max() <= length
        # below the span, consecutive rows of L tokens cover it: 100 -> 56 + 100 + 100 per window
        assert list(rows.scored[: len(rows.scored) // 3]) == {32: [32] * 8, 64: [64] * 4, 100: [56, 100, 100],
                                                              256: [256], 512: [256]}[length]
        # and perplexity scores exactly those positions: right on the targets, uniform elsewhere
        last, full = ppl.perplexity(KnowsTargets(split.tokens.size + 1, expected), rows.windows, 4,
                                    scored=rows.scored)
        assert last == pytest.approx(1.0, abs=1e-6)
        assert full > 1.5 if length > 256 or length == 100 else full == pytest.approx(1.0, abs=1e-6)
    assert EvalPlan(split, "fixed_targets", lengths, 3, 1, 256).fixed.tolist() == plan.fixed.tolist()  # fixed
    short = EvalPlan(split, "fixed_targets", [16, 48], samples=2, min_sequences=1, last_tokens=256)
    assert short.span == 48 and all(len(short.at(n).targets()) == 2 * 48 for n in (16, 48))  # S = max L < 256
    with pytest.raises(LenbenchError, match=r"fewer than one sequence of 513 \(a fixed_targets window\)"):
        EvalPlan(stream_split(500), "fixed_targets", lengths, 3, 1, 256)


def test_dape_protocol_scores_random_packed_windows_per_length() -> None:
    split = stream_split(5000)
    plan = EvalPlan(split, "dape", [128, 512], samples=6, min_sequences=1, last_tokens=256)
    assert plan.fixed is None
    targets = {}
    for length in (128, 512):
        rows = plan.at(length)
        width = length + 1
        starts = rows.windows[:, 0]
        assert len(rows.windows) == min(6, 5000 // width) and rows.concatenated
        assert all(s % width == 0 for s in starts) and list(starts) == sorted(set(starts))  # distinct blocks
        assert all(np.array_equal(r, np.arange(r[0], r[0] + width)) for r in rows.windows)  # stream windows
        assert set(rows.scored) == {min(256, length)}  # the last min(256, L) of each window
        assert np.array_equal(rows.targets(), np.concatenate([r[-min(256, length):] for r in rows.windows]))
        assert np.array_equal(plan.at(length).windows, rows.windows)  # seeded: the same at every call
        targets[length] = set(rows.targets().tolist())
    assert targets[128] != targets[512]  # different tokens at each length, unlike fixed_targets
    choices = {tuple(EvalPlan(split, "dape", [n], 6, 1, 256).at(n).windows[:, 0] // (n + 1)) for n in (100, 101)}
    assert len(choices) == 2  # the random choice of blocks is seeded per length
    docs = EvalPlan(split_of([40, 10, 33, 50]), "documents", [32], samples=10, min_sequences=3, last_tokens=256)
    rows = docs.at(32)
    assert rows.long_documents == 3 and not rows.concatenated and set(rows.scored) == {32}
    with pytest.raises(LenbenchError, match="unknown evaluation protocol 'random'"):
        EvalPlan(split, "random", [128], 6, 1, 256)


class NeedsSmallBatches(Uniform):
    """Uniform logits, but a forward over more than ``fits`` sequences raises an out-of-memory error."""

    def __init__(self, vocab: int, fits: int, error: type[Exception] = torch.OutOfMemoryError) -> None:
        super().__init__(vocab)
        self.fits, self.error, self.batches = fits, error, []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.batches.append(ids.shape[0])
        if ids.shape[0] > self.fits:
            message = (
                "DefaultCPUAllocator: can't allocate memory" if self.error is RuntimeError else "CUDA out of memory"
            )
            raise self.error(message)
        return super().forward(ids)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError])
def test_evaluation_batch_halves_when_memory_runs_out(error: type[Exception]) -> None:
    windows = counting_windows(7, 40, 257)
    notes: list[str] = []
    model = NeedsSmallBatches(257, fits=2, error=error)
    last, full, batch = ppl.adaptive_perplexity(model, windows, 8, note=notes.append)
    assert batch == 2 and last == pytest.approx(257) and full == pytest.approx(257)
    assert model.batches[:2] == [7, 4] and model.batches[2:] == [2, 2, 2, 1]  # 7 and 4 do not fit
    assert notes == [
        "L=40: out of memory, evaluating 4 sequence(s) per batch",
        "L=40: out of memory, evaluating 2 sequence(s) per batch",
    ]
    with pytest.raises(LenbenchError, match="runs out of memory with one sequence per batch") as info:
        ppl.adaptive_perplexity(NeedsSmallBatches(257, fits=0, error=error), windows, 4)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):  # anything but out-of-memory propagates unchanged

        class Broken(Uniform):
            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                raise ValueError("bug")

        ppl.adaptive_perplexity(Broken(257), windows, 4)


def test_eval_batch_adapts_to_length_and_vocab() -> None:
    assert ppl.eval_batch_size(128, 257, 16384, 64) == 64
    assert ppl.eval_batch_size(2048, 257, 16384, 64) == 8
    assert ppl.eval_batch_size(8192, 257, 4096, 64) == 1
    assert ppl.eval_batch_size(8192, 50257, 65536, 64) == 1  # 8 x 8192 x 50257 logits would not fit


def expand(name: str = "quick", grid: dict[str, Any] | None = None, profile: dict[str, Any] | None = None) -> list:
    overrides = {"grid": grid or {}, "profile": profile or {}}
    return get_suite("ppl").expand(load_suite("ppl"), name, overrides)


def test_expand_grid_and_errors() -> None:
    cells = expand("paper", grid={"pes": "rope,alibi", "seeds": "0,1"})
    assert len(cells) == 2 * 2 * 2 and len({c.label for c in cells}) == 8
    assert {c.config["train"]["length"] for c in cells} == {128, 512}
    cfg = cells[0].config
    assert (cfg["model"]["layers"], cfg["model"]["dim"], cfg["model"]["heads"]) == (12, 768, 12)
    assert cfg["eval"]["lengths"][-1] == 8192 and cfg["data"]["kind"] == "default"
    assert cfg["eval"]["protocol"] == "fixed_targets"
    # DAPE's 256 sequences per step (32 per GPU x 8 GPUs), 32 per forward
    assert (cfg["train"]["batch_size"], cfg["train"]["micro_batch_size"]) == (256, 32)
    assert {(c.config["train"]["length"], c.config["train"]["tokens_per_step"]) for c in cells} == {
        (128, 256 * 128), (512, 256 * 512)}
    (cell,) = expand(grid={"pes": "rope"}, profile={"model": {"size": "125m", "layers": 2}, "train": {"length": 64}})
    assert cell.config["model"]["layers"] == 2 and cell.config["train"]["length"] == 64
    assert cell.label == "default-rope-T64-s0"
    with pytest.raises(LenbenchError, match="unknown key"):
        expand(grid={"tasks": "parity_check"})
    with pytest.raises(LenbenchError, match="unknown model size"):
        expand(profile={"model": {"size": "huge"}})
    with pytest.raises(LenbenchError, match="unknown tokenizer"):
        expand(profile={"data": {"tokenizer": "gpt2"}})
    with pytest.raises(LenbenchError, match="books3"):
        expand(grid={"datasets": "books3"})
    with pytest.raises(LenbenchError, match="unknown evaluation protocol 'last256'"):
        expand(profile={"eval": {"protocol": "last256"}})
    with pytest.raises(LenbenchError, match="micro batch size 5 does not divide the 32 sequences"):
        expand(profile={"train": {"micro_batch_size": 5}})


SMALL = {
    "model": {"size": "tiny", "layers": 2, "dim": 64, "heads": 4},
    "train": {"length": 64, "steps": 250, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 0, "log_every": 10},
    "eval": {"lengths": [64, 128], "samples": 8, "min_sequences": 4},
}


def run(cells: list, root: Path, reporter: Any = None) -> list:
    return run_in_process(cells, ResultStore(root), get_suite("ppl"), reporter or SilentReporter())


# The real run of the issue: the `tiny` preset (2 x 128, 4 heads) as shipped, a few hundred steps.
SHORT = {
    "model": {"size": "tiny"},
    "train": {"length": 64, "steps": 300, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 0, "log_every": 10},
    "eval": {"lengths": [64, 128], "samples": 8, "min_sequences": 4},
}


def test_short_run_beats_unigram(tmp_path: Path) -> None:
    reporter = SilentReporter()
    (outcome,) = run(expand(grid={"pes": "alibi"}, profile=SHORT), tmp_path, reporter)
    assert outcome.status == "done"
    assert outcome.cell.config["model"] == {"size": "tiny", "layers": 2, "dim": 128, "heads": 4, "dropout": 0.0}
    summary = outcome.summary
    said = "fixed targets: the last 128 tokens of 8 fixed windows of 129 tokens of the validation stream"
    assert said in reporter.messages[-1] and summary["protocol"] == "fixed_targets"
    assert summary["tokens_per_step"] == 8 * 64
    assert summary["batch"] == {"global": 8, "per_rank": 8, "micro": 8, "accumulation": 1, "world_size": 1}
    # the quick profile's bpe:4096 tokens of Python source, whole validation split (770 measured; bytes: 10..100)
    assert outcome.cell.config["data"]["tokenizer"] == "bpe:4096"
    assert 200 < summary["unigram_ppl"] < 2000
    ev = summary["eval"]
    assert (ev["64"]["n_sequences"], ev["128"]["n_sequences"]) == (16, 8)  # at 64, two rows per window
    assert ev["64"]["n_targets"] == ev["128"]["n_targets"] == 8 * 128
    # the same target tokens at both lengths, so the unigram model scores them identically
    assert ev["64"]["unigram_ppl_last256"] == ev["128"]["unigram_ppl_last256"]
    for length in ("64", "128"):  # the unigram model scored on the same evaluation tokens
        assert summary["ppl_all"][length] < 0.7 * ev[length]["unigram_ppl_all"], summary
        assert summary["ppl_last256"][length] < 0.7 * ev[length]["unigram_ppl_last256"], summary
    assert summary["corpus"]["python"] and summary["corpus"]["documents"]["validation"] > 0
    records = json.loads(outcome.cell_dir.metrics_path.read_text())
    assert {(r["eval_len"], r["metric"]) for r in records} == {
        (n, m) for n in (64, 128) for m in ("ppl_last256", "ppl_all")
    }
    keys = {"suite", "dataset", "pe", "seed", "train_len", "eval_len", "metric", "value", "protocol", "n_sequences",
            "concatenated", "unigram_ppl", "precision", "backend"}
    assert all(set(r) == keys and r["protocol"] == "fixed_targets" and r["concatenated"] for r in records)
    # what ran, recorded (CPU: fp32; ALiBi trains on query blocks, evaluates on them below 1024 tokens)
    assert {(r["precision"], r["backend"]) for r in records} == {("fp32", "blocked_bias")}
    assert summary["run"] == {"device": "cpu", "precision": "fp32", "precision_requested": "auto",
                              "train_backend": "blocked_bias", "backend": "blocked_bias"}
    assert summary["randomized_overflow"] is None and summary["selfcheck"]["warnings"] == []
    # model.pt holds only tensors; what rebuilds the model is JSON beside it
    assert set(json.loads((outcome.cell_dir.path / "model.json").read_text())) == {"model_config", "pe", "tokenizer"}
    weights = torch.load(outcome.cell_dir.path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert {(r["eval_len"], r["metric"]): r["unigram_ppl"] for r in records}[(64, "ppl_last256")] == pytest.approx(
        ev["64"]["unigram_ppl_last256"])
    manifest = json.loads(outcome.cell_dir.manifest_path.read_text())
    assert manifest["corpus"]["python"] == summary["corpus"]["python"]
    model = ppl.load_model(outcome.cell_dir)
    corpus = ppl.load_cell_corpus(outcome.cell.spec)
    windows = ppl.sample_windows(corpus.validation.tokens, np.random.default_rng(0), 16, 64).numpy()
    _, random_windows = ppl.perplexity(model, windows, batch_size=16)
    assert random_windows < 0.7 * summary["unigram_ppl"]  # and against the corpus-wide unigram model


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    profile = {**SMALL, "train": {**SMALL["train"], "steps": 12, "checkpoint_every": 5, "log_every": 2}}
    (cell,) = expand(grid={"pes": "kerple"}, profile=profile)
    (straight,) = run([cell], tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run([cell], tmp_path / "b", StopAt(8))
    (resumed,) = run([cell], tmp_path / "b")
    assert resumed.summary["resumed_from"] == 5
    assert resumed.cell_dir.metrics_path.read_text() == straight.cell_dir.metrics_path.read_text()
    assert resumed.cell_dir.log_path.read_text() == straight.cell_dir.log_path.read_text()


@pytest.mark.parametrize("pe", PES.names())
def test_eval_at_eight_times_training_length(pe: str) -> None:
    shape = PplShape("tiny", layers=1, dim=32, heads=4, dropout=0.0)
    torch.manual_seed(0)
    model = Transformer(ppl.model_config(shape, 16, [128], 257), parse_pe_spec(pe)).eval()
    windows = counting_windows(2, 128, 257)
    if pe == "randomized-learned":  # its table has 4 x 16 = 64 rows: longer inputs are refused, by policy
        with pytest.raises(LenbenchError, match="max_position"):
            ppl.perplexity(model, windows, batch_size=2)
        # ... and a table as long as the evaluation (the option the error names) runs at 8x
        model = Transformer(ppl.model_config(shape, 16, [128], 257), parse_pe_spec(f"{pe}:max_position=128")).eval()
    last, full = ppl.perplexity(model, windows, batch_size=2)
    assert math.isfinite(last) and math.isfinite(full) and 1 < full < 1e4


def test_cli_unreachable_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def offline(repo: str, config: str | None, split: str | None) -> Any:
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (OfflineModeIsEnabled)")

    from lenbench.data import corpora

    original = corpora._hub_load
    corpora._hub_load = offline
    try:
        args = "run --suite ppl --profile quick --dataset hf:nobody/corpus --pe rope --steps 1 --out".split()
        code = main([*args, str(tmp_path)])
    finally:
        corpora._hub_load = original
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lenbench: error: cannot load dataset hf:nobody/corpus")
    assert "Traceback" not in "\n".join(err)


def test_cli_run_prints_a_perplexity_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = (
        "run --suite ppl --profile quick --pe alibi,rope --steps 3 --model tiny --train-length 32"
        " --eval-lengths 32,64 --out"
    ).split() + [str(tmp_path)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "trained at 32" in table and "fixed_targets" in table  # the title names the protocol
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│")}
    assert set(rows) == {"alibi", "rope", "baseline", "unigram"}  # the unigram model's row closes the table
    del rows["baseline"], rows["unigram"]
    for pe, line in rows.items():
        stored = json.loads(next((tmp_path / "ppl").glob(f"*-{pe}-T32-s0-*/DONE")).read_text())
        assert f"{stored['ppl_last256']['64']:.2f}" in line
