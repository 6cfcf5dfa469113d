"""lenbench report and viz: tables from a synthetic store with known values, missing/failed cells,
renderers' structure, paired tests with known answers, figures, the CLI, and viz on a trained LM."""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lenbench.cli import main
from lenbench.config import load_suite
from lenbench.errors import LenbenchError
from lenbench.execute.inprocess import run_in_process
from lenbench.inspect import viz as V
from lenbench.present import render as R
from lenbench.present import stats as S
from lenbench.present.cells import BELOW
from lenbench.present.figures import pe_style
from lenbench.present.significance import significance_cells
from lenbench.present.table import Section, Table, TCell
from lenbench.report import build_report
from lenbench.report.build import report_figures
from lenbench.report.collect import collect
from lenbench.report.significance import significance
from lenbench.results import ResultStore
from lenbench.suites import SilentReporter, get_suite
from lenbench.suites.che.plots import che_grid_figure, che_task_figure
from lenbench.suites.che.tables import che_tables
from lenbench.suites.ppl.plots import ppl_figure
from lenbench.suites.ppl.tables import ppl_tables
from lenbench.suites.timing import config as timing_config
from lenbench.suites.timing import run as timing_suite
from lenbench.suites.timing.tables import timing_report_tables

SEEDS = (0, 1, 2)
CHE_LENGTHS = (41, 60)
# (task, pe) -> score per seed; None = that seed FAILED. A key absent = never run.
CHE_SCORES: dict[tuple[str, str], tuple[float | None, ...]] = {
    ("even_pairs", "alibi"): (0.50, 0.60, 0.70),
    ("even_pairs", "kerple"): (0.56, 0.65, 0.74),
    ("even_pairs", "dape-kerple"): (0.80, 0.90, 1.00),
    ("reverse_string", "alibi"): (0.40, None, 0.50),
    ("reverse_string", "kerple"): (None, None, None),
}
PPL: dict[str, tuple[dict[int, float], ...]] = {  # pe -> per seed {eval_len: ppl}
    "alibi": ({16: 10.0, 32: 20.0}, {16: 12.0, 32: 22.0}),
    "dape": ({16: 9.0, 32: 11.0}, {16: 10.0, 32: 12.5}),
}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lenbench-cache"))


def write_cell(store: ResultStore, suite: str, label: str, config: dict[str, Any],
               records: list[dict[str, Any]] | None, summary: dict[str, Any] | None = None) -> None:
    """A cell folder in the store's format: config + manifest, then metrics + DONE, or FAILED."""
    cell = store.cell(suite, label, config)
    cell.prepare(config, {"git": "abc123", "lenbench": "0.1.0", "torch": "2.13", "device": "cpu"})
    if records is None:
        cell.mark_failed("non-finite loss nan at step 7", 7)
    else:
        cell.write_metrics(records)
        cell.mark_done(summary or {})


def che_config(task: str, pe: str, seed: int, steps: int = 30) -> dict[str, Any]:
    return {"suite": "che", "task": task, "pe": pe, "seed": seed, "model": {"layers": 1},
            "train": {"steps": steps, "min_length": 1, "max_length": 40}, "eval": {"lengths": list(CHE_LENGTHS)}}


def write_che(root: Path) -> None:
    store = ResultStore(root)
    for (task, pe), scores in CHE_SCORES.items():
        for seed, score in zip(SEEDS, scores, strict=True):
            common = {"suite": "che", "task": task, "pe": pe, "seed": seed, "train_len": 40}
            records = None
            if score is not None:  # accuracies score -+ 0.1 average to the score
                records = [{**common, "eval_len": n, "metric": "accuracy", "value": score + d}
                           for n, d in zip(CHE_LENGTHS, (0.05, -0.05), strict=True)]
                records.append({**common, "eval_len": None, "metric": "score", "value": score})
            write_cell(store, "che", f"{task}-{pe}-s{seed}", che_config(task, pe, seed), records, {"score": score})


def write_ppl(root: Path) -> None:
    store = ResultStore(root)
    for pe, per_seed in [*PPL.items(), ("kerple", (None, None))]:
        for seed, values in enumerate(per_seed):
            config = {"suite": "ppl", "dataset": "toy", "pe": pe, "seed": seed, "train": {"length": 16},
                      "eval": {"lengths": [16, 32]}}
            common = {"suite": "ppl", "dataset": "toy", "pe": pe, "seed": seed, "train_len": 16}
            records = None if values is None else [
                {**common, "eval_len": n, "metric": m, "value": v * (1.1 if m == "ppl_all" else 1.0),
                 "n_sequences": 4, "concatenated": False}
                for n, v in values.items() for m in ("ppl_last256", "ppl_all")
            ]  # fmt: skip
            write_cell(store, "ppl", f"toy-{pe}-T16-s{seed}", config, records)


TIMING_MS = {("kerple", 512): 10.0, ("kerple", 1024): 20.0, ("dape-kerple", 512): 20.0}  # (dape, 1024): OOM


def timing_result(ms_by_pe: dict[str, float | None], backend: str = "explicit") -> dict[str, Any]:
    """A measured group as :func:`lenbench.suites.timing.measure.measure_group` returns it: two
    rounds of the same time per PE (None: the PE did not fit)."""
    pes = {pe: {"status": "oom", "reason": "needs 99 GiB"} if ms is None else
           {"status": "ok", "ms": ms, "iqr": 0.1, "times_ms": [ms, ms], "calls_per_repeat": 1, "warmup_calls": 1,
            "round_position": [0, 1], "peak_mem_mb": 5.0, "mem_method": "test", "backend": backend, "params": 1}
           for pe, ms in ms_by_pe.items()}
    return {"pes": pes, "rounds": 2, "budget_limited": False, "threads": 2,
            "embed_head": {"status": "ok", "ms": 4.0, "iqr": 0.0}}


def write_timing(root: Path) -> None:
    store = ResultStore(root)
    overrides = {"grid": {"pes": "kerple,dape-kerple"},
                 "profile": {"sizes": "350m", "lengths": "512,1024", "modes": "fwd", "layers": 1, "isolate": False,
                             "control": "none"}}
    for cell in timing_config.expand(load_suite("timing"), "quick", overrides):
        cfg = cell.config
        result = timing_result({pe: TIMING_MS.get((pe, cfg["eval_len"])) for pe in cfg["pes"]})
        cell_id = store.cell("timing", cell.label, cfg).cell_id
        write_cell(store, "timing", cell.label, cfg, timing_suite.group_records(cell.spec, result, cell_id))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_che(root)
    write_ppl(root)
    write_timing(root)
    return root


def texts(table: Table) -> dict[str, list[str]]:
    return {row[0].text: [c.text for c in row[1:]] for row in table.rows}


def bold(table: Table) -> dict[str, list[bool]]:
    return {row[0].text: [c.bold for c in row[1:]] for row in table.rows}


# --------------------------------------------------------------------------- the long table


def test_long_table_has_every_record_and_failed_cells_as_nan(results: Path) -> None:
    frame = collect(results).frame
    che = frame[frame["suite"] == "che"]
    failed = che[che["status"] == "failed"]
    assert len(failed) == 4 and failed["value"].isna().all()
    assert set(failed["reason"]) == {"non-finite loss nan at step 7"}
    assert len(che[che["status"] == "done"]) == 11 * 3  # 11 finished cells x (2 accuracies + score)
    for col in ("suite", "task", "dataset", "pe", "seed", "train_len", "eval_len", "metric", "value", "git"):
        assert col in frame.columns
    assert (frame[frame["suite"] == "timing"]["status"] == "oom").sum() == 2  # ms and peak memory
    # every shown uncertainty is a column: even_pairs/alibi scores 0.5, 0.6, 0.7 -> std 0.1,
    # 95% CI of the mean 0.6 -+ t_{0.975,2} 0.1 / sqrt(3) = 0.6 -+ 0.24841 (these cells carry no fit flag: all count)
    row = che[(che["task"] == "even_pairs") & (che["pe"] == "alibi") & (che["metric"] == "score")].iloc[0]
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert (row["seeds_n"], row["runs_n"], row["seeds_mean"]) == (3, 3, pytest.approx(0.6))
    assert row["seeds_std"] == pytest.approx(0.1) and row["all_runs_mean"] == pytest.approx(0.6)
    assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert che["fingerprint"].nunique() == 1 and frame[frame["suite"] == "timing"]["fingerprint"].isna().all()
    one = che[(che["task"] == "reverse_string") & (che["pe"] == "alibi") & (che["metric"] == "score")]
    assert set(one["seeds_n"]) == {2} and one["ci95_low"].notna().all()  # the failed seed is not counted
    assert frame[frame["suite"] == "timing"]["ci95_low"].isna().all() and "iqr" in frame.columns


def test_che_tables_hand_computed(results: Path) -> None:
    (mean, every, best, train), summary = che_tables(collect(results, "che").frame)
    assert mean.header == ["task", "chance", "majority", "alibi", "kerple", "dape-kerple"]
    assert [s.label for s in mean.sections] == ["Regular (R)", "Deterministic context-free (DCF)"]
    rows = texts(mean)
    # mean ± sample std (ddof 1): alibi 50/60/70 -> 60 ± 10; kerple 56/65/74 -> 65 ± 9; no majority records: —
    assert rows["even_pairs"] == ["50%", "—", "60.0 ± 10.0", "65.0 ± 9.0", "90.0 ± 10.0"]
    # bold from paired tests against the best (dape 80/90/100): alibi's difference is a constant -30 (no
    # variance: separated), kerple's -24/-25/-26 gives t = -43.3 (df 2), p = 5e-4, x2 (Holm) < 0.05: worse
    assert bold(mean)["even_pairs"] == [False, False, False, False, True]
    assert any(note.startswith("bold (per row): the best value and every value that a two-sided paired t-test")
               for note in mean.notes)
    assert texts(every)["even_pairs"][2:] == ["60.0 ± 10.0", "65.0 ± 9.0", "90.0 ± 10.0"] and not any(
        c.bold for r in every.rows for c in r)
    # one failed seed: 40/50 -> 45 ± 7.07; all failed -> FAILED; never run -> —
    assert rows["reverse_string"] == ["50%", "—", "45.0 ± 7.1 (1 FAILED)", "FAILED", "—"]
    assert bold(mean)["reverse_string"] == [False] * 5  # a single value is not "best"
    assert texts(best)["even_pairs"] == ["50%", "—", "70.0", "74.0", "100.0"]
    assert bold(best)["even_pairs"] == [False, False, False, False, True]  # the highest max
    assert texts(train)["even_pairs"][2:] == ["—", "—", "—"]  # these cells stored no in-distribution score
    row = summary[(summary["task"] == "reverse_string") & (summary["pe"] == "alibi")].iloc[0]
    assert (row["n"], row["failed"]) == (2, 1) and row["mean"] == pytest.approx(45.0)
    assert row["std"] == pytest.approx(np.std([40.0, 50.0], ddof=1))


def test_ppl_table_per_length_lowest_bold_and_failed_pe(results: Path) -> None:
    (table,), _ = ppl_tables(collect(results, "ppl").frame)
    assert table.header == ["PE", "16 (train)", "32"]
    rows = texts(table)
    assert rows["alibi"] == ["11.00 ± 1.41", "21.00 ± 1.41"]
    assert rows["dape-kerple"] == ["9.50 ± 0.71", "11.75 ± 1.06"]  # stored as `dape`: one label
    assert rows["kerple"] == ["FAILED", "FAILED"]
    # two paired seeds: no test is trusted, so only the lowest value of each column is bold
    assert bold(table)["dape-kerple"] == [True, True] and bold(table)["alibi"] == [False, False]
    assert any("n < 3: best only, applied here" in note for note in table.notes)


def test_ppl_tables_and_plots_are_per_protocol(results: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    shutil.copytree(results / "ppl", root / "ppl")
    store = ResultStore(root)
    for seed, value in enumerate((7.0, 8.0)):  # dape again, scored with the fixed-target protocol
        config = {"suite": "ppl", "dataset": "toy", "pe": "dape", "seed": seed, "train": {"length": 16},
                  "eval": {"lengths": [16, 32], "protocol": "fixed_targets"}}
        common = {"suite": "ppl", "dataset": "toy", "pe": "dape", "seed": seed, "train_len": 16,
                  "protocol": "fixed_targets", "n_sequences": 4, "concatenated": True}
        records = [{**common, "eval_len": n, "metric": "ppl_last256", "value": value} for n in (16, 32)]
        write_cell(store, "ppl", f"toy-dape-T16-s{seed}-fixed", config, records)
    frame = collect(root, "ppl").frame
    assert set(frame["protocol"]) == {"documents", "fixed_targets"}  # records without one: documents
    tables, summary = ppl_tables(frame)
    by_key = {t.key: t for t in tables}
    assert set(by_key) == {"ppl_toy_T16_documents", "ppl_toy_T16_fixed_targets"}
    fixed, old = by_key["ppl_toy_T16_fixed_targets"], by_key["ppl_toy_T16_documents"]
    assert fixed.title.endswith("fixed_targets protocol") and old.title.endswith("documents protocol")
    assert any("the same target tokens at every L" in note for note in fixed.notes)
    assert texts(fixed) == {"dape-kerple": ["7.50 ± 0.71", "7.50 ± 0.71"]}  # not pooled with the documents seeds
    assert texts(old)["dape-kerple"] == ["9.50 ± 0.71", "11.75 ± 1.06"]
    assert set(summary["protocol"]) == {"documents", "fixed_targets"}
    dape = frame[(frame["pe"] == "dape-kerple") & (frame["metric"] == "ppl_last256") & (frame["eval_len"] == 32)]
    assert set(zip(dape["protocol"], dape["seeds_mean"], strict=True)) == {("documents", 11.75), ("fixed_targets", 7.5)}
    saved = report_figures(frame, tmp_path / "plots")
    assert [p.stem for _, paths in saved["ppl"] for p in paths][::2] == ["ppl_toy_T16_documents",
                                                                          "ppl_toy_T16_fixed_targets"]
    assert "fixed_targets protocol" in ppl_figure(frame, "toy", 16, "fixed_targets").axes[0].get_title()
    with pytest.raises(LenbenchError, match="several protocols"):
        ppl_figure(frame, "toy", 16)


def test_timing_table_ratio_to_dape_kerple_and_oom(results: Path) -> None:
    (table, memory), summary = timing_report_tables(collect(results, "timing").frame)
    # the slice is labelled (1L), the estimate is "est.", and the Ratio header says which way it goes
    assert table.header[:5] == ["PE", "backend", "N=512 1L ms", "N=512 est. ms",
                                "N=512 Ratio PE/dape-kerple (95% CI)"]
    rows = texts(table)
    # est. = ms x 24 layers / 1 + 4 ms embedding-and-head; Ratio = the measured slices, paired per round
    # (10 / 20 in both rounds), never the estimates (244 / 484); at 1024 the reference is OOM: no Ratio
    assert rows["kerple"][1:] == ["10.0", "244", "0.50 (0.50–0.50)", "20.0", "484", "—"]
    assert rows["dape-kerple"][1:] == ["20.0", "484", "1 (reference)", "OOM", "OOM", "—"]
    assert rows["kerple"][0] == "explicit"  # the backend each PE ran with
    assert any("dape-kerple 32" in note for note in table.notes)  # D_DAPE
    assert any("no identical-work control" in note for note in table.notes)
    assert memory.key == "timing_memory_350m"
    assert memory.header == ["PE", "N=512 fwd MiB", "N=1024 fwd MiB"]
    assert texts(memory) == {"kerple": ["5.0", "5.0"], "dape-kerple": ["5.0", "OOM"]}
    row = summary[(summary["pe"] == "dape-kerple") & (summary["eval_len"] == 512)].iloc[0]
    assert (row["est_full_ms"], row["ratio"], row["peak_mem_mb"]) == (484.0, 1.0, 5.0)
    row = summary[(summary["pe"] == "kerple") & (summary["eval_len"] == 512)].iloc[0]
    assert (row["ratio"], row["ratio_ci95_low"], row["ratio_ci95_high"], row["rounds"]) == (0.5, 0.5, 0.5, 2)


def test_timing_report_labels_backend_policy_and_shows_the_estimate_check(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    medians = {(1, "fastest"): 10.0, (1, "paper"): 12.0, (2, "paper"): 25.0, (4, "paper"): 46.0}
    for policy, check in (("fastest", False), ("paper", True)):
        overrides = {"grid": {"pes": "kerple"}, "profile": {"sizes": "350m", "lengths": "512", "modes": "fwd",
                                                             "isolate": False, "backend": policy,
                                                             "check_estimate": check, "control": "none"}}
        for cell in timing_config.expand(load_suite("timing"), "quick", overrides):
            cfg = cell.config
            result = timing_result({"kerple": medians[(cfg["layers_timed"], policy)]}, backend=policy)
            result["pes"]["kerple"]["iqr"] = 0.25
            cell_id = store.cell("timing", cell.label, cfg).cell_id
            write_cell(store, "timing", cell.label, cfg, timing_suite.group_records(cell.spec, result, cell_id))
    tables, summary = timing_report_tables(collect(tmp_path).frame)
    by_key = {t.key: t for t in tables}
    assert {"timing_fwd_350m", "timing_fwd_350m_paper", "timing_memory_350m", "timing_memory_350m_paper",
            "timing_estimate_check"} == set(by_key)
    fast, paper = by_key["timing_fwd_350m"], by_key["timing_fwd_350m_paper"]
    assert "backend fastest" in fast.title and "backend paper" in paper.title and "cpu fp32" in paper.title
    assert "Table 1" in paper.notes[0] and "--backend paper" in fast.notes[0]
    assert texts(paper)["kerple"][1:3] == ["12.0", f"{12 * 24 + 4:.0f}"]  # the 1-block slice, not the checks
    check = [[c.text for c in row] for row in by_key["timing_estimate_check"].rows]
    # 1 -> 4 blocks: 12 x 4 = 48 predicted vs 46 measured: +4.3%; 1 -> 2: 24 vs 25: -4.0%; 2 -> 4: 50 vs 46: +8.7%
    assert [(r[5], r[6], r[-1]) for r in check] == [("1", "2", "-4.0%"), ("1", "4", "+4.3%"), ("2", "4", "+8.7%")]
    assert set(summary["backend_policy"]) == {"fastest", "paper"} and set(summary["iqr_ms"]) == {0.25}
    assert set(summary["precision"]) == {"fp32"}


# --------------------------------------------------------------------------- statistics


def test_t_distribution_known_values() -> None:
    assert S.t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-12)  # Cauchy: P(|T| > 1) = 1/2
    for t in (0.3, 2.0, 7.5):  # df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
        assert S.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert S.t_two_sided_p(1.959963984540054, 10**7) == pytest.approx(0.05, rel=1e-5)  # -> normal
    assert S.t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_paired_test_known_answers() -> None:
    a = [10.0, 12.0, 17.0]
    shifted = S.paired_test([x + 2.0 for x in a], a)  # a constant shift: sd 0 -> no test (not t = inf, p = 0)
    assert (shifted.diff, shifted.sd, shifted.t, shifted.p_t, shifted.p_sign_flip) == (2.0, 0.0, None, None, None)
    assert not shifted.testable and "constant difference" in shifted.note
    assert significance_cells(shifted, True, "a", "b")[-1].text == "no test"
    same = S.paired_test(a, a)
    assert not same.testable and same.t is None and "identical" in same.note
    test = S.paired_test([11.0, 14.0, 20.0], a)  # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3), df 2
    assert test.t == pytest.approx(2 * math.sqrt(3)) and test.df == 2 and test.d_z == pytest.approx(2.0)
    assert test.p_t == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-10)  # 0.0742
    assert test.p_sign_flip == pytest.approx(0.25)
    single = S.paired_test([1.0], [2.0])
    assert not single.testable and single.p_t is None and "no test possible" in single.note
    cells = significance_cells(single, True, "a", "b")
    assert cells[6].text.startswith("no test") and not any(re.fullmatch(r"[0-9.]+", c.text) for c in cells[5:8])


def test_holm_hand_computed() -> None:
    # m = 4 tests, p sorted 0.01 < 0.02 < 0.03 < 0.5: 4*0.01 = 0.04, 3*0.02 = 0.06, 2*0.03 = 0.06, 1*0.5 = 0.5;
    # step-down keeps them monotone; None (no test) is not counted in m
    adjusted = S.holm([0.03, None, 0.5, 0.01, 0.02])
    assert adjusted[1] is None
    assert adjusted[3] == pytest.approx(0.04) and adjusted[4] == pytest.approx(0.06)
    assert adjusted[0] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.5)
    assert S.holm([0.4, 0.3]) == [pytest.approx(0.6), pytest.approx(0.6)]  # 2*0.3 = 0.6; max(0.6, 1*0.4)
    assert S.holm([0.9, 0.8]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1


def test_t_quantile_inverts_the_t_test() -> None:
    assert S.t_quantile(0.05, 1) == pytest.approx(12.7062047, rel=1e-6)  # tan(pi/2 * 0.95)
    assert S.t_quantile(0.05, 2) == pytest.approx(4.3026527, rel=1e-6)  # df 2: t / sqrt(2 + t^2) = 0.95
    assert S.t_quantile(0.05, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), rel=1e-9)


def test_favours_only_below_005() -> None:
    # d = 1, 2, 3: t = 2 sqrt(3) (df 2), p = 1 - 2 sqrt(3)/sqrt(14) = 0.0742 -> n.s.
    test = S.paired_test([11.0, 14.0, 20.0], [10.0, 12.0, 17.0])
    assert significance_cells(test, True, "a", "b")[-1].text == "n.s."
    # df 2: p < 0.05 iff |t| > 4.3027. d = 5 + e, 5 - e, 5 (mean 5, sd e): t = 5 sqrt(3) / e
    e_at = 5 * math.sqrt(3) / S.t_quantile(0.05, 2)  # e where p = 0.05 exactly (2.0127)
    below = S.paired_test([5 + e_at * 0.99, 5 - e_at * 0.99, 5.0], [0.0, 0.0, 0.0])
    above = S.paired_test([5 + e_at * 1.01, 5 - e_at * 1.01, 5.0], [0.0, 0.0, 0.0])
    assert below.p_t is not None and 0.049 < below.p_t < 0.05 < above.p_t < 0.051  # type: ignore[operator]
    assert significance_cells(below, True, "a", "b")[-1].text == "a"
    assert significance_cells(below, False, "a", "b")[-1].text == "b"  # lower is better: b wins
    assert significance_cells(above, True, "a", "b")[-1].text == "n.s."
    # after Holm the decision uses the adjusted p: raw 0.0499 with p_holm 0.0998 is n.s.
    assert significance_cells(below, True, "a", "b", p_holm=2 * below.p_t)[-1].text == "n.s."  # type: ignore[operator]
    p49 = S.paired_test([1.0, 2.0, 0.5], [0.0, 0.0, 0.0])
    assert p49.p_t is not None and p49.p_t > 0.05 and significance_cells(p49, True, "a", "b")[-1].text == "n.s."
    one = S.paired_test([3.0], [1.0])  # one seed: never a winner
    assert significance_cells(one, True, "a", "b")[-1].text == "no test"


def test_paired_t_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
        ours, ref = S.paired_test(a, b), stats.ttest_rel(a, b)
        assert ours.t == pytest.approx(ref.statistic, rel=1e-9)
        assert ours.p_t == pytest.approx(ref.pvalue, rel=1e-8)


def test_pairs_and_compare_labels() -> None:
    labels = ["alibi", "kerple", "dape", "dape-alibi:hidden=64", "rope"]
    assert set(S.dape_pairs(labels)) == {("dape", "kerple"), ("dape-alibi:hidden=64", "alibi")}
    assert S.resolve_label("dape-alibi", labels) == "dape-alibi:hidden=64"
    assert S.parse_compare("dape-kerple:hidden=64,alibi") == ("dape-kerple:hidden=64", "alibi")
    with pytest.raises(Exception, match="not in the results"):
        S.resolve_label("fire", labels)


def test_significance_table_from_the_store(results: Path) -> None:
    frame = collect(results).frame
    table, tidy = significance(frame, compare=("dape", "alibi"))
    che = tidy[(tidy["suite"] == "che") & (tidy["a"] == "dape-kerple") & (tidy["b"] == "kerple")].iloc[0]
    t = 25 * math.sqrt(3)  # d = 24, 25, 26 (% points)
    assert che["t"] == pytest.approx(t) and che["p_t"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    ppl = tidy[(tidy["suite"] == "ppl") & (tidy["scope"] == "toy T=16 L=32")].iloc[0]
    assert (ppl["a"], ppl["b"], ppl["n"]) == ("dape-kerple", "alibi", 2)
    assert ppl["diff"] == pytest.approx(((11 - 20) + (12.5 - 22)) / 2)  # paired by seed
    # ppl at L=32: d = -9, -9.5 -> t = -37 (df 1), p = 0.0172; the table holds 4 tested rows (CHE even_pairs
    # and reverse_string x dape-kerple vs kerple are untestable or tested; see p_holm), so Holm multiplies
    # the smallest p by m: p_holm >= p_t, and "favours" follows p_holm, never the raw p
    assert table is not None and "p (Holm)" in table.header
    assert any("Holm" in note for note in table.notes)
    for row in tidy.itertuples():
        if row.p_holm is None or row.p_holm != row.p_holm:
            assert row.favours == "no test"
        else:
            assert row.p_holm >= row.p_t and row.favours == ("n.s." if row.p_holm >= 0.05 else row.favours)
            assert row.favours != "n.s." or row.p_holm >= 0.05


# --------------------------------------------------------------------------- renderers


def _split_md(line: str) -> list[str]:
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


@pytest.mark.parametrize("key", ["che_mean", "ppl_toy_T16", "timing_fwd_350m", "significance"])
def test_renderers_are_well_formed(results: Path, tmp_path: Path, key: str) -> None:
    report = build_report(results, tmp_path / "rep", plots=False, compare=("dape", "alibi"))
    table = next(t for t in report.tables if t.key == key)
    width = len(table.header)
    md = [ln for ln in R.markdown(table).splitlines() if ln.startswith("|")]
    assert all(ln.endswith("|") and len(_split_md(ln)) == width for ln in md)
    assert re.fullmatch(r"\|(:?---:?\|)+", md[1]) and len(md) == 2 + len(table.rows) + sum(
        1 for s in table.sections if s.label)
    tex = R.latex(table)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert len(re.findall(r"(?<!\\)\{", tex)) == len(re.findall(r"(?<!\\)\}", tex))
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    assert len(spec) == width and len(body) == 1 + len(table.rows) + sum(1 for s in table.sections if s.label)
    for ln in body:
        multi = re.match(r"\\multicolumn\{(\d+)\}", ln)
        assert int(multi.group(1)) == width if multi else len(re.findall(r"(?<!\\)&", ln)) == width - 1
    rows = list(csv.reader(io.StringIO(R.csv_text(table))))
    assert all(len(r) == width + 1 for r in rows) and len(rows) == 1 + len(table.rows)
    counter = _HtmlRows()
    counter.feed(R.html_table(table))
    assert counter.balanced and set(counter.widths) == {width}
    for ext in ("md", "csv", "tex", "html"):
        assert (tmp_path / "rep" / "tables" / f"{key}.{ext}").stat().st_size > 0


class _HtmlRows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []
        self.depth = 0
        self.balanced = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.widths.append(0)
        if tag in ("td", "th"):
            self.widths[-1] += int(dict(attrs).get("colspan") or 1)
        if tag in ("table", "tr", "td", "th"):
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("table", "tr", "td", "th"):
            self.depth -= 1
            self.balanced &= self.depth >= 0


def test_latex_escapes_special_characters() -> None:
    table = Table("x", "50% of a_b & c", ["a_b", "%"], [Section("R & D", [[TCell("x_1"), TCell("—")]])])
    tex = R.latex(table)
    assert r"a\_b" in tex and r"50\% of a\_b \& c" in tex and r"x\_1 & ---" in tex and r"R \& D" in tex
    assert R.tex_escape(f"79.4 ± 9.4 (2/2 fit) {BELOW}") == r"79.4 $\pm$ 9.4 (2/2 fit) $^\dagger$"


# --------------------------------------------------------------------------- the whole report and figures


def test_build_report_writes_everything(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = build_report(results, out)
    long = pd.read_parquet(out / "results_long.parquet")
    assert len(long) == len(pd.read_csv(out / "results_long.csv")) == len(report.frame)
    assert long[long["status"] == "failed"]["value"].isna().all()
    pngs = sorted(out.glob("plots/*.png"))
    assert {p.stem for p in pngs} == {"che_overview", "che_even_pairs", "che_reverse_string", "ppl_toy_T16",
                                      "timing_fwd"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert "<svg" in png.with_suffix(".svg").read_text()
    index = (out / "index.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", index):
        assert (out / link).exists(), link
    assert "60.0 ± 10.0" in index and "FAILED" in index and "![CHE overview" in index
    page = (out / "index.html").read_text()
    assert page.count("<table") == page.count("</table>") == len(report.tables)
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (out / src).exists()
    assert (out / "tables" / "che_summary.csv").exists() and (out / "tables" / "significance.csv").exists()


def test_report_inside_the_results_root_is_not_read_as_cells(results: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    shutil.copytree(results, root)
    build_report(root, root / "report", formats=["md"])  # as results/reference/run.sh does
    again = build_report(root, root / "report", formats=["md"], plots=False)
    assert not any("neither finished nor failed" in w for w in again.warnings), again.warnings
    index = (root / "report" / "index.md").read_text()
    assert "unfinished" not in index
    assert "measured on cpu; torch 2.13; cells started" in index and "git abc123" in index


def test_figures_use_one_colour_per_pe(results: Path) -> None:
    frame = collect(results).frame
    task_fig = che_task_figure(frame, "even_pairs")
    ppl_fig = ppl_figure(frame, "toy", 16)
    (ax,) = task_fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"alibi", "kerple", "dape-kerple", "chance"} <= set(lines)
    assert lines["chance"].get_ydata()[0] == pytest.approx(50.0)
    assert list(lines["dape-kerple"].get_ydata()) == pytest.approx([95.0, 85.0])  # mean over seeds, in %
    ppl_lines = {ln.get_label(): ln for ln in ppl_fig.axes[0].get_lines()}
    for fig_lines in (lines, ppl_lines):
        for label, line in fig_lines.items():
            if label in ("alibi", "kerple", "dape-kerple", "dape"):
                assert line.get_color() == pe_style(label)["color"]
    assert pe_style("dape")["color"] == pe_style("dape-kerple")["color"]  # an alias, one colour
    assert len({pe_style(p)["color"] for p in ("alibi", "kerple", "rope", "dape-kerple", "dape-alibi")}) == 5
    assert ppl_fig.axes[0].get_xscale() == "log" and ppl_fig.axes[0].get_yscale() == "log"
    (legend,) = ppl_fig.legends  # one legend, below the axes
    assert "kerple: FAILED" in [t.get_text() for t in legend.get_texts()]
    grid = che_grid_figure(frame, ["even_pairs", "reverse_string"])
    assert [a.get_title() for a in grid.axes if a.get_visible()] == ["even pairs", "reverse string"]


def test_duplicate_configs_are_reported(tmp_path: Path) -> None:
    write_cell(ResultStore(tmp_path), "che", "a", che_config("even_pairs", "alibi", 0, steps=10),
               [{"suite": "che", "task": "even_pairs", "pe": "alibi", "seed": 0, "train_len": 40,
                 "eval_len": None, "metric": "score", "value": 0.5}])
    write_cell(ResultStore(tmp_path), "che", "b", che_config("even_pairs", "alibi", 0, steps=20),
               [{"suite": "che", "task": "even_pairs", "pe": "alibi", "seed": 0, "train_len": 40,
                 "eval_len": None, "metric": "score", "value": 0.7}])
    report = build_report(tmp_path, tmp_path / "out", formats=["md"], plots=False)
    # 10 and 20 steps are two protocols: separate tables, never one cell of two "seeds"
    assert any("train.steps differ" in w and "never pooled" in w for w in report.warnings)
    means = [t for t in report.tables if t.key.startswith("che_mean_")]
    assert sorted(texts(t)["even_pairs"][2] for t in means) == ["50.0", "70.0"]


# --------------------------------------------------------------------------- CLI


def test_cli_report_prints_tables_and_errors_are_one_line(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--results", str(results), "--suite", "che", "--out", str(tmp_path / "r"),
                 "--format", "md,tex"]) == 0
    printed = capsys.readouterr()
    assert "90.0 ± 10.0" in printed.out and "45.0 ± 7.1 (1 FAILED)" in printed.out
    assert "index.md" in printed.err and not (tmp_path / "r" / "index.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (
        ["report", "--results", str(empty)],
        ["report", "--results", str(tmp_path / "missing")],
        ["report", "--results", str(results), "--format", "docx"],
        ["report", "--results", str(results), "--compare", "dape,fire"],
        ["viz", str(empty)],
    ):
        assert main([*args, "--out", str(tmp_path / "x")]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lenbench: error: "), (args, err)


# --------------------------------------------------------------------------- viz on a trained LM


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lm")
    mp = pytest.MonkeyPatch()
    mp.setenv("LENBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lenbench-cache"))
    corpus = tmp / "corpus"  # a small local corpus: loads in a fraction of the embedded default's time
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "(x)", "= 1;", "def", "return", "\n"]
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words, size=120)))
    profile = {"model": {"size": "tiny", "layers": 2, "dim": 32, "heads": 4},
               "train": {"length": 32, "steps": 3, "batch_size": 4, "checkpoint_every": 0},
               "eval": {"lengths": [32], "samples": 2, "min_sequences": 1},
               "data": {"validation_fraction": 0.3}}
    suite = get_suite("ppl")
    grid = {"pes": "dape,alibi,rope,dape-v2-kerple", "datasets": str(corpus)}
    cells = suite.expand(load_suite("ppl"), "quick", {"grid": grid, "profile": profile})
    outcomes = run_in_process(cells, ResultStore(tmp), suite, SilentReporter())
    mp.undo()
    assert all(o.status == "done" for o in outcomes)
    return {o.cell.config["pe"].split(":")[0]: o.cell_dir.path for o in outcomes}


@pytest.mark.parametrize(("pe", "terms"), [
    ("dape-kerple", ["logits q·k/√d", "base bias B", "DAPE f([S;B])", "total (pre-softmax)"]),  # `--pe dape`
    ("alibi", ["logits q·k/√d", "base bias B", "total (pre-softmax)"]),
    ("rope", ["logits q·k/√d"]),
    ("dape-v2-kerple", ["logits q·k/√d", "base bias B", "DAPE f([S;B])", "total (pre-softmax)"]),
])  # fmt: skip
def test_viz_panels_and_terms_reproduce_the_attention(
    trained: dict[str, Path], tmp_path: Path, pe: str, terms: list[str]
) -> None:
    fig, path = V.visualize(trained[pe], query=48, layer=-1, heads="0,2", out=tmp_path / f"{pe}.png")
    assert path.stat().st_size > 5000
    assert [ax.get_title() for ax in fig.axes] == [f"head {h}: {t}" for h in (0, 2) for t in terms]
    assert all(len(ax.get_lines()[0].get_xdata()) == 48 for ax in fig.axes)  # query 47 against keys 0..47
    # softmax(total) @ v for the last query equals what the layer's attention actually computed
    model = V.load(trained[pe]).model
    ids = torch.randint(0, model.cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    attn = model.blocks[1].attn
    with torch.no_grad():  # a few training steps leave logits ~0.01: enlarge q, k (and v) so they matter
        attn.qkv.weight.mul_(6.0)
    got: dict[str, torch.Tensor] = {}
    hooks = [attn.qkv.register_forward_hook(lambda m, i, o: got.__setitem__("qkv", o)),
             attn.out.register_forward_hook(lambda m, i, o: got.__setitem__("y", i[0]))]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    values = V.attention_terms(model, ids, 1)
    total = torch.from_numpy(values.get("total", values["logits"]))  # [H, N]
    v = got["qkv"].view(1, 40, 3, attn.heads, attn.head_dim)[0, :, 2]  # [N, H, d]
    expected = torch.einsum("hn,nhd->hd", torch.softmax(total, dim=-1), v).reshape(-1)
    assert torch.allclose(expected, got["y"][0, -1], atol=1e-5)


def test_viz_loads_a_model_file_and_rejects_bad_input(trained: dict[str, Path], tmp_path: Path) -> None:
    folder, file = V.load(trained["alibi"]).model.state_dict(), V.load(trained["alibi"] / "model.pt").model
    assert all(torch.equal(folder[k], v) for k, v in file.state_dict().items())
    _, bare = V.visualize(trained["alibi"], query=16, out=tmp_path / "no_suffix")
    assert bare == tmp_path / "no_suffix.png" and bare.stat().st_size > 5000  # the path it reports exists
    with pytest.raises(Exception, match="out of range"):
        V.visualize(trained["alibi"], query=16, layer=5)
    with pytest.raises(Exception, match="heads 0..3"):
        V.visualize(trained["alibi"], query=16, heads="7")
