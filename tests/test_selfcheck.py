"""GPU paths prove themselves (issue 26 item 4), tested on CPU by checking the CPU as if it were a GPU.

``selfcheck.CHECKED_DEVICES`` normally holds only ``cuda``. Here it is ``cpu``, so the fused DAPE C kernel
stands in for the Triton kernel: its real parity check runs and passes, and a corrupted kernel (a
simulated mismatch) fails it, turns the path off (attention takes ``explicit``) with one warning line
that the cell records, and the result is cached on disk per device and version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lenbench import devices
from lenbench.model import selfcheck
from lenbench.model.attention import Attention, backends_used
from lenbench.pe import PEContext, dape_fused, parse_pe_spec, pe_class

CPU = torch.device("cpu")


@pytest.fixture
def checked_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CPU is a checked device, the cache is a fresh folder, no result is remembered."""
    monkeypatch.setattr(selfcheck, "CHECKED_DEVICES", ("cpu",))
    monkeypatch.setenv("LENBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(selfcheck.SWITCH, raising=False)
    selfcheck.forget()
    yield tmp_path
    selfcheck.forget()


def dape_layer(causal: bool = True) -> Attention:
    spec = parse_pe_spec("dape-kerple:hidden=8")
    pe = pe_class(spec)(PEContext(dim=32, heads=4, causal=causal, train_length=16, max_length=64), **spec.options)
    return Attention(32, 4, pe, causal)


def corrupt_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated kernel bug: the fused output is off by 1e-2 (above the 1e-4 tolerance)."""
    real = dape_fused.fused_dape_attention
    monkeypatch.setattr(dape_fused, "fused_dape_attention", lambda *a, **k: real(*a, **k) + 1e-2)


def test_relative_error_by_hand() -> None:
    """max |a - b| / max(1, max |b|): 0.5 / 2.5 = 0.2; below 1 the denominator is 1; NaN is infinite."""
    assert selfcheck.relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5])) == pytest.approx(0.2)
    assert selfcheck.relative_error(torch.tensor([0.1]), torch.tensor([0.2])) == pytest.approx(0.1)
    assert selfcheck.relative_error(torch.tensor([float("nan")]), torch.tensor([0.2])) == float("inf")
    assert selfcheck.relative_error(torch.zeros(2), torch.zeros(3)) == float("inf")


@pytest.mark.skipif(not dape_fused.available(), reason="no C compiler for the fused DAPE kernel")
def test_a_correct_kernel_passes_and_is_used(checked_cpu: Path) -> None:
    layer = dape_layer()
    layer(torch.randn(2, 20, 32))
    assert backends_used(layer) == ["dape_fused"]
    record = selfcheck.cell_record()
    check = record["checks"]["dape_fused"]
    assert check["ok"] and check["max_error"] < 1e-4 and record["warnings"] == []
    key = selfcheck.device_key(CPU)
    cached = json.loads((checked_cpu / "selfcheck.json").read_text())
    assert cached[key]["dape_fused"]["ok"] is True


@pytest.mark.skipif(not dape_fused.available(), reason="no C compiler for the fused DAPE kernel")
def test_a_mismatch_turns_the_path_off_with_one_warning(
    checked_cpu: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt_fused_kernel(monkeypatch)
    layer = dape_layer()
    x = torch.randn(2, 20, 32)
    y = layer(x)
    assert backends_used(layer) == ["explicit"]  # the fallback ran, and its output is the reference
    ref = Attention(32, 4, layer.pe, True, "explicit")
    ref.load_state_dict(layer.state_dict())
    assert torch.allclose(y, ref(x))
    layer(x)  # the check ran once: later forwards reuse the result and print nothing more
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lenbench: warning: dape_fused failed its parity check")
    record = selfcheck.cell_record()
    assert not record["checks"]["dape_fused"]["ok"] and record["checks"]["dape_fused"]["max_error"] > 1e-4
    assert len(record["warnings"]) == 1 and "turned off" in record["warnings"][0]


@pytest.mark.skipif(not dape_fused.available(), reason="no C compiler for the fused DAPE kernel")
def test_the_result_is_cached_per_device_and_version(checked_cpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corrupt_fused_kernel(monkeypatch)
    assert not selfcheck.result("dape_fused", CPU).ok
    selfcheck.forget()  # a new process: the disk cache answers, no check runs

    def must_not_run(device: torch.device) -> tuple[float, str]:
        raise AssertionError("the cached result should have been used")

    monkeypatch.setitem(selfcheck.CHECKS, "dape_fused", must_not_run)
    found = selfcheck.result("dape_fused", CPU)
    assert found.cached and not found.ok
    assert not dape_layer().fused_dape(CPU)
    # another version (source hash, torch, Triton or card): checked again
    selfcheck.forget()
    monkeypatch.setattr(selfcheck, "_keys", {("cpu", None): "cpu:other|-|torch 9|triton 9|lenbench 9|src 0"})
    monkeypatch.setitem(selfcheck.CHECKS, "dape_fused", lambda device: (0.0, "simulated pass"))
    assert selfcheck.result("dape_fused", CPU).ok and not selfcheck.result("dape_fused", CPU).cached


def test_a_crash_inside_a_check_is_a_failed_check(checked_cpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(device: torch.device) -> tuple[float, str]:
        raise RuntimeError("illegal memory access\nsecond line")

    monkeypatch.setitem(selfcheck.CHECKS, "flex", crash)
    found = selfcheck.result("flex", CPU)
    assert not found.ok and found.max_error == float("inf") and found.detail == "RuntimeError: illegal memory access"


def test_failed_flex_check_routes_static_biases_to_query_blocks(
    checked_cpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU evaluation from 1024 tokens takes FlexAttention; with its check failed, query blocks."""
    from lenbench.model.attention import FLEX_CPU_MIN_LENGTH, flex_available

    pe = pe_class(parse_pe_spec("alibi"))(PEContext(dim=128, heads=4, causal=True, train_length=16, max_length=64))
    layer = Attention(128, 4, pe, True)
    monkeypatch.setitem(selfcheck.CHECKS, "flex", lambda device: (0.5, "simulated mismatch"))
    with torch.no_grad():
        assert layer.choose_backend(CPU, 4 * FLEX_CPU_MIN_LENGTH) == "blocked_bias"
        selfcheck.forget()
        monkeypatch.setitem(selfcheck.CHECKS, "flex", lambda device: (0.0, "simulated pass"))
        monkeypatch.setattr(selfcheck, "_keys", {("cpu", None): "cpu:again"})
        assert layer.choose_backend(CPU, 4 * FLEX_CPU_MIN_LENGTH) == ("flex" if flex_available(CPU) else "blocked_bias")


def test_failed_bf16_check_trains_in_fp32(checked_cpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(selfcheck.CHECKS, "bf16", lambda device: (0.5, "simulated mismatch"))
    assert devices.requested_precision("bf16", CPU) == "bf16"
    assert devices.effective_precision("bf16", CPU) == "fp32"
    with devices.autocast_for("bf16", CPU)():
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setitem(selfcheck.CHECKS, "bf16", lambda device: (0.0, "simulated pass"))
    monkeypatch.setattr(selfcheck, "_keys", {("cpu", None): "cpu:again"})
    with devices.autocast_for("bf16", CPU)():
        assert torch.is_autocast_enabled("cpu")
    assert devices.effective_precision("fp32", CPU) == "fp32"


def test_the_real_bf16_check_passes_on_cpu() -> None:
    """bf16 autocast keeps every position term fp32 and a layer within bf16 tolerance of fp32 (run directly)."""
    found = selfcheck.run_check("bf16", CPU)
    assert found.ok, found
    assert found.max_error < selfcheck.TOLERANCE["bf16"]


def test_unchecked_devices_and_the_switch_need_no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(selfcheck.CHECKS, "dape_fused", lambda device: (1.0, "would fail"))
    assert selfcheck.allowed("dape_fused", CPU)  # the CPU is not a checked device by default
    monkeypatch.setattr(selfcheck, "CHECKED_DEVICES", ("cpu",))
    monkeypatch.setenv(selfcheck.SWITCH, "0")
    assert selfcheck.allowed("dape_fused", CPU) and selfcheck.cell_record()["skipped"]


@pytest.mark.skipif(not dape_fused.available(), reason="no C compiler for the fused DAPE kernel")
def test_a_che_cell_records_the_fallback(checked_cpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a DAPE CHE cell with a corrupted kernel trains on explicit and says so in DONE and records."""
    from tiny_runs import run_tiny_che

    corrupt_fused_kernel(monkeypatch)
    summary, records = run_tiny_che("dape", checked_cpu / "results")
    assert summary["run"]["train_backend"] == "explicit" and summary["run"]["backend"] == "explicit"
    assert summary["run"]["precision"] == "fp32"
    assert not summary["selfcheck"]["checks"]["dape_fused"]["ok"]
    assert summary["selfcheck"]["warnings"][0].startswith("dape_fused failed its parity check")
    assert {(r["precision"], r["backend"]) for r in records} == {("fp32", "explicit")}


def test_doctor_lists_environment_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    from lenbench.cli import main

    assert main(["doctor", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert set(env) == {"versions", "devices", "kernels", "backends", "parity"}
    assert [r["pe"] for r in env["backends"]] == ["rope", "t5", "alibi", "kerple", "fire", "dape-kerple"]
    rope = env["backends"][0]
    assert rope["train 512"] == rope["eval 4096"] == "sdpa"
    dape = env["backends"][-1]["train 512"]
    assert dape == ("dape_fused" if dape_fused.available() else "explicit")
    assert {r["path"] for r in env["parity"]} == set(selfcheck.PATHS)
    assert main(["doctor"]) == 0 and "parity" in capsys.readouterr().out
