"""The report's statistical rules (docs/statistics.md, issue 24) on result folders fabricated from the
committed reference cells: a reference cell is copied and its seed, rate, scores and fit flag set.

Three learning rates, a seed that did not fit, two seeds against three, one seed, a protocol mix,
the dape alias, the majority baseline, the papers' statistic, the plots and `run`'s closing tables."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lenbench.cli import main
from lenbench.pe.registry import canonical_pe_label, parse_pe_spec, resolve_pes
from lenbench.present import population as POP
from lenbench.present import stats as S
from lenbench.present.cells import BELOW
from lenbench.present.figures import pe_style
from lenbench.present.table import Table, TCell
from lenbench.report import build_report
from lenbench.report import protocol as PR
from lenbench.report.build import report_figures
from lenbench.report.collect import collect
from lenbench.report.significance import significance
from lenbench.suites.che.plots import che_task_figure
from lenbench.suites.che.tables import che_tables
from lenbench.suites.ppl.tables import ppl_tables

REF = Path(__file__).resolve().parents[1] / "results" / "reference"
RATES = (1e-4, 3e-4, 5e-4)


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        config = config[key]
    config[last] = value


def fabricate(root: Path, name: str, *, seed: int, score: float, train: float, lr: float = 1e-3, pe: str = "kerple",
              task: str = "even_pairs", changes: dict[str, Any] | None = None,
              started: str = "2026-12-02T18:00:00Z") -> Path:
    """A copy of the reference ``<task>-kerple-s0`` cell as (pe, seed, lr), every test accuracy set to
    ``score`` and every in-distribution accuracy to ``train`` (the fit flag follows the threshold)."""
    source = next((REF / "che").glob(f"{task}-kerple-s0-*"))
    dst = root / "che" / name
    shutil.copytree(source, dst)
    config = yaml.safe_load((dst / "config.yaml").read_text())
    config.update(seed=seed, pe=pe)
    config["train"]["lr"] = lr
    for path, value in (changes or {}).items():
        _set(config, path, value)
    (dst / "config.yaml").write_text(yaml.safe_dump(config))
    fit = train >= config["eval"]["fit_threshold"]
    records = json.loads((dst / "metrics.json").read_text())
    for r in records:
        r.update(seed=seed, lr=lr, pe=pe)
        if r["metric"] in ("accuracy", "score"):
            r["value"] = score
        elif r["metric"] in ("train_accuracy", "train_score"):
            r["value"] = train
        if "fit" in r:
            r.update(fit=fit, train_score=train)
    (dst / "metrics.json").write_text(json.dumps(records))
    done = json.loads((dst / "DONE").read_text())
    (dst / "DONE").write_text(json.dumps({**done, "score": score, "train_score": train, "fit": fit}))
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**manifest, "started": started}))
    return dst


def fabricate_ppl(root: Path, name: str, *, seed: int, values: dict[int, float], pe: str = "kerple",
                  lengths: list[int] | None = None, lr: float = 1e-3) -> Path:
    """A copy of the reference ppl kerple cell (model weights left out) with its perplexities set."""
    source = next((REF / "ppl").glob("default-kerple-T128-s0-*"))
    dst = root / "ppl" / name
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns("model.pt"))
    config = yaml.safe_load((dst / "config.yaml").read_text())
    config.update(seed=seed, pe=pe)
    config["train"]["lr"] = lr
    if lengths is not None:
        config["eval"]["lengths"] = lengths
    (dst / "config.yaml").write_text(yaml.safe_dump(config))
    records = [dict(r, seed=seed, pe=pe, value=values[r["eval_len"]])
               for r in json.loads((dst / "metrics.json").read_text()) if r["eval_len"] in values]
    (dst / "metrics.json").write_text(json.dumps(records))
    return dst


def row(table: Table, task: str) -> dict[str, TCell]:
    """A table row as {column header: cell}."""
    (found,) = [r for r in table.rows if r[0].text == task]
    return dict(zip(table.header, found, strict=True))


def by_key(tables: list[Table]) -> dict[str, Table]:
    return {t.key: t for t in tables}


# --------------------------------------------------------------------------- three rates


@pytest.fixture(scope="module")
def three_rates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """even_pairs, kerple and dape-kerple, 3 rates x 3 seeds. DAPE-Kerple learns best at 1e-4 (train
    100%) and Kerple at 5e-4; DAPE's 3e-4 runs score higher on the test lengths (99.5) but lower in
    distribution (95%): a rate chosen on the test score would pick it."""
    root = tmp_path_factory.mktemp("three_rates")
    design = {  # (pe, lr) -> (test scores per seed, in-distribution score)
        ("dape-kerple", 1e-4): ((0.98, 0.99, 0.97), 1.00),
        ("dape-kerple", 3e-4): ((0.995, 0.995, 0.995), 0.95),
        ("dape-kerple", 5e-4): ((0.50, 0.50, 0.50), 0.92),
        ("kerple", 1e-4): ((0.50, 0.51, 0.52), 0.93),
        ("kerple", 3e-4): ((0.55, 0.55, 0.55), 0.94),
        ("kerple", 5e-4): ((0.985, 0.99, 0.98), 1.00),
    }
    for (pe, lr), (scores, train) in design.items():
        for seed, score in enumerate(scores):
            fabricate(root, f"even_pairs-{pe}-lr{lr:g}-s{seed}", seed=seed, score=score, train=train, lr=lr, pe=pe)
    return root


def test_rate_is_chosen_in_distribution_and_named(three_rates: Path) -> None:
    frame = collect(three_rates).frame
    tables, summary = che_tables(frame)
    mean = by_key(tables)["che_mean"]
    cells = row(mean, "even_pairs")
    # DAPE at 1e-4 (in-distribution 100%), not 3e-4 (95% in distribution, 99.5 on the test lengths)
    assert cells["dape-kerple"].text == "98.0 ± 1.0 (3/3 fit) @0.0001"
    assert cells["kerple"].text == "98.5 ± 0.5 (3/3 fit) @0.0005"
    assert any("never on the test lengths" in n for n in mean.notes)
    chosen = summary[summary["chosen_lr"]]
    assert sorted(zip(chosen["pe"], chosen["lr"], strict=True)) == [("dape-kerple", 1e-4), ("kerple", 5e-4)]
    # the in-distribution and all-runs tables show the same chosen rate
    assert row(by_key(tables)["che_train"], "even_pairs")["dape-kerple"].text == "100.0 ± 0.0 (3/3 fit) @0.0001"


def test_significance_pairs_runs_of_each_pe_s_chosen_rate(three_rates: Path) -> None:
    table, tidy = significance(collect(three_rates).frame)
    (r,) = tidy.to_dict("records")
    assert (r["a"], r["b"], r["lr_a"], r["lr_b"]) == ("dape-kerple", "kerple", 1e-4, 5e-4)
    assert table is not None and table.header[3:5] == ["lr A", "lr B"]
    # d = 98 - 98.5, 99 - 99, 97 - 98 = -0.5, 0, -1: mean -0.5, sd 0.5, t = -sqrt(3), df 2
    assert (r["mean_a"], r["mean_b"]) == (pytest.approx(98.0), pytest.approx(98.5))
    assert r["t"] == pytest.approx(-math.sqrt(3)) and r["df"] == 2
    assert r["p_t"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), rel=1e-9)  # df 2: 1 - t/sqrt(2 + t^2)
    assert r["favours"] == "n.s."


def test_bold_and_plot_follow_the_chosen_rates(three_rates: Path) -> None:
    frame = collect(three_rates).frame
    mean = by_key(che_tables(frame)[0])["che_mean"]
    cells = row(mean, "even_pairs")
    assert cells["kerple"].bold and cells["dape-kerple"].bold  # p = 0.225 with 3 pairs: not separable
    (ax,) = che_task_figure(frame, "even_pairs").axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    test_part = [y for x, y in zip(*lines["dape-kerple"].get_data(), strict=True) if x > 40]
    assert test_part == pytest.approx([98.0] * len(test_part))  # the 1e-4 runs, not 3e-4's 99.5


def test_papers_statistic_is_the_unfiltered_max_over_seeds_and_rates(three_rates: Path) -> None:
    tables, summary = che_tables(collect(three_rates).frame)
    cells = row(by_key(tables)["che_max"], "even_pairs")
    assert cells["dape-kerple"].text == "99.5 (9/9 fit)"  # the 3e-4 runs: all rates count
    assert cells["kerple"].text == "99.0 (9/9 fit)"
    assert cells["dape-kerple"].bold and not cells["kerple"].bold  # a max has no test: the highest
    title = by_key(tables)["che_max"].title
    assert "unfiltered" in title and "papers' statistic" in title


# --------------------------------------------------------------------------- did not fit


@pytest.fixture(scope="module")
def dnf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kerple: seeds 0 and 2 fit, seed 1 does not (60% in distribution); NoPE: no seed fits but scores
    99.9 on the test lengths; ALiBi: three fitted seeds well below Kerple."""
    root = tmp_path_factory.mktemp("dnf")
    for seed, (score, train) in enumerate([(0.99, 1.0), (0.50, 0.60), (0.97, 0.99)]):
        fabricate(root, f"kerple-s{seed}", seed=seed, score=score, train=train)
    for seed in range(3):
        fabricate(root, f"nope-s{seed}", seed=seed, score=0.999, train=0.55, pe="nope")
        fabricate(root, f"alibi-s{seed}", seed=seed, score=0.60 + 0.01 * seed, train=0.95, pe="alibi")
    return root


def test_a_seed_that_did_not_fit_is_out_of_mean_bold_and_tests(dnf: Path) -> None:
    frame = collect(dnf).frame
    tables = by_key(che_tables(frame)[0])
    cells = row(tables["che_mean"], "even_pairs")
    assert cells["kerple"].text == f"98.0 ± {math.sqrt(2):.1f} (2/3 fit)"  # 99 and 97, not the 50
    assert cells["nope"].text == "DNF (0/3 fit)" and not cells["nope"].bold  # never bold, though 99.9
    # kerple (best) vs alibi: only seeds 0 and 2 are in both populations: n < 3, best only
    assert cells["kerple"].bold and not cells["alibi"].bold
    assert any("n < 3: best only" in note for note in tables["che_mean"].notes)
    every = row(tables["che_all_runs"], "even_pairs")
    assert every["kerple"].text == "82.0 ± 27.7 (2/3 fit)" and not any(c.bold for c in every.values())
    maxed = row(tables["che_max"], "even_pairs")
    assert maxed["nope"].text == "99.9 (DNF run, 0/3 fit)" and not maxed["nope"].bold  # shown, never bold
    assert maxed["kerple"].bold
    long = frame[(frame["metric"] == "score") & (frame["pe"] == "kerple")]
    assert set(long["seeds_n"]) == {2} and set(long["runs_n"]) == {3}
    assert list(long["seeds_mean"]) == pytest.approx([0.98] * 3)
    assert list(long["all_runs_mean"]) == pytest.approx([0.82] * 3)
    sig = significance(frame, compare=("kerple", "alibi"))[1].iloc[0]
    assert (sig["seeds"], sig["n"]) == ("0,2", 2)  # paired only where both fit


def test_plot_draws_the_population_and_the_majority_baseline(dnf: Path) -> None:
    frame = collect(dnf).frame
    (ax,) = che_task_figure(frame, "even_pairs").axes
    lines = ax.get_lines()
    kerple = [ln for ln in lines if ln.get_label() == "kerple"]
    faint = [ln for ln in lines if ln.get_color() == pe_style("kerple")["color"] and ln.get_label() != "kerple"]
    (mean,) = kerple
    assert [y for x, y in zip(*mean.get_data(), strict=True) if x > 40] == pytest.approx([98.0] * 18)
    assert len(faint) == 1 and faint[0].get_alpha() < 0.5  # the DNF seed, faint, out of the mean
    (nope,) = [ln for ln in lines if ln.get_label() == "nope (DNF)"]
    assert nope.get_alpha() < 0.5
    (majority,) = [ln for ln in lines if ln.get_label() == "majority"]
    acc = frame[(frame["metric"] == "accuracy") & (frame["eval_len"] == 41)]
    assert majority.get_ydata()[list(majority.get_xdata()).index(41)] == pytest.approx(100 * acc["majority"].mean())
    assert any(ln.get_label() == "chance" for ln in lines)


# --------------------------------------------------------------------------- seeds: 3, 2, 1


def stats(values: list[float], seeds: list[int] | None = None) -> POP.SeedStats:
    return POP.SeedStats(tuple(values), seeds=tuple(seeds if seeds is not None else range(len(values))))


def test_bold_from_holm_corrected_paired_tests_with_three_seeds() -> None:
    best, worse, close = stats([90.0, 91.0, 92.0]), stats([80.0, 81.0, 83.0]), stats([89.0, 92.0, 90.0])
    # worse - best = -10, -10, -9: t = -29.0 (df 2), p = 1 - 29/sqrt(843) = 0.0012; Holm x2 = 0.0024 < 0.05
    # close - best = -1, 1, -2: t = -0.756, p = 0.529: not worse
    decision = POP.bold_by_tests([worse, best, close], higher=True, digits=1)
    assert decision.flags == [False, True, True] and not decision.few_pairs
    # lower is better (ppl): the same numbers mirrored
    assert POP.bold_by_tests([best, worse], higher=False, digits=1).flags == [False, True]
    # Holm decides: two raw p of 0.03 and 0.04 (df 2) adjust to 0.06 and 0.06: both stay bold
    e = 1.0
    m03 = S.t_quantile(0.03, 2) * e / math.sqrt(3)
    m04 = S.t_quantile(0.04, 2) * e / math.sqrt(3)
    a = stats([100 - m03 - e, 100 - m03 + e, 100 - m03])
    b = stats([100 - m04 - e, 100 - m04 + e, 100 - m04])
    top = stats([100.0, 100.0, 100.0])
    raw = [S.paired_test(x.values, top.values).p_t for x in (a, b)]
    assert raw == [pytest.approx(0.03), pytest.approx(0.04)]
    assert POP.bold_by_tests([top, a, b], higher=True, digits=1).flags == [True, True, True]
    assert POP.bold_by_tests([top, a], higher=True, digits=1).flags == [True, False]  # alone: 0.03 < 0.05


def test_fewer_than_three_paired_seeds_bold_the_best_only() -> None:
    best, close = stats([90.0, 91.0]), stats([89.0, 91.5])
    decision = POP.bold_by_tests([best, close], higher=True, digits=1)
    assert decision.flags == [True, False] and decision.few_pairs
    tie = POP.bold_by_tests([stats([90.0, 91.0]), stats([91.0, 90.0])], higher=True, digits=1)
    assert tie.flags == [True, True]  # equal means at display precision are both the best
    # three seeds each, but only two shared: n < 3
    assert POP.bold_by_tests([stats([90, 91, 92], [0, 1, 2]), stats([80, 81, 82], [1, 2, 3])], True, 1).few_pairs
    # a row with one candidate has no bold; a DNF cell is never a candidate
    unfit = POP.SeedStats((99.0, 99.0, 99.0), fits=(False, False, False), seeds=(0, 1, 2))
    assert POP.bold_by_tests([unfit, stats([50, 51, 52])], True, 1).flags == [False, False]


def test_one_seed_shows_its_test_sampling_se_labelled_and_bolds_the_best_only(tmp_path: Path) -> None:
    fabricate(tmp_path, "kerple-s0", seed=0, score=0.99, train=1.0)
    fabricate(tmp_path, "alibi-s0", seed=0, score=0.70, train=0.95, pe="alibi")
    frame = collect(tmp_path).frame
    se = frame[(frame["metric"] == "score") & (frame["pe"] == "kerple")]["se"].iloc[0]
    mean = by_key(che_tables(frame)[0])["che_mean"]
    cells = row(mean, "even_pairs")
    assert cells["kerple"].text == f"99.0 [SE {100 * se:.1f}] (1/1 fit)" and cells["kerple"].bold
    assert cells["alibi"].text.startswith("70.0 [SE ") and not cells["alibi"].bold
    assert any("test-sampling SE (model fixed)" in n and "never an interval between PEs" in n for n in mean.notes)
    assert any("n < 3: best only" in n for n in mean.notes)
    assert math.isnan(frame[frame["metric"] == "score"]["ci95_low"].iloc[0])  # no between-seed interval


# --------------------------------------------------------------------------- protocols


def test_fingerprint_excludes_replicate_pe_task_and_operational_keys() -> None:
    base = {"suite": "che", "task": "even_pairs", "pe": "alibi", "pe_identity": {"label": "alibi"}, "seed": 0,
            "model": {"layers": 3}, "train": {"lr": 1e-3, "steps": 3000, "log_every": 20, "checkpoint_every": 500,
                                              "compile": False},
            "eval": {"lengths": [41, 60]}}
    same = {**base, "task": "bucket_sort", "pe": "kerple", "pe_identity": {"label": "kerple"}, "seed": 4,
            "train": {**base["train"], "lr": 5e-4, "log_every": 5, "checkpoint_every": 0, "compile": True}}
    assert PR.protocol_of(base) == {"suite": "che", "model.layers": 3, "train.steps": 3000, "eval.lengths": [41, 60]}
    assert PR.fingerprint(PR.protocol_of(base)) == PR.fingerprint(PR.protocol_of(same))
    for path, value in (("train.steps", 1000), ("model.layers", 5), ("eval.lengths", [41, 61])):
        other = json.loads(json.dumps(base))
        _set(other, path, value)
        assert PR.fingerprint(PR.protocol_of(other)) != PR.fingerprint(PR.protocol_of(base)), path
    diff = PR.differences({"a": PR.protocol_of(base), "b": {**PR.protocol_of(base), "train.steps": 1000}})
    assert diff == {"a": "train.steps=3000", "b": "train.steps=1000"}


def test_ppl_fingerprint_uses_the_scored_windows_not_the_length_grid() -> None:
    def ppl(protocol: str, lengths: list[int]) -> str:
        config = {"suite": "ppl", "pe": "alibi", "seed": 0, "train": {"lr": 1e-3, "length": 128},
                  "eval": {"protocol": protocol, "lengths": lengths, "samples": 32, "last_tokens": 256}}
        return PR.fingerprint(PR.protocol_of(config))

    grid = [128, 256, 512, 1024, 2048]
    # fixed_targets: windows of W = 2049 tokens for the default grid, 513 for 128..512: other targets
    assert ppl("fixed_targets", [128, 256, 512]) != ppl("fixed_targets", grid)
    assert ppl("fixed_targets", [256, 2048]) == ppl("fixed_targets", grid)  # W = 2049, S = 256 both
    assert ppl("dape", [128, 256, 512]) == ppl("dape", grid)  # each length drawn on its own
    assert ppl("documents", [128]) == ppl("documents", grid)


def test_reference_cells_pool_under_one_fingerprint_per_suite() -> None:
    collection = collect(REF)
    frame = collection.frame
    for suite in ("che", "ppl"):
        assert frame[frame["suite"] == suite]["fingerprint"].nunique() == 1, suite
    assert not any("protocols" in w or "result folders" in w for w in collection.warnings)
    assert frame[frame["suite"] == "timing"]["fingerprint"].isna().all()


def test_a_protocol_mix_is_never_pooled(tmp_path: Path) -> None:
    for seed in (0, 1):
        fabricate(tmp_path, f"kerple-s{seed}", seed=seed, score=0.9 + 0.02 * seed, train=1.0)
    fabricate(tmp_path, "kerple-s2-short", seed=2, score=0.5, train=1.0,
              changes={"train.steps": 1000, "model.layers": 5})
    # another seed that differs only in how often it logs and checkpoints: the same protocol, pooled
    fabricate(tmp_path, "kerple-s3-logs", seed=3, score=0.94, train=1.0,
              changes={"train.log_every": 5, "train.checkpoint_every": 100})
    collection = collect(tmp_path)
    frame = collection.frame
    assert frame["fingerprint"].nunique() == 2 and "fingerprint" in frame.columns
    (warning,) = [w for w in collection.warnings if "protocols" in w]
    assert "model.layers, train.steps differ" in warning and "never pooled" in warning
    tables = che_tables(frame)[0]
    means = [t for t in tables if t.key.startswith("che_mean_")]
    assert len(means) == 2 and len(tables) == 8
    texts = {t.title.split("[protocol ", 1)[1]: row(t, "even_pairs")["kerple"].text for t in means}
    long = {k.split(": ", 1)[1]: v for k, v in texts.items()}
    assert long["model.layers=3, train.steps=3000]"] == "92.0 ± 2.0 (3/3 fit)"  # seeds 0, 1, 3
    assert long["model.layers=5, train.steps=1000]"].startswith("50.0 [SE ")  # seed 2 alone
    figures = report_figures(frame, tmp_path / "plots")
    stems = {p.stem for _, paths in figures["che"] for p in paths}
    assert {f"che_even_pairs_{fp}" for fp in frame["fingerprint"].unique()} <= stems
    with pytest.raises(Exception, match="several protocol fingerprints"):
        che_task_figure(frame, "even_pairs")


def test_two_folders_of_one_seed_are_not_two_seeds(tmp_path: Path) -> None:
    fabricate(tmp_path, "kerple-s0-old", seed=0, score=0.80, train=1.0, started="2026-12-01T10:00:00Z")
    fabricate(tmp_path, "kerple-s0-new", seed=0, score=0.90, train=1.0, started="2026-12-02T10:00:00Z",
              changes={"train.log_every": 7})
    collection = collect(tmp_path)
    (warning,) = [w for w in collection.warnings if "result folders" in w]
    assert "train.log_every" in warning and "kerple-s0-new" in warning and "not pooled" in warning
    cells = row(by_key(che_tables(collection.frame)[0])["che_mean"], "even_pairs")
    assert cells["kerple"].text.startswith("90.0 [SE ") and "(1/1 fit)" in cells["kerple"].text
    assert set(collection.frame[collection.frame["cell"] == "kerple-s0-old"]["superseded"]) == {True}


def test_ppl_eval_grids_that_score_other_tokens_are_separate_tables(tmp_path: Path) -> None:
    grid = {128: 70.0, 256: 71.0, 512: 72.0, 1024: 73.0, 2048: 74.0}
    fabricate_ppl(tmp_path, "kerple-s0", seed=0, values=grid)
    fabricate_ppl(tmp_path, "kerple-s1-short", seed=1, values={128: 90.0, 256: 91.0, 512: 92.0},
                  lengths=[128, 256, 512])
    tables, _ = ppl_tables(collect(tmp_path).frame)
    assert len(tables) == 2 and all("[protocol " in t.title and "eval.windows=" in t.title for t in tables)
    short = next(t for t in tables if "W=513" in t.title)
    assert [c.text for c in short.rows[0][1:]] == ["90.00", "91.00", "92.00"]  # not pooled with 70, 71, 72


# --------------------------------------------------------------------------- labels and baselines


def test_dape_and_dape_kerple_are_one_pe() -> None:
    assert parse_pe_spec("dape") == parse_pe_spec("dape-kerple")
    assert str(parse_pe_spec("dape:hidden=32")) == "dape-kerple:hidden=32"
    assert [str(s) for s in resolve_pes("dape,dape-kerple,alibi")] == ["dape-kerple", "alibi"]
    assert canonical_pe_label("dape:hidden=32") == "dape-kerple:hidden=32"
    assert canonical_pe_label("dape-alibi") == "dape-alibi" and canonical_pe_label("rope-pi") == "rope-pi"
    assert canonical_pe_label("my_pe.py:Bias") == "my_pe.py:Bias"


def test_stored_dape_cells_share_the_dape_kerple_column(tmp_path: Path) -> None:
    fabricate(tmp_path, "dape-s0", seed=0, score=0.9, train=1.0, pe="dape:hidden=32")
    fabricate(tmp_path, "dape-kerple-s1", seed=1, score=0.8, train=1.0, pe="dape-kerple:hidden=32")
    mean = by_key(che_tables(collect(tmp_path).frame)[0])["che_mean"]
    assert mean.header[3:] == ["dape-kerple:hidden=32"]
    assert row(mean, "even_pairs")["dape-kerple:hidden=32"].text == "85.0 ± 7.1 (2/2 fit)"


def test_scores_below_the_majority_baseline_are_marked_in_every_table() -> None:
    frame = collect(REF).frame
    tables = by_key(che_tables(frame)[0])
    majority = float(row(tables["che_mean"], "bucket_sort")["majority"].text.rstrip("%"))
    assert majority == pytest.approx(90.1, abs=0.05)  # a constant answer per output position
    for key in ("che_mean", "che_all_runs", "che_max"):
        cells = row(tables[key], "bucket_sort")
        assert cells["kerple"].text.endswith(BELOW), key  # 79.4 mean, 86.1 max: below 90.1
        assert not cells["fire"].text.endswith(BELOW), key  # 93.9 / 95.1: above
    assert row(tables["che_train"], "bucket_sort")["nope"].text.endswith(BELOW)  # 35.9 < 65.1 there
    sig = significance(frame)[0]
    assert sig is not None and any(c.text.endswith(BELOW) for r in sig.rows for c in r)


def test_ppl_worse_than_unigram_is_marked(tmp_path: Path) -> None:
    fabricate_ppl(tmp_path, "kerple-s0", seed=0, values={128: 70.0, 256: 900.0})
    (table,), _ = ppl_tables(collect(tmp_path).frame)
    assert [c.text for c in table.rows[0][1:]] == ["70.00", f"900.00 {BELOW}"]  # unigram 703.2
    assert table.sections[-1].label == "baseline" and table.rows[-1][0].text == "unigram"


# --------------------------------------------------------------------------- the whole report and run


def test_reference_report_shows_fit_counts_and_bolds_from_tests(tmp_path: Path) -> None:
    report = build_report(REF, tmp_path / "rep", formats=["md", "csv"], plots=False)
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "DNF (0/2 fit)" in index and "(1/2 fit)" in index and "n < 3: best only" in index
    long = report.frame
    assert {"fingerprint", "fingerprint_diff", "fit", "seeds_n", "runs_n", "all_runs_mean"} <= set(long.columns)
    summary = (tmp_path / "rep" / "tables" / "che_summary.csv").read_text()
    assert "test_sampling_se_model_fixed" in summary and "max_all_runs_all_rates" in summary


TINY_SUITE = """suite: che
grid: {tasks: even_pairs, pes: "dape,alibi", seeds: 0}
profiles:
  tiny:
    model: {layers: 1, dim: 16, heads: 2, dropout: 0.0}
    train: {steps: 2, batch_size: 4, max_length: 4, checkpoint_every: 0, log_every: 1}
    eval: {lengths: [5, 6], samples: 4, batch_size: 4, train_samples: 4}
"""


def test_run_closes_with_the_report_s_own_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    assert main(["run", "--suite", str(suite), "--profile", "tiny", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    for needle in ("CHE score (%): mean accuracy over test lengths", "majority", "chance", "/1 fit",
                   "test-sampling SE (model fixed)", "papers' statistic", "in-distribution accuracy",
                   "dape-kerple", "alibi"):
        assert needle in printed, needle
    assert " dape " not in printed  # the alias has one label
