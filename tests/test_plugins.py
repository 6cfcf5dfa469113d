"""A user's PE registers without editing lenbench: by ``file.py:Class`` and by the ``lenbench.pe``
entry-point group (docs/architecture.md), and trains through the CHE suite. The README shows the example file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lenbench.config import load_suite
from lenbench.errors import LenbenchError
from lenbench.execute.inprocess import run_in_process
from lenbench.pe import PES, parse_pe_list, pe_class
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, get_suite

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_pe.py"
TINY = {
    "model": {"layers": 1, "dim": 16, "heads": 2, "dropout": 0.0},
    "train": {"steps": 6, "batch_size": 8, "lr": 1e-2, "max_length": 6, "checkpoint_every": 3, "log_every": 1},
    "eval": {"lengths": [8], "samples": 8, "batch_size": 8},
}


def test_readme_embeds_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing your own PE", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == EXAMPLE.read_text()


def train_cell(pe: str, root: Path) -> tuple[dict, list[dict]]:
    suite = load_suite("che")
    overrides = {"grid": {"tasks": "parity_check", "pes": pe, "seeds": "0"}, "profile": TINY}
    module = get_suite("che")
    (cell,) = module.expand(suite, "quick", overrides)
    (outcome,) = run_in_process([cell], ResultStore(root), module, SilentReporter())
    assert outcome.status == "done"
    log = [json.loads(line) for line in outcome.cell_dir.log_path.read_text().splitlines()]
    return outcome.cell_dir.load_checkpoint()["model"], log


def assert_trained(state: dict, log: list[dict], init: float) -> None:
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    w = state["blocks.0.attn.pe.w"]
    assert w.shape == (2, 2)  # past / future slopes per head (the CHE encoder is bidirectional)
    assert not torch.allclose(w, torch.full_like(w, init))  # the slopes learned


def test_plugin_by_path_trains(tmp_path: Path) -> None:
    plugin = tmp_path / "my_pe.py"
    plugin.write_text(EXAMPLE.read_text())
    spec = parse_pe_list(f"{plugin}:LinearBias:init=0.2,alibi")
    assert [s.label for s in spec] == ["linear-bias:init=0.2", "alibi"] and spec[0].options == {"init": 0.2}
    assert pe_class(spec[0]).name == "linear-bias"
    state, log = train_cell(f"{plugin}:LinearBias:init=0.2", tmp_path / "results")
    assert_trained(state, log, 0.2)
    with pytest.raises(LenbenchError, match="defines no 'Nope'"):
        pe_class(parse_pe_list(f"{plugin}:Nope")[0])
    with pytest.raises(LenbenchError, match="unknown option"):
        train_cell(f"{plugin}:LinearBias:slope=1", tmp_path / "bad")


def test_plugin_by_entry_point_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution, simulated: a module plus ``*.dist-info`` with ``entry_points.txt``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lenbench_demo_plugin.py").write_text(EXAMPLE.read_text())
    info = site / "lenbench_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lenbench-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lenbench.pe]\nlinear-bias = lenbench_demo_plugin:LinearBias\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(PES, "_items", dict(PES._items))  # restored afterwards
    monkeypatch.setattr(PES, "_plugins_loaded", False)
    assert "linear-bias" in PES.names()
    assert PES.get("linear-bias").__module__ == "lenbench_demo_plugin"
    state, log = train_cell("linear-bias:init=0.3", tmp_path / "results")
    assert_trained(state, log, 0.3)


def test_plugin_by_path_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lenbench run --pe path/to/file.py:ClassName`` trains and evaluates a cell, lenbench untouched."""
    from lenbench.cli import main

    plugin = tmp_path / "my_pe.py"
    plugin.write_text(EXAMPLE.read_text())
    out = tmp_path / "results"
    args = ["run", "--suite", "che", "--pe", f"{plugin}:LinearBias:init=0.2", "--task", "parity_check", "--seeds", "0",
            "--profile", "quick", "--steps", "4", "--batch-size", "8", "--test-lengths", "41", "--eval-samples", "8",
            "--layers", "1", "--dim", "16", "--heads", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    (done,) = out.rglob("DONE")
    state = torch.load(next(done.parent.rglob("*.pt")), map_location="cpu", weights_only=True)  # plain data
    w = state["model"]["blocks.0.attn.pe.w"]
    assert w.shape == (2, 2) and not torch.allclose(w, torch.full_like(w, 0.2))


def test_a_file_plugin_is_executed_once_per_process(tmp_path: Path) -> None:
    """``pe_class``, ``pe_identity`` and every later call reuse the first load of an unchanged file;
    the identity's code hash is that of the content executed."""
    import hashlib

    from lenbench.pe.registry import parse_pe_spec, pe_identity

    counter = tmp_path / "executed.txt"
    plugin = tmp_path / "counted_pe.py"
    plugin.write_text(f"with open({str(counter)!r}, 'a') as f:\n    f.write('x')\n\n" + EXAMPLE.read_text())
    spec = parse_pe_spec(f"{plugin}:LinearBias:init=0.2")
    classes = {pe_class(spec) for _ in range(5)}
    assert len(classes) == 1 and spec.label == "linear-bias:init=0.2"
    identity = pe_identity(spec)
    parse_pe_list(f"{plugin}:LinearBias,alibi")
    assert counter.read_text() == "x"  # executed once across all of the above
    assert identity["code"] == {"file": "counted_pe.py", "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest()}
