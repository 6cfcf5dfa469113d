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
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("--profile")]
        assert code == 2, (args, err)
        assert len(lines) == 1, (args, err)
        assert "Traceback" not in err
        assert expected.lower() in lines[0].lower(), (args, lines[0])


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from lenbench.errors import LenbenchError

    with pytest.raises(LenbenchError):
        main(["run", "--suite", "chee", "--debug"])


def test_list_shows_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for needle in ("dape-kerple", "alibi", "parity_check", "regular", "50.0%", "quick", "paper", "6.7b"):
        assert needle in out


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
