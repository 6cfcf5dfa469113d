"""Results are safe to open (issue 26 item 5): ``.pt`` files hold tensors and plain data, are read with
``weights_only=True``, and a file whose pickle would run code is refused with one line, before it runs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from lenbench.errors import LenbenchError
from lenbench.results import CellDir, ResultStore, UnsafeFile, safe_torch_load
from lenbench.suites.ppl import run as ppl

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this calls ``os.system``: what a hostile ``model.pt`` would do under ``weights_only=False``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def hostile_file(path: Path, marker: Path, wrap: bool = True) -> Path:
    buf = io.BytesIO()
    torch.save({"model_config": {}, "pe": "alibi", "state_dict": Payload(marker)} if wrap else Payload(marker), buf)
    path.write_bytes(buf.getvalue())
    return path


def test_a_model_file_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lenbench.cli import main

    marker = tmp_path / "ran"
    cell = tmp_path / "cell"
    cell.mkdir()
    hostile_file(cell / "model.pt", marker)
    with pytest.raises(UnsafeFile, match=r"refusing to load .*model.pt: the model file would import posix.system"):
        ppl.load_model(CellDir(cell))
    assert main(["viz", str(cell / "model.pt"), "--query", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lenbench: error: refusing to load")
    assert not marker.exists()  # nothing in the pickle ran
    with pytest.raises(UnsafeFile):  # the insecure load the results code used before would have run it
        safe_torch_load(hostile_file(tmp_path / "bare.pt", marker, wrap=False))
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_on_resume(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cell = ResultStore(tmp_path).cell("che", "x", {})
    cell.path.mkdir(parents=True)
    hostile_file(cell.checkpoint_path, marker)
    with pytest.raises(UnsafeFile, match="checkpoint would import posix.system"):
        cell.load_checkpoint()
    assert not marker.exists()
    cell.checkpoint_path.write_bytes(b"garbage")
    with pytest.raises(LenbenchError, match="corrupted checkpoint .*delete it to restart the cell"):
        cell.load_checkpoint()


def test_training_checkpoints_are_plain_data(tmp_path: Path) -> None:
    """A real checkpoint (model, AdamW, scheduler, every RNG) loads with weights_only=True."""
    from tiny_runs import run_tiny_che

    run_tiny_che("kerple", tmp_path / "results", steps=2, batch=4, samples=4)
    (checkpoint,) = (tmp_path / "results").rglob("checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 2 and {"model", "optimizer", "scheduler", "numpy", "python", "torch"} <= set(state)


def test_model_files_written_before_model_json_still_load(tmp_path: Path) -> None:
    """lenbench before issue 26 wrote one ``model.pt`` holding its config (plain data) beside the weights:
    such a file is read safely (``weights_only=True``) and rebuilt whole."""
    from dataclasses import asdict

    from lenbench.model.transformer import ModelConfig, Transformer
    from lenbench.pe.registry import parse_pe_spec

    cfg = ModelConfig(vocab_size=64, out_size=64, dim=32, layers=1, heads=4, causal=True, train_length=16,
                      max_length=64)
    made = Transformer(cfg, parse_pe_spec("alibi"))
    legacy = {"model_config": asdict(cfg), "pe": "alibi", "tokenizer": "bytes",
              "state_dict": {k: v.detach().clone() for k, v in made.state_dict().items()}}
    cell = tmp_path / "cell"
    cell.mkdir()
    torch.save(legacy, cell / "model.pt")
    meta, weights = ppl.read_model_file(cell / "model.pt")
    assert set(meta) == {"model_config", "pe", "tokenizer"} and meta["pe"] == "alibi"
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    model = ppl.load_model(CellDir(cell))
    for key, value in made.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
