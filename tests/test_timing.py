"""Timing suite: well-formed cells for every PE, the --layers estimate, OOM handling, the table, the CLI."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lenbench import bench
from lenbench.cli import main, print_timing
from lenbench.config import load_suite
from lenbench.execute.inprocess import run_in_process
from lenbench.pe import PES
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, load_suite_module
from lenbench.suites import timing as T

FAST = {"sizes": "tiny", "repeats": 2, "warmup": 1, "min_warmup_ms": 0, "min_block_ms": 0, "isolate": False}
TIMING_KEYS = {"suite", "size", "pe", "train_len", "eval_len", "mode", "metric", "value", "iqr", "backend",
               "layers", "layers_timed", "estimated_full_ms", "embed_head_ms", "status"}


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    T._MODELS.clear()
    T._EMBED_HEAD.clear()


def cells(pes: str, lengths: str = "16,32", modes: str = "both", **profile: Any) -> list[T.Cell]:
    overrides = {"grid": {"pes": pes}, "profile": {**FAST, "lengths": lengths, "modes": modes, **profile}}
    return T.expand(load_suite("timing"), "quick", overrides)


def run(cell_list: list[T.Cell], root: Path) -> list[Any]:
    return run_in_process(cell_list, ResultStore(root), load_suite_module("timing"), SilentReporter())


def records_of(outcomes: list[Any]) -> list[dict[str, Any]]:
    return [r for o in outcomes for r in o.cell_dir.read_metrics()]


def test_tiny_shape_times_every_pe_and_writes_well_formed_cells(tmp_path: Path) -> None:
    names = PES.names()
    outcomes = run(cells(",".join(names)), tmp_path)
    assert len(outcomes) == len(names) * 2 * 2
    assert all(o.status == "done" for o in outcomes), [(o.cell.label, o.status) for o in outcomes]
    for o in outcomes:
        assert o.cell_dir.done_path.exists() and o.cell_dir.manifest_path.exists()
        timing, memory = o.cell_dir.read_metrics()
        assert TIMING_KEYS <= set(timing), o.cell.label
        assert timing["metric"] == f"ms_{o.cell.config['mode']}" and timing["status"] == "ok"
        assert timing["value"] > 0 and timing["iqr"] >= 0 and timing["backend"], o.cell.label
        assert (timing["train_len"], timing["layers"], timing["layers_timed"]) == (512, 2, 1)
        expected = T.estimate_full_ms(timing["value"], 2, 1, timing["embed_head_ms"])
        assert timing["estimated_full_ms"] == pytest.approx(expected)
        assert memory["metric"] == "peak_mem_mb" and (memory["value"] is None or memory["value"] >= 0)
    tables = T.timing_tables(records_of(outcomes))
    assert [t.mode for t in tables] == ["fwd", "train"]
    # each PE as its cells name it: FIRE-based ones carry DAPE's NeoX l0 for train length 512 (fire:l0=64)
    specs = list(dict.fromkeys(o.cell.config["pe"] for o in outcomes))
    assert [s.split(":")[0] for s in specs] == names and "fire:l0=64" in specs
    for t in tables:
        assert t.pes == specs and t.reference == "dape-kerple"
        for n in (16, 32):
            assert t.entries[("dape-kerple", "tiny", n)].ratio == 1.0
            assert all(t.entries[(p, "tiny", n)].ratio is not None for p in specs)
    again = run(cells(",".join(names[:2]), lengths="16"), tmp_path)
    assert {o.status for o in again} == {"skipped"}


def test_layers_estimate_equals_formula_on_mocked_timer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    medians = iter([7.0, 3.0, 5.0, 11.0])  # slice, embedding+head (once), slice, full model

    def fake_measure(fn: Any, repeats: int, number: int) -> bench.Timing:
        value = next(medians)
        return bench.Timing(value, 0.5, [value] * repeats, number)

    monkeypatch.setattr(bench, "measure", fake_measure)
    sliced = run(cells("alibi,rope", lengths="16", modes="fwd"), tmp_path)
    first, second = (o.cell_dir.read_metrics()[0] for o in sliced)
    assert (first["value"], first["embed_head_ms"], first["estimated_full_ms"]) == (7.0, 3.0, 7.0 * 2 / 1 + 3.0)
    assert (second["value"], second["embed_head_ms"], second["estimated_full_ms"]) == (5.0, 3.0, 5.0 * 2 / 1 + 3.0)
    (full,) = run(cells("alibi", lengths="16", modes="fwd", layers=2), tmp_path)
    record = full.cell_dir.read_metrics()[0]
    assert (record["value"], record["layers_timed"], record["estimated_full_ms"]) == (11.0, 2, None)
    assert T.estimate_full_ms(10.0, 12, 5, 3.0) == 10.0 * 12 / 5 + 3.0


def test_dape_is_timed_with_d_dape_32_on_the_real_shapes() -> None:
    by_size = {c.config["size"]: c.config for c in T.expand(load_suite("timing"), "paper", {"grid": {"pes": "dape"}})}
    assert {s: (c["layers"], c["dim"], c["heads"]) for s, c in by_size.items()} == {
        "350m": (24, 1024, 16), "2.7b": (32, 2560, 32), "6.7b": (32, 4096, 32)
    }
    assert all(c["batch_size"] == 1 and c["train_len"] == 512 for c in by_size.values())
    (cfg,) = [c.config for c in cells("dape-kerple", lengths="16", modes="fwd")]
    block = T.build_timed_module(cfg, T.torch.device("cpu"), T.torch.float32)[0]
    assert block.attn.pe.hidden == 32 and block.attn.causal
    assert T.dape_width("dape-kerple") == 32 and T.dape_width("dape:hidden=64") == 64 and T.dape_width("alibi") is None
    assert T.cell_records(cfg, {"status": "oom", "reason": "x"})[0]["d_dape"] == 32


def test_cell_that_does_not_fit_is_oom_and_the_run_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = T._measure_model

    def fail_for_rope(cfg: dict[str, Any], *args: Any) -> dict[str, Any]:
        if cfg["pe"] == "rope":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return real(cfg, *args)

    monkeypatch.setattr(T, "_measure_model", fail_for_rope)
    outcomes = run(cells("rope,alibi", lengths="16", modes="fwd"), tmp_path)
    assert [o.summary["status"] for o in outcomes] == ["oom", "ok"]
    monkeypatch.setattr(bench, "available_bytes", lambda device: 1)
    (precheck,) = run(cells("dape-kerple", lengths="16", modes="fwd"), tmp_path)
    assert precheck.summary["status"] == "oom" and "pre-check" in precheck.cell_dir.read_metrics()[0]["reason"]
    records = records_of([*outcomes, precheck])
    (table,) = T.timing_tables(records)
    assert table.entries[("rope", "tiny", 16)].oom and table.entries[("rope", "tiny", 16)].ratio is None
    assert table.entries[("alibi", "tiny", 16)].ratio is None  # the reference is OOM
    assert not table.entries[("alibi", "tiny", 16)].oom


def test_worker_killed_for_memory_counts_as_oom() -> None:
    cfg = cells("alibi", lengths="16", modes="fwd", repeats=10**9)[0].config
    pids: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not (T._WORKER and T._WORKER[0].proc.pid):
            time.sleep(0.05)
        time.sleep(1.0)
        pids.append(T._WORKER[0].proc.pid)
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    result = T.measure_cell_isolated(cfg)
    killer.join()
    assert result["status"] == "oom" and "SIGKILL" in result["reason"]
    assert not T._WORKER  # the next cell starts a fresh worker


def test_table_marks_oom_and_names_the_ratio_direction(capsys: pytest.CaptureFixture[str]) -> None:
    common = {"suite": "timing", "size": "350m", "eval_len": 512, "layers": 24, "layers_timed": 1, "device": "cpu"}
    records = [
        {**common, "pe": "dape-kerple", "metric": "ms_fwd", "value": 4.0, "estimated_full_ms": 200.0,
         "status": "ok", "backend": "explicit"},
        {**common, "pe": "alibi", "metric": "ms_fwd", "value": 2.0, "estimated_full_ms": 150.0,
         "status": "ok", "backend": "sdpa_bias"},
        {**common, "pe": "rope", "metric": "ms_fwd", "value": None, "estimated_full_ms": None, "status": "oom"},
    ]
    (table,) = T.timing_tables(records)
    assert table.entries[("alibi", "350m", 512)].ratio == 0.75
    assert table.entries[("dape-kerple", "350m", 512)].ratio == 1.0
    print_timing(records)
    text = capsys.readouterr().out
    assert "OOM" in text and "PE time / dape-kerple time" in text and "est." in text and "0.75" in text


def test_profiles_expand(monkeypatch: pytest.MonkeyPatch) -> None:
    paper = T.expand(load_suite("timing"), "paper", {"grid": {"pes": "alibi"}})
    assert len(paper) == 3 * 5 * 2
    assert {c.config["size"] for c in paper} == {"350m", "2.7b", "6.7b"}
    assert {c.config["layers_timed"] for c in paper} == {1}  # CPU here: a 1-layer slice
    monkeypatch.setattr(T.torch.cuda, "is_available", lambda: True)
    cuda = T.expand(load_suite("timing"), "paper", {"grid": {"pes": "alibi"}})
    assert {(c.config["size"], c.config["layers_timed"], c.config["precision"]) for c in cuda} == {
        ("350m", 24, "bf16"), ("2.7b", 32, "bf16"), ("6.7b", 32, "bf16")
    }
    assert not any(c.config["isolate"] for c in cuda)


def test_cli_timing_end_to_end_in_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["timing", "--sizes", "tiny", "--lengths", "16,32", "--pe", "alibi,dape-kerple", "--repeats", "2",
            "--out", str(tmp_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Ratio = PE time / dape-kerple time" in captured.out and "1.00" in captured.out
    assert "quick" in captured.err
    assert len(list((tmp_path / "timing").glob("*/DONE"))) == 2 * 2 * 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sizes", "7b"], "unknown model size '7b'"),
        (["--sizes", "350"], "did you mean '350m'"),
        (["--lengths", "0"], "lengths must be >= 1"),
        (["--lengths", "-512"], "lengths must be >= 1"),
        (["--lengths", "long"], "lengths"),
        (["--mode", "fast"], "unknown mode 'fast'"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--pe", "alibii"], "did you mean 'alibi'"),
        (["--profile", "fast"], "no profile 'fast'"),
        (["--backend", "fused"], "unknown timing backend 'fused'"),
        (["--precision", "fp16"], "precision fp16 needs CUDA"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--check-estimate", "--backend", "paper", "--layers", "0"], "--layers must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--pe": "alibi", "--out": str(tmp_path)}
    for flag, value in base.items():
        if flag not in args:
            args = [*args, flag, value]
    assert main(["timing", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err


# --------------------------------------------------------------------------- backend policy, precision, estimate check

TABLE1_PES = ["rope", "t5", "alibi", "kerple", "fire", "dape-kerple"]


def _lm(pe: str, backend: str, dim: int) -> T.Transformer:
    T.torch.manual_seed(0)
    cfg = T.ModelConfig(vocab_size=11, out_size=11, dim=dim, layers=2, heads=4, causal=True, max_length=64,
                        train_length=16, attention_backend=backend)
    return T.Transformer(cfg, T.parse_pe_spec(pe))


@pytest.mark.parametrize("pe", TABLE1_PES)
def test_paper_backend_equals_the_fastest_backend(pe: str) -> None:
    ids = T.torch.randint(0, 11, (2, 24), generator=T.torch.Generator().manual_seed(1))
    got = {}
    for backend in ("auto", "paper"):
        model = _lm(pe, backend, 32)
        with T.torch.no_grad():
            logits = model(ids)
        out = model(ids)
        out.square().sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        used = {m.last_backend for m in model.modules() if isinstance(m, T.Attention)}
        got[backend] = (logits, out, grads, used)
    (fast, fast_train, fast_grads, fast_used), (paper, paper_train, paper_grads, paper_used) = got.values()
    assert paper_used == {"paper"} and "paper" not in fast_used
    assert T.torch.allclose(paper, fast, atol=1e-5, rtol=1e-5), (pe, fast_used)
    assert T.torch.allclose(paper_train, fast_train, atol=1e-5, rtol=1e-5)
    assert len(paper_grads) == len(fast_grads)
    scale = max(float(g.abs().max()) for g in fast_grads)  # float noise relative to the largest gradient
    for a, b in zip(paper_grads, fast_grads, strict=True):
        assert T.torch.allclose(a, b, atol=1e-5 * scale, rtol=1e-4)


def test_paper_backend_runs_the_pe_on_the_full_unblocked_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _lm("dape-kerple", "paper", 32)
    attn = model.blocks[0].attn
    shapes: list[tuple[int, ...]] = []
    real = attn.pe.scores

    def spy(s: Any, *args: Any) -> Any:
        shapes.append(tuple(s.shape))
        return real(s, *args)

    monkeypatch.setattr(attn.pe, "scores", spy)
    monkeypatch.setattr(T.Attention, "block_size", lambda self, batch, n_keys: 4)  # would block explicit
    with T.torch.no_grad():
        model(T.torch.zeros(1, 24, dtype=T.torch.long))
    assert shapes == [(1, 4, 24, 24)]  # one call on every query x every key, future keys included


def test_backend_policy_and_precision_are_in_every_cell(tmp_path: Path) -> None:
    fastest = cells("alibi", lengths="16", modes="fwd")
    paper = cells("alibi", lengths="16", modes="fwd", backend="paper")
    assert fastest[0].config["backend_policy"] == "fastest" and paper[0].config["backend_policy"] == "paper"
    assert paper[0].label.endswith("-paper") and paper[0].config["precision"] == "fp32"
    store = ResultStore(tmp_path)
    assert store.cell("timing", fastest[0].label, fastest[0].config).path != store.cell(
        "timing", paper[0].label, paper[0].config).path  # never the same folder
    assert T.resolve_backend("explicit") == "explicit" and T.attention_backend("fastest") == "auto"
    with pytest.raises(T.LenbenchError, match="unknown timing backend"):
        T.resolve_backend("fused")
    with pytest.raises(T.LenbenchError, match="needs CUDA"):
        T.resolve_precision("fp16", cuda=False)
    assert T.resolve_precision("fp16", cuda=True) == "fp16" and T.resolve_precision("auto", cuda=False) == "fp32"
    outcomes = run(fastest + paper, tmp_path)
    records = records_of(outcomes)
    assert {(r["backend_policy"], r["precision"]) for r in records} == {("fastest", "fp32"), ("paper", "fp32")}
    tables = T.timing_tables(records)
    assert [(t.mode, t.policy) for t in tables] == [("fwd", "fastest"), ("fwd", "paper")]
    assert tables[1].backends == {"alibi": "paper"} and tables[1].precisions == ["fp32"]
    assert "unfused" in tables[1].policy_text


def test_estimate_check_hand_computed() -> None:
    common = {"suite": "timing", "size": "350m", "pe": "kerple", "eval_len": 512, "layers": 24, "device": "cpu",
              "metric": "ms_fwd", "status": "ok", "backend_policy": "paper", "precision": "fp32"}
    records = [
        {**common, "layers_timed": 1, "value": 10.0, "estimated_full_ms": 250.0},
        {**common, "layers_timed": 2, "value": 21.0, "estimate_check": True},
        {**common, "layers_timed": 4, "value": 38.0, "estimate_check": True},
    ]
    checks = {(c.k, c.m): c for c in T.estimate_checks(records)}
    assert set(checks) == {(1, 2), (1, 4), (2, 4)}
    assert checks[(1, 4)].predicted_ms == 40.0 and checks[(1, 4)].rel_error == pytest.approx(2 / 38)  # +5.3%
    assert checks[(1, 2)].rel_error == pytest.approx(-1 / 21)  # 20 vs 21: -4.8%
    assert checks[(2, 4)].rel_error == pytest.approx(4 / 38)  # 42 vs 38: +10.5%
    (table,) = T.timing_tables(records)  # the check slices stay out of Table 1
    assert table.layers["350m"] == (1, 24) and table.entries[("kerple", "350m", 512)].ms == 10.0


def test_paper_backend_with_estimate_check_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    medians = iter([10.0, 3.0, 21.0, 38.0])  # 1-block slice, embedding+head (once), 2 and 4 blocks

    def fake_measure(fn: Any, repeats: int, number: int) -> bench.Timing:
        value = next(medians)
        return bench.Timing(value, 0.5, [value] * repeats, number)

    monkeypatch.setattr(bench, "measure", fake_measure)
    todo = cells("alibi", lengths="16", modes="fwd", sizes="125m", vocab_size=11, backend="paper",
                 check_estimate=True)
    assert [(c.config["layers_timed"], c.config.get("estimate_check", False)) for c in todo] == [
        (1, False), (2, True), (4, True)]
    records = records_of(run(todo, tmp_path))
    assert {r["backend"] for r in records} == {"paper"}
    print_timing(records)
    out = capsys.readouterr().out
    assert "backend paper: every PE on DAPE's unfused NeoX logits path" in out and "fp32" in out
    assert "estimate check" in out and "+5.3%" in out and "-4.8%" in out  # 40 vs 38, 20 vs 21
