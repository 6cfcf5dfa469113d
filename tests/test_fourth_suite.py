"""A fourth suite is its own few lines plus one registration line (issue 28).

``ToySuite`` below is a complete suite: one cell per seed, one metric (``answer``, higher is
better), one table. Registering it with ``SUITES.add`` is the only change; then the generic layers
run it, show its status and report it, through the same commands as the built-in suites, and
nothing in ``execute/``, ``report/`` or ``cli.py`` knows its name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lenbench import cli
from lenbench.cli import main
from lenbench.config import SuiteFile, parse_int_list
from lenbench.present.table import Section, Table, TCell
from lenbench.suites import SUITES, get_suite
from lenbench.suites.base import Cell, Metric, RunContext, SuiteBase

LENBENCH = Path(cli.__file__).parent


@dataclass(frozen=True)
class ToyConfig:
    seed: int
    answer: float

    def to_dict(self) -> dict[str, Any]:
        return {"suite": "toy", "seed": self.seed, "answer": self.answer}


class ToySuite(SuiteBase):
    name = "toy"
    title = "Toy: the answer"
    metrics = (Metric("answer", True, "what the cell computed"),)

    def expand(self, suite_file: SuiteFile, profile: str, overrides: dict[str, Any]) -> list[Cell]:
        seeds = parse_int_list(overrides.get("grid", {}).get("seeds", suite_file.grid["seeds"]), "seeds")
        answer = float(suite_file.profiles[profile]["answer"])
        return [Cell("toy", f"toy-s{seed}", ToyConfig(seed, answer)) for seed in seeds]

    def run_cell(self, cell: Cell, cell_dir: Any, ctx: RunContext) -> dict[str, Any]:
        value = cell.spec.answer + cell.spec.seed
        ctx.reporter.message(f"{cell.label}: {value}")
        cell_dir.write_metrics([{"suite": "toy", "pe": None, "seed": cell.spec.seed, "eval_len": None,
                                 "metric": "answer", "value": value}])
        return {"answer": value}

    def cell_keys(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def tables(self, frame: pd.DataFrame, options: Mapping[str, Any]) -> tuple[list[Table], pd.DataFrame]:
        rows = frame[(frame["suite"] == "toy") & (frame["metric"] == "answer")].sort_values("seed")
        if rows.empty:
            return [], pd.DataFrame()
        body = [[TCell(str(int(r.seed))), TCell(f"{r.value:.1f}")] for r in rows.itertuples()]
        return [Table("toy_answer", "Toy: the answer per seed", ["seed", "answer"], [Section(None, body)])], rows

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        return f"answer {summary['answer']:.1f}"


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[Path]:
    SUITES.add("toy", ToySuite())  # the one registration line
    suite_file = tmp_path / "toy.yaml"
    suite_file.write_text("suite: toy\ndescription: the answer\ngrid:\n  seeds: 0-1\n"
                          "profiles:\n  quick:\n    answer: 42\n  paper:\n    answer: 42\n")
    yield suite_file
    SUITES._items.pop("toy", None)


def test_a_fourth_suite_runs_reports_and_shows_status_through_the_generic_layers(
    toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, report = tmp_path / "results", tmp_path / "report"
    assert main(["run", "--suite", str(toy), "--out", str(results)]) == 0
    assert get_suite("toy").title == "Toy: the answer"
    printed = capsys.readouterr().out
    assert "Toy: the answer" in printed and "per seed" in printed  # run closes with the suite's own table
    assert re.search(r"│ 1\s+│\s+43\.0 │", printed)  # seed 1: 42 + 1

    (results / "toy" / sorted(p.name for p in (results / "toy").iterdir())[0] / "DONE").unlink()
    assert main(["status", "--out", str(results)]) == 0  # no flags: the grid manifest knows the cells
    status = capsys.readouterr().out
    assert "1 done" in status and "1 pending" in status and "answer 4" in status

    assert main(["run", "--suite", str(toy), "--out", str(results)]) == 0
    assert main(["report", "--results", str(results), "--out", str(report), "--format", "md,csv"]) == 0
    capsys.readouterr()
    assert "| 1 | 43.0 |" in (report / "tables" / "toy_answer.md").read_text()
    assert "## Toy: the answer" in (report / "index.md").read_text()


def test_the_generic_layers_name_no_suite() -> None:
    """execute/, report/ and cli.py hold no suite name in their code (docstrings may give examples)."""
    names = re.compile(r"""["'](che|ppl|timing)["']""")
    files = [LENBENCH / "cli.py", *(LENBENCH / "execute").glob("*.py"), *(LENBENCH / "report").glob("*.py")]
    found = [f"{f.name}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
             if names.search(line)]
    assert found == []
