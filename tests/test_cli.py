"""CLI: bad input gives exit code 2 and exactly one line on stderr, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenbench.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("suite: che\ngrid: {tasks: [a\nprofiles: {}\n")
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text(
        "suite: che\ngrid: {tasks: all}\nprofiles:\n  quick: {train: {steps: 1, stepz: 3}}\n"
    )
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    plugin = tmp_path / "broken_pe.py"
    plugin.write_text("def oops(:\n")
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    quick = ["--profile", "quick", "--out", str(tmp_path / "res")]
    return [
        (["run", "--pe", "alibii", *quick], "did you mean 'alibi'"),
        (["run", "--task", "parity", *quick], "unknown task"),
        (["run", "--suite", "chee"], "did you mean 'che'"),
        (["run", "--profile", "fast"], "no profile 'fast'"),
        (["run", "--suite", str(malformed)], "malformed YAML"),
        (["run", "--suite", str(unknown_key), "--profile", "quick"], "stepz"),
        (["run", "--suite", str(folder)], "is a directory"),
        (["run", "--seeds", "0,x", *quick], "seeds"),
        (["run", "--steps", "0", *quick], "steps must be >= 1"),
        (["run", "--steps", "-5", *quick], "steps must be >= 1"),
        (["run", "--steps", "ten", *quick], "--steps"),
        (["run", "--test-lengths", "10,41", *quick], "exceed the training maximum"),
        (["run", "--test-lengths", "0", *quick], "exceed the training maximum"),
        (["run", "--lr", "-1", *quick], "learning rate"),
        (["run", "--batch-size", "0", *quick], "batch size must be >= 1"),
        (["run", "--eval-samples", "0", *quick], "evaluation samples"),
        (["run", "--seeds", "-1", *quick], "seeds must be >= 0"),
        (["run", "--layers", "0", *quick], "layers must be >= 1"),
        (["run", "--dim", "0", *quick], "width (dim) must be >= 1"),
        (["run", "--heads", "3", *quick], "not divisible by 3 heads"),
        (["run", "--pe", f"{plugin}:MyPE", *quick], "syntax error"),
        (["run", "--pe", "dape:variant=nope", *quick], "variant"),
        (["run", "--pe", "alibi:foo=1", *quick], "unknown option"),
        (["run", "--profile", "quick", "--out", str(not_dir / "sub")], "cannot be created"),
        (["run", "--nonsense"], "No such option"),
        (["frobnicate"], "No such command"),
    ]


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, expected in bad_inputs(tmp_path):
        code, _, err = run_cli(args, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (args, err)
        assert len(lines) == 1, (args, err)
        assert "Traceback" not in err
        assert expected.lower() in lines[0].lower(), (args, lines[0])


def test_debug_shows_the_traceback_and_still_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "--suite", "chee", "--debug"], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "LenbenchError" in err
    last = err.strip().splitlines()[-1]
    assert last == "lenbench: error: unknown suite 'chee'; did you mean 'che'? (known: che, ppl, timing)"


def test_unknown_profile_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "--profile", "quik"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "did you mean 'quick'" in err


def test_list_shows_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for needle in ("dape-kerple", "alibi", "parity_check", "regular", "50.0%", "quick", "paper", "6.7b"):
        assert needle in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    from lenbench.pe import PES
    from lenbench.tasks.che import TASKS

    for name in PES.names():
        assert name in rows, name  # every PE, with its one-line description
    for name in TASKS.names():
        task = TASKS.get(name)()
        assert task.level in rows[name] and f"{100 * task.chance:.1f}%" in rows[name], rows[name]
    assert "20.0%" in rows["bucket_sort"] and "33.3%" in rows["binary_addition"] and "dcf" in rows["solve_equation"]
    assert "paper, quick" in rows["che"]
    assert all(size in rows for size in ("tiny", "125m", "350m", "2.7b", "6.7b"))


def test_list_prints_descriptions_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(["list"], capsys)
    assert "[sin; cos] layout" in out


AUTO_SUITE = """suite: che
grid: {tasks: even_pairs, pes: nope, seeds: 0}
profiles:
  paper:
    model: {layers: 5, dim: 256, heads: 8}
  quick:
    model: {layers: 2, dim: 16, heads: 2, dropout: 0.0}
    train: {steps: 50, batch_size: 8, lr: 1.0e-3, max_length: 4, checkpoint_every: 0, log_every: 1}
    eval: {lengths: [5, 9], samples: 8, batch_size: 8}
"""


def test_profile_auto_says_which_and_flags_override_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    import yaml

    from lenbench.config import choose_profile, load_suite

    suite = tmp_path / "auto.yaml"
    suite.write_text(AUTO_SUITE)
    chosen = choose_profile(load_suite(str(suite)), "auto", cuda=True)
    assert chosen == ("paper", "--profile auto chose 'paper' (CUDA available)")
    flags = ["--steps", "3", "--batch-size", "2", "--lr", "0.01", "--test-lengths", "6,7", "--eval-samples", "2",
             "--layers", "1", "--dim", "8", "--heads", "2", "--task", "parity_check", "--pe", "alibi", "--seeds", "0,1"]
    args = ["run", "--suite", str(suite), "--profile", "auto", *flags, "--out", str(tmp_path / "r")]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    if not torch.cuda.is_available():
        assert "--profile auto chose 'quick' (no CUDA device)" in err
    configs = [yaml.safe_load(p.read_text()) for p in sorted((tmp_path / "r" / "che").glob("*/config.yaml"))]
    assert sorted((c["task"], c["pe"], c["seed"]) for c in configs) == [("parity_check", "alibi", s) for s in (0, 1)]
    for c in configs:
        assert (c["train"]["steps"], c["train"]["batch_size"], c["train"]["lr"]) == (3, 2, 0.01)
        assert (c["eval"]["lengths"], c["eval"]["samples"]) == ([6, 7], 2)
        assert c["model"] == {"layers": 1, "dim": 8, "heads": 2, "dropout": 0.0}
        assert c["train"]["max_length"] == 4  # what no flag names stays as the profile says
    assert "parity_check" in out and "alibi" in out  # the score table


def test_set_overrides_any_suite_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    suite = tmp_path / "auto.yaml"
    suite.write_text(AUTO_SUITE)
    args = ["run", "--suite", str(suite), "--profile", "quick", "--steps", "2", "--set", "profile.train.grad_clip=0.5",
            "--set", "profile.model.dropout=0.2", "--set", "grid.seeds=[3]", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (config,) = [yaml.safe_load(p.read_text()) for p in (tmp_path / "r" / "che").glob("*/config.yaml")]
    assert (config["train"]["grad_clip"], config["model"]["dropout"], config["seed"]) == (0.5, 0.2, 3)
    for bad, needle in (("train.lr=1", "--set takes"), ("profile.train.lr", "--set takes"),
                        ("profile.train.lrr=1", "lrr"), ("profile.train.lr=[1", "not valid YAML")):
        code, _, err = run_cli(["run", "--suite", str(suite), "--profile", "quick", "--set", bad], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (bad, err)


TINY_SUITE = """suite: che
grid: {tasks: even_pairs, pes: alibi, seeds: 0}
profiles:
  tiny:
    model: {layers: 1, dim: 16, heads: 2, dropout: 0.0}
    train: {steps: 4, batch_size: 4, max_length: 4, checkpoint_every: 2, log_every: 1}
    eval: {lengths: [5], samples: 4, batch_size: 4}
"""


def corrupted_and_data_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """Bad files met at run time: corrupted checkpoint and DONE marker, empty or too-short datasets."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    cases: list[tuple[list[str], str]] = []
    for broken, expected in (("checkpoint.pt", "corrupted checkpoint"), ("DONE", "corrupted DONE")):
        out = tmp_path / f"res-{broken}"
        args = ["run", "--suite", str(suite), "--profile", "tiny", "--out", str(out)]
        assert main(args) == 0
        (cell,) = (out / "che").iterdir()
        if broken == "checkpoint.pt":
            (cell / "DONE").unlink()
        (cell / broken).write_bytes(b"\x00garbage")
        cases.append((args, expected))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"{i}.txt").write_text(f"document {i} is short.\n")
    ppl = ["run", "--suite", "ppl", "--profile", "quick", "--pe", "alibi", "--steps", "1", "--out", str(tmp_path / "p")]
    cases.append(([*ppl, "--dataset", str(empty)], "is empty"))
    cases.append(([*ppl, "--dataset", str(docs / "*.txt")], "fewer than one sequence"))
    return cases


def test_corrupted_files_and_bad_datasets_exit_2_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = corrupted_and_data_inputs(tmp_path)
    capsys.readouterr()
    for args, expected in cases:
        code, _, err = run_cli(args, capsys)
        errors = [line for line in err.splitlines() if line.startswith("lenbench: error")]
        assert code == 2, (args, err)
        assert len(errors) == 1 and expected in errors[0], (args, err)
        assert "Traceback" not in err
