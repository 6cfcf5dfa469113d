"""The researcher's inner loop (issue 27): write a PE, run a few cells, change the PE, run again.

An edited plugin or a changed default is another cell, and the run says why it reruns; ``--rerun``
moves old folders aside; a wrong hook output is one line naming the hook and both shapes; the
manifest identifies the code without git; ``--dry-run`` estimates; Ctrl-C says how to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lenbench.cli import main
from lenbench.errors import LenbenchError
from lenbench.pe import PES, PositionalEncoding, parse_pe_spec, pe_class
from lenbench.pe.registry import pe_identity, resolve_pes

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''import torch
from lenbench.pe import PositionalEncoding, relative_distance


class LogBias(PositionalEncoding):
    name = "log-bias"

    def __init__(self, ctx, scale: float = 1.0, **options):
        super().__init__(ctx, **options)
        self.scale = float(scale)
        self.heads = ctx.heads

    def bias(self, q_pos, k_pos):
        d = relative_distance(q_pos, k_pos).abs()
        return (-self.scale * FORMULA).expand(self.heads, -1, -1)
'''

TINY = """suite: che
grid: {tasks: even_pairs, pes: alibi, seeds: 0}
profiles:
  tiny:
    model: {layers: 1, dim: 16, heads: 2, dropout: 0.0}
    train: {steps: 10, batch_size: 4, lr: 1.0e-2, max_length: 4, checkpoint_every: 5, log_every: 1}
    eval: {lengths: [5, 9], samples: 4, batch_size: 4, train_samples: 4}
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages hold long paths: keep rich from wrapping them in the captured output."""
    from lenbench import cli

    for console in (cli.out, cli.err):
        monkeypatch.setattr(console, "width", 1000)


def write_plugin(path: Path, formula: str) -> None:
    path.write_text(PLUGIN.replace("FORMULA", formula))


def tiny_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    return suite


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cell_folders(out: Path) -> list[Path]:
    return sorted(p for p in (out / "che").iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------ identity: plugin code and resolved options


def test_editing_a_plugin_reruns_its_cell_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin, out = tmp_path / "mype.py", tmp_path / "results"
    write_plugin(plugin, "torch.log1p(d)")
    args = ["run", "--suite", str(tiny_suite(tmp_path)), "--profile", "tiny", "--pe", f"{plugin}:LogBias:scale=2",
            "--out", str(out)]
    code, table, err = run(args, capsys)
    assert code == 0, err
    (first,) = cell_folders(out)
    assert first.name.startswith("even_pairs-log-bias-scale=2-s0-")  # declared name and options in the folder
    assert "log-bias:scale=2" in table  # ... and in the column
    records = json.loads((first / "metrics.json").read_text())
    assert {r["pe"] for r in records} == {"log-bias:scale=2"}
    config = yaml.safe_load((first / "config.yaml").read_text())
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert config["pe_identity"]["code"] == {"file": "mype.py", "sha256": digest}
    assert config["pe_identity"]["options"] == {"scale": 2}

    code, _, err = run(args, capsys)  # unchanged: skipped
    assert code == 0 and "skip even_pairs-log-bias:scale=2-s0: already done" in err

    write_plugin(plugin, "d")  # the edit of the issue: log1p(d) -> d
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert "already done" not in err
    assert f"rerun even_pairs-log-bias:scale=2-s0: plugin code changed since the stored cell ({first}" in err
    (second,) = cell_folders(out)
    assert second != first and (second / "DONE").exists()
    moved = list((out / "che" / ".superseded").iterdir())
    assert [p.name.rsplit("-", 2)[0] for p in moved] == [first.name]  # moved aside whole, never deleted
    assert (moved[0] / "DONE").exists() and (moved[0] / "metrics.json").exists()
    assert f"superseded {first} -> {moved[0]}" in err
    new = yaml.safe_load((second / "config.yaml").read_text())
    assert new["pe_identity"]["code"]["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest() != digest


def test_a_changed_default_is_another_cell_and_the_run_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every constructor default is in the config: ``fire`` under a new ``l0`` default is not reused."""
    from lenbench.execute.supersede import identity_change
    from lenbench.pe.bias import FIRE
    from lenbench.pe.registry import pe_entries
    from lenbench.results import config_hash

    (spec,) = resolve_pes("fire")
    before = pe_entries(spec)
    assert before["pe_identity"]["options"]["l0"] == 512.0
    defaults = FIRE.__init__.__defaults__
    assert defaults == (32, 0.1, 512.0, 1e-6)  # mlp_width, init_c, l0, eps
    monkeypatch.setattr(FIRE.__init__, "__defaults__", (32, 0.1, 64.0, 1e-6))  # an edit of FIRE's default l0
    after = pe_entries(spec)
    assert after["pe"] == before["pe"] == "fire" and config_hash(after) != config_hash(before)
    assert identity_change(before, after) == "PE options changed since the stored cell: l0 512.0 -> 64.0"
    assert identity_change({"pe": "fire"}, after).startswith("the stored cell was written before lenbench recorded")


def test_builtin_identity_resolves_every_default() -> None:
    (fire, dape) = resolve_pes("fire,dape-fire:l0=64")
    assert pe_identity(fire) == {
        "label": "fire", "class": "lenbench.pe.bias:FIRE",
        "options": {"mlp_width": 32, "init_c": 0.1, "l0": 512.0, "eps": 1e-06},
    }
    ident = pe_identity(dape)
    assert ident["options"]["l0"] == 64 and ident["options"]["variant"] == "concat_residual"
    assert ident["base"]["class"] == "lenbench.pe.bias:LeakyFIRE" and "code" not in ident


def test_an_installed_plugin_is_identified_by_its_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry-point plugin (a simulated installed distribution): name, version, files and module source."""
    site = tmp_path / "site"
    site.mkdir()
    module = site / "lenbench_id_plugin.py"
    write_plugin(module, "d")
    info = site / "lenbench_id_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lenbench-id-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[lenbench.pe]\nlog-bias-installed = lenbench_id_plugin:LogBias\n")
    (info / "RECORD").write_text("lenbench_id_plugin.py,,\nlenbench_id_plugin-0.3.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(PES, "_items", dict(PES._items))
    monkeypatch.setattr(PES, "_plugins_loaded", False)
    (spec,) = resolve_pes("log-bias-installed:scale=3")
    code = pe_identity(spec)["code"]
    files = hashlib.sha256(b"lenbench_id_plugin.py\0" + module.read_bytes()).hexdigest()  # the .py files of RECORD
    assert code == {"module": "lenbench_id_plugin", "distribution": "lenbench-id-plugin", "version": "0.3",
                    "files_sha256": files, "sha256": hashlib.sha256(module.read_bytes()).hexdigest()}
    assert pe_identity(spec)["options"] == {"scale": 3}


def test_a_file_plugin_loads_once_per_content(tmp_path: Path) -> None:
    plugin = tmp_path / "p.py"
    write_plugin(plugin, "d")
    spec = parse_pe_spec(f"{plugin}:LogBias")
    assert pe_class(spec) is pe_class(spec)  # one module per (path, content) in this process
    old = pe_class(spec)
    write_plugin(plugin, "torch.sqrt(d)")
    assert pe_class(spec) is not old and pe_class(spec).name == "log-bias"


def test_rerun_moves_the_old_folder_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    args = ["run", "--suite", str(tiny_suite(tmp_path)), "--profile", "tiny", "--out", str(out)]
    assert run(args, capsys)[0] == 0
    (first,) = cell_folders(out)
    stamp = (first / "DONE").stat().st_mtime_ns
    code, _, err = run([*args, "--force"], capsys)
    assert code == 0 and f"rerun even_pairs-alibi-s0: --rerun; the stored folder moved to {out}/che/.superseded/" in err
    (again,) = cell_folders(out)
    assert again.name == first.name and (again / "DONE").stat().st_mtime_ns != stamp
    (moved,) = (out / "che" / ".superseded").iterdir()
    assert (moved / "DONE").stat().st_mtime_ns == stamp  # the old result, whole
    code, table, _ = run(["status", "--out", str(out)], capsys)
    assert code == 0 and "1 cell(s) in" in table and ".superseded" not in table


# ------------------------------------------------------------------ the hook contract


WRONG_BIAS = '''import torch
from lenbench.pe import PositionalEncoding, relative_distance


class FlatBias(PositionalEncoding):
    name = "flat-bias"

    def bias(self, q_pos, k_pos):
        return -relative_distance(q_pos, k_pos).abs()  # [Nq, Nk]: no head axis
'''


def test_a_wrong_shaped_bias_is_one_line_on_every_backend(tmp_path: Path) -> None:
    from lenbench.model.attention import BACKENDS
    from lenbench.model.transformer import ModelConfig, Transformer

    plugin = tmp_path / "flat.py"
    plugin.write_text(WRONG_BIAS)
    spec = parse_pe_spec(f"{plugin}:FlatBias")
    for backend in BACKENDS:
        cfg = ModelConfig(vocab_size=5, out_size=2, dim=16, layers=1, heads=2, attention_backend=backend)
        with pytest.raises(LenbenchError) as info:
            Transformer(cfg, spec)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"PE 'flat-bias' ({plugin}:FlatBias): hook bias(q_pos, k_pos) returned shape [3, 5], "
                                  "expected [2, 3, 5] = [heads, queries, keys]"), message


def test_the_cli_refuses_a_wrong_shaped_bias_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's plugin trained to NaN on the small C kernel and normally without it: now neither runs."""
    plugin = tmp_path / "flat.py"
    plugin.write_text(WRONG_BIAS)
    out = tmp_path / "results"
    code, _, err = run(["run", "--suite", str(tiny_suite(tmp_path)), "--profile", "tiny", "--pe",
                        f"{plugin}:FlatBias", "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err  # refused while the grid expands, before any cell
    assert lines[0].startswith(f"lenbench: error: PE 'flat-bias' ({plugin}:FlatBias): hook bias(q_pos, k_pos) "
                               "returned shape [3, 5], expected [4, 3, 5] = [heads, queries, keys]")
    assert not out.exists()


class _Hooks(PositionalEncoding):
    name = "hooks-test"

    def __init__(self, ctx: Any, mode: str = "", **options: Any) -> None:
        super().__init__(ctx, **options)
        self.mode, self.heads = mode, ctx.heads

    def rotate(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> Any:
        return (q.double(), k) if self.mode == "rotate-dtype" else (q, k)

    def scores(self, s: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor:
        if self.mode == "scores-transposed":
            return s.transpose(-1, -2)
        if self.mode == "scores-nan":
            return s + float("nan")
        return s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))  # -inf is allowed

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x[:, :-1] if self.mode == "embed-short" else x


def test_each_hook_is_checked_for_shape_dtype_and_values() -> None:
    from lenbench.pe.base import PEContext
    from lenbench.pe.contract import check_hooks

    ctx = PEContext(dim=16, heads=2, causal=False, train_length=4, max_length=8)
    check_hooks(_Hooks(ctx), "'hooks-test'", 16, 2)  # every contract met, -inf scores included
    cases = {
        "rotate-dtype": "hook rotate(q, k, q_pos, k_pos) (q) returned dtype torch.float64, expected torch.float32",
        "scores-transposed": "hook scores(s, q, k, q_pos, k_pos) returned shape [2, 2, 5, 3], expected [2, 2, 3, 5]",
        "scores-nan": "hook scores(s, q, k, q_pos, k_pos) returned NaN or +inf at initialization",
        "embed-short": "hook embed(x, pos) returned shape [2, 4, 16], expected [2, 5, 16] = [batch, tokens, width]",
    }
    for mode, expected in cases.items():
        with pytest.raises(LenbenchError) as info:
            check_hooks(_Hooks(ctx, mode), "'hooks-test'", 16, 2)
        assert str(info.value).startswith(f"PE 'hooks-test': {expected}"), str(info.value)


def test_the_check_changes_neither_weights_nor_random_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """A randomized PE draws positions in the probe: the model and the draws after it are as without the check."""
    import lenbench.model.transformer as transformer

    cfg = transformer.ModelConfig(vocab_size=5, out_size=2, dim=16, layers=2, heads=2, max_length=64)

    def build() -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        torch.manual_seed(3)
        model = transformer.Transformer(cfg, parse_pe_spec("randomized-rope:max_position=64"))
        return model.state_dict(), torch.rand(4), model.pe_input.sample

    checked = build()
    monkeypatch.setattr(transformer, "check_hooks", lambda *args: None)
    unchecked = build()
    assert checked[0].keys() == unchecked[0].keys()
    assert all(torch.equal(checked[0][k], unchecked[0][k]) for k in checked[0])
    assert torch.equal(checked[1], unchecked[1]) and checked[2] is None and unchecked[2] is None


def test_every_registered_pe_meets_the_contract() -> None:
    from lenbench.model.transformer import ModelConfig, Transformer

    for causal in (False, True):
        cfg = ModelConfig(vocab_size=5, out_size=2, dim=32, layers=1, heads=4, causal=causal, max_length=64)
        for name in PES.names():
            Transformer(cfg, parse_pe_spec(name))


# ------------------------------------------------------------------ the C kernels check before reading


def test_the_kernels_refuse_wrong_inputs_before_touching_memory() -> None:
    import ctypes

    from lenbench import native
    from lenbench.model import dropout, small_attention
    from lenbench.pe import dape_fused, fire_kernel

    if not small_attention.available():
        pytest.skip("no C compiler: the kernels are not built")
    q = k = v = torch.randn(2, 2, 5, 8)
    with pytest.raises(LenbenchError, match=r"bias has shape \[5, 5\], expected \[\*, 5, 5\]"):
        small_attention.small_attention(q, k, v, torch.zeros(5, 5), 0.3)
    with pytest.raises(LenbenchError, match=r"expected \[1 or 2, 5, 5\]"):
        small_attention.small_attention(q, k, v, torch.zeros(3, 5, 5), 0.3)
    with pytest.raises(LenbenchError, match=r"k has shape \[2, 2, 5, 16\], expected \[2, 2, \*, 8\]"):
        small_attention.small_attention(q, torch.randn(2, 2, 5, 16), v, None, 0.3)
    # The C entry points themselves: impossible sizes return -2 with NULL pointers, so nothing was read.
    dims = (ctypes.c_int64 * 6)(2, 2, 5, 5, 12, 0)  # head dim 12: not a multiple of 8
    strides = (ctypes.c_int64 * 12)(*([80, 40, 8] * 4))
    lib = small_attention._library()
    assert lib.small_attention_forward(None, None, None, None, None, None, dims, strides, 1.0, 1) == -2
    if dape_fused.available():
        fused = dape_fused._library()
        bad = (ctypes.c_int64 * 13)(1, 2, 6, 5, 8, 4, 0, 0, 0, 0, 5, 16, 0)  # 6 queries over 5 keys
        assert fused.dape_forward(*([None] * 10), bad, 1.0, 0.01, 1) == -2
        h, n = 2, 5
        leaves = [torch.randn(1, h, n, 8) for _ in range(3)]
        with pytest.raises(LenbenchError, match=r"fc1 bias has shape \[3\], expected \[4\]"):
            dape_fused.fused_dape_attention(*leaves, torch.randn(h, 2 * n - 1), torch.randn(4, 2 * h), torch.randn(3),
                                            torch.randn(h, 4), torch.randn(h), causal=True, toeplitz=True)
    if fire_kernel.available():
        fc1, fc2 = torch.nn.Linear(1, 4), torch.nn.Linear(4, 2)
        tables = (torch.ones(10), torch.ones(10))
        with pytest.raises(LenbenchError, match="non-negative"):
            fire_kernel.fire_bias(torch.tensor([-1, 2]), torch.tensor([0, 1]), tables, fc1, fc2, 0.0, False)
        assert fire_kernel._library().fire_bias(None, -1, None, 3, *([None] * 6), 4, 2, 48, 0.0, 0, -1, None, 1) == -1
    if dropout.kernel_available():
        with pytest.raises(LenbenchError, match=r"residual has shape \[3\], expected \[4\]"):
            dropout.KernelDropout.apply(torch.ones(4), torch.ones(3), 0.5)
        assert dropout._library().dropout_forward(None, None, None, -1, 0, 1 << 31, 2.0, 1) == -1
    with pytest.raises(LenbenchError, match="must be torch.float32 on the CPU, got torch.float64"):
        native.require("test", "x", torch.zeros(2, dtype=torch.float64), (2,))


# ------------------------------------------------------------------ provenance without git


def test_the_manifest_of_a_non_editable_install_identifies_its_source(tmp_path: Path) -> None:
    """``pip install .`` (no git in the installed tree): the manifest still says which code ran."""
    from lenbench.results import source_hash

    target = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0:
        pytest.skip(f"pip could not build the wheel here: {built.stderr.strip().splitlines()[-1:]}")
    script = ("import json, lenbench; from lenbench.results import environment_manifest; "
              "print(json.dumps({'file': lenbench.__file__, **environment_manifest('cpu')}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    package = target / "lenbench"
    assert Path(manifest["file"]).resolve() == (package / "__init__.py").resolve()
    assert manifest["git"] == "unknown" and manifest["lenbench"] == "0.1.0"
    digest = hashlib.sha256()  # the documented formula, over the installed files
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".c") and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    assert manifest["source_sha256"] == digest.hexdigest() == source_hash()  # = this checkout's source


def test_the_report_names_the_code_and_says_when_cells_mix_it(tmp_path: Path) -> None:
    from lenbench.report.build import build_report

    root = tmp_path / "results"
    for i, (version, source) in enumerate((("0.1.0", "a" * 64), ("0.1.0", "a" * 64), ("0.2.0", "b" * 64))):
        cell = root / "che" / f"even_pairs-alibi-s{i}-000000000{i}"
        cell.mkdir(parents=True)
        (cell / "config.yaml").write_text(yaml.safe_dump({"suite": "che", "task": "even_pairs", "pe": "alibi",
                                                          "seed": i, "train": {"max_length": 40}}))
        (cell / "manifest.json").write_text(json.dumps({"lenbench": version, "source_sha256": source, "git": "unknown",
                                                        "device": "cpu", "torch": "2", "started": "2026-12-02"}))
        record = {"suite": "che", "task": "even_pairs", "pe": "alibi", "seed": i, "train_len": 40, "eval_len": None,
                  "metric": "score", "value": 0.5, "se": 0.01, "fit": True, "train_score": 1.0}
        (cell / "metrics.json").write_text(json.dumps([record]))
        (cell / "DONE").write_text("{}")
    report = build_report(root, tmp_path / "report", formats=["md"], plots=False)
    assert "source_sha256" in report.frame.columns
    intro = (tmp_path / "report" / "index.md").read_text()
    assert "lenbench 0.1.0 (source aaaaaaaaaaaa): 2 cells, 0.2.0 (source bbbbbbbbbbbb): 1 cells" in intro
    (warning,) = [w for w in report.warnings if "lenbench sources" in w]
    assert warning.startswith("che tables mix cells computed by 2 different lenbench sources")


# ------------------------------------------------------------------ dry run, progress weights, Ctrl-C, failures


def test_the_estimate_is_the_fitted_line_summed_over_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe whose call takes ``0.5 + 2 * cost`` seconds on a fake clock: the estimate is exact."""
    from lenbench.execute import estimate
    from lenbench.suites.base import Work

    clock = [0.0]
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: clock[0])

    def probe(work: Work) -> None:
        clock[0] += (0.5 if work.kind == "train" else 0.1) + 2.0 * work.cost

    works = [Work("train", 1, 4, 1.0, 10), Work("train", 2, 4, 3.0, 5), Work("eval", 9, 2, 4.0, 2)]
    expected = 10 * (0.5 + 2.0) + 5 * (0.5 + 6.0) + 2 * (0.1 + 8.0)
    assert estimate.fit_seconds(works, probe) == pytest.approx(expected)
    assert expected == 73.7 and estimate.duration(expected) == "1 min 14 s" and estimate.duration(3725) == "1 h 02 min"


def test_dry_run_lists_cells_and_estimates_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite, out = tiny_suite(tmp_path), tmp_path / "results"
    base = ["run", "--suite", str(suite), "--profile", "tiny", "--out", str(out)]
    assert run([*base, "--seeds", "0"], capsys)[0] == 0  # seed 0 done, seed 1 not
    code, table, err = run([*base, "--seeds", "0,1", "--dry-run"], capsys)
    assert code == 0, err
    assert "measuring cell shape 1/1 on this machine" in err  # seeds share one shape
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 4}
    assert "done" in rows["even_pairs-alibi-s0"] and rows["even_pairs-alibi-s0"].rstrip(" │").endswith("-")
    assert "pending" in rows["even_pairs-alibi-s1"] and " s " in rows["even_pairs-alibi-s1"] + " "
    assert "estimated time for the 1 cell(s) to compute:" in table and "how: measured now on this machine" in table
    assert len(list((out / "che").iterdir())) == 1  # nothing written for seed 1


def test_evaluation_progress_advances_by_forward_cost(tmp_path: Path) -> None:
    from rich.console import Console

    from lenbench.config import load_suite
    from lenbench.progress import RichReporter, forward_cost
    from lenbench.suites import SilentReporter, get_suite

    assert forward_cost(10, 16, 1, 2) == 10 * (12 * 16 + 2 * 10 + 2)  # hand-computed: 2140

    class Recorder(SilentReporter):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[Any] = []

        def eval_start(self, label: str, total: int, weights: Any = None) -> None:
            self.weights.append(list(weights))

    module = get_suite("che")
    (cell,) = module.expand(load_suite(str(tiny_suite(tmp_path))), "tiny", {})
    recorder = Recorder()
    from lenbench.execute.inprocess import run_in_process
    from lenbench.results import ResultStore

    run_in_process([cell], ResultStore(tmp_path / "r"), module, recorder)
    # even_pairs emits 1 output: N + 1 tokens; training lengths 1..4, then test lengths 5 and 9
    assert recorder.weights == [[forward_cost(n + 1, 16, 1, 2) for n in (1, 2, 3, 4)],
                                [forward_cost(6, 16, 1, 2), forward_cost(10, 16, 1, 2)]]
    reporter = RichReporter(Console(file=open(os.devnull, "w")))  # noqa: SIM115
    reporter.eval_start("x", 2, [1.0, 3.0])
    task = reporter.progress.tasks[-1]
    reporter.eval_step(1, "N=5", 0.5)
    assert (task.completed, task.total, task.fields["count"]) == (1.0, 4.0, "1/2")


def test_ctrl_c_says_where_the_cell_stopped_and_the_same_command_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lenbench.tasks.che import TASKS

    task_class = TASKS.get("even_pairs")
    original = task_class.sample
    calls = {"n": 0}

    def interrupted(self: Any, rng: Any, batch: int, length: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 8:  # the 8th training batch: steps 1..7 done, checkpoint at step 5
            raise KeyboardInterrupt
        return original(self, rng, batch, length)

    monkeypatch.setattr(task_class, "sample", interrupted)
    args = ["run", "--suite", str(tiny_suite(tmp_path)), "--profile", "tiny", "--out", str(tmp_path / "r")]
    code, _, err = run(args, capsys)
    assert code == 130
    assert ("interrupted even_pairs-alibi-s0 at training step 7/10; rerunning the same command resumes it from its "
            "checkpoint at step 5; finished cells are kept") in " ".join(err.split())
    assert "rerunning the same command resumes the others" in " ".join(err.split())
    monkeypatch.setattr(task_class, "sample", original)
    assert run(args, capsys)[0] == 0
    (done,) = (tmp_path / "r" / "che").glob("*/DONE")
    assert json.loads(done.read_text())["resumed_from"] == 5


def test_a_cell_whose_data_fails_is_failed_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lenbench.suites.ppl.run as ppl

    def unreachable(cfg: dict[str, Any]) -> Any:
        raise LenbenchError("cannot load hf:nobody/nothing: the hub is unreachable")

    monkeypatch.setattr(ppl, "load_cell_corpus", unreachable)
    out = tmp_path / "r"
    code, _, err = run(["run", "--suite", "ppl", "--profile", "quick", "--pe", "alibi", "--steps", "1",
                        "--out", str(out)], capsys)
    assert code == 2 and err.strip().endswith("lenbench: error: cannot load hf:nobody/nothing: the hub is unreachable")
    code, table, _ = run(["status", "--out", str(out)], capsys)
    assert code == 0 and "failed" in table and "hub is unreachable" in table and "0 pending" in table


# ------------------------------------------------------------------ CLI details


def test_cli_details(capsys: pytest.CaptureFixture[str]) -> None:
    from lenbench.results import source_hash

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith(f"lenbench 0.1.0 (source {source_hash()[:12]}, git ")
    code, _, err = run(["run", "--suite", "CHE"], capsys)
    assert code == 2 and "did you mean 'che'?" in err
    monkey_env = {**os.environ, "COLUMNS": "300"}
    helps = {}
    for args in (["--help"], ["run", "--help"]):
        done = subprocess.run([sys.executable, "-m", "lenbench", *args], capture_output=True, text=True,
                              env=monkey_env, cwd=ROOT, timeout=120)
        helps[args[0]] = " ".join(done.stdout.split())
    assert "--debug" in helps["--help"] and "exit code stays 2" in helps["--help"] and "--version" in helps["--help"]
    run_help = helps["run"]
    assert "(needs lenbench[tracking])" in run_help and "hf:<id>[:<config>][@<split>]" in run_help
    assert "bpe[:<V>]" in run_help
    assert "[default: the suite's grid]" in run_help and "[default: the profile's]" in run_help
    assert "--dry-run" in run_help and "--rerun" in run_help and "--force" in run_help
