"""Every finished (``DONE``) and failed (``FAILED``) cell of a results root -> one long pandas table.

One row per stored metric record (``suite, task, dataset, size, mode, pe, seed, train_len,
eval_len, metric, value, status, ...``); the records' extra fields (``n_sequences``, ``iqr``,
``estimated_full_ms``, ``backend`` ...) become columns, and the cell's manifest adds ``git``,
``lenbench`` (its version), ``source_sha256`` (:func:`lenbench.results.source_hash`), ``torch``,
``device``, ``cuda_device``, ``cpu_count`` and ``started``. A failed
cell is one row with ``status = failed``, its reason, and ``value`` NaN (never 0). ``status`` is
``done``, ``failed`` or ``oom`` (a timing cell that did not fit in memory). Cells still running
or never finished are counted, not shown. A suite's own columns come from its ``cell_keys(config)``;
its ``normalize(frame)`` fills what old records lack (e.g. the ppl ``protocol``).

Protocol columns (:mod:`lenbench.report.protocol`, docs/statistics.md §7): every row of a suite
that pools seeds (``suite.pooled``: CHE, ppl) has its cell's ``fingerprint`` (config minus seed,
rate, PE, the suite's table axes and operational keys, plus the suite's protocol extras) and
``fingerprint_diff`` (the keys where it differs from the other fingerprints of its table group,
``suite.table_group``: all CHE cells; ppl cells of one dataset, training length and protocol;
empty when they agree). Tables never pool rows of different fingerprints. Two folders of one
table cell and seed (they differ only in operational keys, or are reruns) are not two seeds: the
newest is used and the others get ``superseded = True`` (and a warning). ``pe`` is the canonical
label (``dape`` -> ``dape-kerple``); a label whose cells carry different ``pe_identity`` values
(e.g. an edited plugin) gets ``#<hash>`` per identity, with a warning. Every CHE row has its
cell's ``fit`` flag, and ppl rows their cell's ``lr``.

Uncertainty columns (:func:`add_uncertainty`): every record of a pooled suite also carries the statistics
of its table cell over seeds under the one population rule (docs/statistics.md §1: the runs that
fit; ppl: every finished run): ``seeds_n`` (runs in the population), ``runs_n`` (finished runs),
``seeds_mean``, ``seeds_std`` (ddof 1), ``ci95_low``/``ci95_high`` (t-based 95% CI of the mean
over seeds, n >= 2; bold marking does not use it, it comes from paired tests), and
``all_runs_mean``/``all_runs_std`` over every finished run, fitted or not. A CHE record's ``se`` is
the test-sampling SE of one trained model (model fixed), not a between-seed uncertainty.
Timing records carry their ``iqr``.
Folders that are not cells (no config, manifest, lock or marker: e.g. a report written into the
results root, ``results/report/plots``) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lenbench.errors import LenbenchError
from lenbench.pe.registry import canonical_pe_label, pe_label
from lenbench.present.population import in_population
from lenbench.report.protocol import differences, fingerprint, flatten, protocol_of, varying_keys
from lenbench.results import CellDir, ResultStore
from lenbench.suites import Suite, get_suite, registered, suite_names

COLUMNS = [
    "suite", "task", "dataset", "size", "mode", "pe", "seed", "train_len", "eval_len", "metric", "value",
    "status", "reason", "cell", "train_min_len",
]  # fmt: skip
MANIFEST_KEYS = ("git", "lenbench", "source_sha256", "torch", "device", "cuda_device", "cpu_count", "started")
INT_COLUMNS = ("seed", "train_len", "eval_len", "train_min_len")


@dataclass
class Collection:
    """The long table plus what the reader should know about cells left out of it."""

    frame: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    incomplete: int = 0  # cells with neither DONE nor FAILED (running, interrupted or pending)


def cell_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The identifying fields of a cell from its resolved config (used for failed cells): suite, PE
    and seed, then the suite's own (``suite.cell_keys``)."""
    suite = config.get("suite")
    keys: dict[str, Any] = {"suite": suite, "pe": pe_label(config), "seed": config.get("seed")}
    if suite in suite_names():
        keys.update(get_suite(suite).cell_keys(config))
    return keys


def _plain(value: Any) -> Any:
    """Lists and dicts become JSON text so every column stays a scalar (CSV and Parquet safe)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _manifest(cell: CellDir) -> dict[str, Any]:
    try:
        data = json.loads(cell.manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: data.get(k) for k in MANIFEST_KEYS if k in data}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def is_cell_folder(cell: CellDir) -> bool:
    """True for a folder the store created: it has a config, manifest, lock or DONE/FAILED marker."""
    paths = (cell.config_path, cell.manifest_path, cell.done_path, cell.failed_path, cell.path / ".lock")
    return any(p.exists() for p in paths)


def cell_rows(cell: CellDir, warnings: list[str]) -> list[dict[str, Any]] | None:
    """Rows of one cell folder, or None when it has neither DONE nor FAILED."""
    status = cell.status()
    if status not in ("done", "failed"):
        return None
    config = cell.read_config() or {}
    keys = cell_keys(config)
    extra = {"cell": cell.cell_id, **_manifest(cell)}
    if status == "failed":
        failed = _read_json(cell.failed_path)
        reason = str(failed.get("reason", "FAILED marker without a reason"))
        return [{**keys, **extra, "value": float("nan"), "status": "failed", "reason": reason}]
    records = cell.read_metrics()
    if not records:
        warnings.append(f"{cell.path}: DONE but no metrics.json records; left out")
        return []
    rows = []
    for rec in records:
        row = {**keys, **extra, **{k: _plain(v) for k, v in rec.items()}}
        row["status"] = "oom" if rec.get("status") == "oom" else "done"
        row["value"] = float("nan") if rec.get("value") is None else float(rec["value"])
        rows.append(row)
    return rows


def collect(results: Path | str, suite: str | None = None) -> Collection:
    """Read every DONE and FAILED cell under ``results`` (optionally one suite) into a long table."""
    root = Path(results)
    if not root.is_dir():
        raise LenbenchError(f"results folder {root} does not exist")
    if suite is not None and not (root / suite).is_dir():
        raise LenbenchError(f"no {suite!r} results under {root} (expected {root / suite}/)")
    where = f"{root}/{suite}" if suite else str(root)
    return collect_cells(ResultStore(root).cells(suite), where)


def collect_cells(cells: Iterable[CellDir], where: str = "the given cells") -> Collection:
    """The long table of the given cell folders (``lenbench run`` closes with the tables of its cells)."""
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    incomplete = 0
    for cell in cells:
        if not is_cell_folder(cell):
            continue
        got = cell_rows(cell, warnings)
        if got is None:
            incomplete += 1
        else:
            rows.extend(got)
            configs[cell.cell_id] = cell.read_config() or {}
    if not rows:
        raise LenbenchError(f"no finished or failed cells under {where} (run `lenbench run` first)")
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    frame = frame[COLUMNS + sorted(c for c in frame.columns if c not in COLUMNS)]
    for col in INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    for suite in registered():
        frame = suite.normalize(frame)
    frame["pe"] = frame["pe"].map(_canonical_labels(frame["pe"]))
    frame = add_protocols(frame, configs, warnings)
    frame = add_uncertainty(frame)
    if incomplete:
        warnings.append(f"{incomplete} cell(s) neither finished nor failed (running or interrupted); not shown")
    return Collection(frame, warnings, incomplete)


def _canonical_labels(labels: pd.Series) -> dict[Any, Any]:
    return {v: canonical_pe_label(v) if isinstance(v, str) else v for v in labels.dropna().unique()}


def pooled_suites() -> list[Suite]:
    """The suites whose cells are pooled over seeds in a table cell (``suite.pooled``)."""
    return [s for s in registered() if s.pooled]


def add_protocols(frame: pd.DataFrame, configs: dict[str, dict[str, Any]], warnings: list[str]) -> pd.DataFrame:
    """Add ``fingerprint``, ``fingerprint_diff``, ``fit`` and ``superseded``, and split PE labels
    whose cells carry different PE identities (module docstring); warnings say what was done."""
    out = frame.copy()
    protocols = {cid: protocol_of(cfg) for cid, cfg in configs.items()}
    prints = {cid: fingerprint(p) for cid, p in protocols.items()}
    pooled_names = [s.name for s in pooled_suites()]
    pooled = out["suite"].isin(pooled_names)
    out["fingerprint"] = out["cell"].map(prints).where(pooled, None)
    out["fingerprint_diff"] = None
    out["superseded"] = False
    if "fit" not in out:
        out["fit"] = None
    if not pooled.any():
        return out
    fits = out[pooled & out["fit"].notna()].groupby("cell")["fit"].first()
    out.loc[pooled, "fit"] = out.loc[pooled, "cell"].map(fits)
    _split_identities(out, configs, warnings, pooled_names)
    for suite in pooled_suites():
        rows = out[out["suite"] == suite.name]
        for key, group in rows.groupby(list(suite.table_group), dropna=False, sort=True):
            found = {fp: protocols[cid] for cid, fp in zip(group["cell"], group["fingerprint"], strict=True)}
            if len(found) > 1:
                diff = differences(found)
                out.loc[group.index, "fingerprint_diff"] = group["fingerprint"].map(diff)
                where = "".join(f" {k}" for k in (key if isinstance(key, tuple) else (key,))[1:])
                keys = ", ".join(varying_keys(found.values()))
                warnings.append(f"{suite.name}{where}: cells of {len(found)} protocols ({keys} differ); shown in "
                                "separate tables, never pooled")
        _supersede(out, suite, configs, warnings)
    return out


def _identity_hash(config: dict[str, Any]) -> str | None:
    identity = config.get("pe_identity")
    if not isinstance(identity, dict):
        return None
    kept = {k: v for k, v in identity.items() if k != "label"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _split_identities(out: pd.DataFrame, configs: dict[str, dict[str, Any]], warnings: list[str],
                      pooled: list[str]) -> None:
    """One label, several stored PE identities (an edited plugin, a changed default): ``label#hash`` each."""
    idents = {cid: _identity_hash(cfg) for cid, cfg in configs.items()}
    rows = out[out["suite"].isin(pooled)]
    for (suite, label), group in rows.groupby(["suite", "pe"], sort=True):
        found = {idents.get(c) for c in group["cell"]} - {None}
        if len(found) < 2:
            continue
        keyed = {c: configs[c] for c in group["cell"].unique() if idents.get(c)}
        keys = varying_keys(flatten({"pe_identity": cfg.get("pe_identity", {})}) for cfg in keyed.values())
        for cid in keyed:
            out.loc[group.index[group["cell"] == cid], "pe"] = f"{label}#{idents[cid]}"
        warnings.append(f"{suite} PE {label!r}: cells of {len(found)} PE identities (differ in {', '.join(keys)}); "
                        f"shown as separate columns {label}#<hash>")


def _supersede(out: pd.DataFrame, suite: Suite, configs: dict[str, dict[str, Any]], warnings: list[str]) -> None:
    """Several folders of one table cell and seed: the newest (manifest ``started``) counts, once."""
    rows = out[(out["suite"] == suite.name)]
    keys = [*suite.table_group, "fingerprint", *suite.cell_identity]
    cells = rows.drop_duplicates("cell")
    for key, group in cells.groupby(keys, dropna=False, sort=True):
        if len(group) < 2:
            continue
        started = group["started"] if "started" in group else pd.Series("", index=group.index)
        order = group.assign(_s=started.fillna("").astype(str)).sort_values(["_s", "cell"])
        newest = order["cell"].iloc[-1]
        old = [c for c in order["cell"] if c != newest]
        out.loc[out["cell"].isin(old), "superseded"] = True
        differ = varying_keys(flatten(configs[c]) for c in order["cell"])
        named = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True)
                          if k not in ("suite", "fingerprint") and not _blank(v))
        warnings.append(f"{len(group)} result folders for {suite.name} {named} under one protocol"
                        f" (differ in {', '.join(differ) or 'nothing'}): the newest ({newest}) is used, not pooled")


def _blank(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def table_cell_keys(suite: Suite) -> list[str]:
    """The columns of one table cell of a pooled suite: its table group, fingerprint and cell identity
    without the seed, at one length and metric."""
    keys = [*suite.table_group, "fingerprint", *(k for k in suite.cell_identity if k != "seed"), "train_len",
            "eval_len", "metric"]
    return list(dict.fromkeys(keys))


UNCERTAINTY = ("seeds_n", "runs_n", "seeds_mean", "seeds_std", "ci95_low", "ci95_high", "all_runs_mean",
               "all_runs_std")


def add_uncertainty(frame: pd.DataFrame) -> pd.DataFrame:
    """Add each pooled suite's records their table-cell statistics over seeds (module docstring);
    others get NaN.

    Over the population (the runs that fit): ``seeds_n``, ``seeds_mean``, ``seeds_std`` and
    ``ci95 = mean -+ t_{0.975, n-1} * std / sqrt(n)`` (n >= 2); over every finished run:
    ``runs_n``, ``all_runs_mean``, ``all_runs_std``.
    """
    from lenbench.present.stats import t_quantile

    out = frame.copy()
    for col in UNCERTAINTY:
        out[col] = math.nan
    done = out[(out["status"] == "done") & out["value"].notna() & ~out["superseded"].astype(bool)]
    groups = []
    for suite in pooled_suites():
        rows = done[done["suite"] == suite.name]
        if not rows.empty:
            keys = [k for k in table_cell_keys(suite) if k in rows.columns]
            groups += [group for _, group in rows.groupby(keys, dropna=False, sort=False)]
    for group in groups:
        idx = group.index
        every = group["value"].astype(float)
        values = every[[in_population(f) for f in group["fit"]]]
        out.loc[idx, ["runs_n", "all_runs_mean"]] = [len(every), float(every.mean())]
        if len(every) >= 2:
            out.loc[idx, "all_runs_std"] = float(every.std(ddof=1))
        n = len(values)
        out.loc[idx, "seeds_n"] = n
        if n:
            out.loc[idx, "seeds_mean"] = float(values.mean())
        if n >= 2:
            std = float(values.std(ddof=1))
            half = t_quantile(0.05, n - 1) * std / math.sqrt(n)
            out.loc[idx, "seeds_std"] = std
            out.loc[idx, ["ci95_low", "ci95_high"]] = [float(values.mean()) - half, float(values.mean()) + half]
    return out


def parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding more than one kind of value (e.g. numbers and text) become text."""
    def blank(v: Any) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v))

    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object and len({type(v) for v in out[col] if not blank(v)}) > 1:
            out[col] = out[col].map(lambda v: None if blank(v) else str(v))
    return out


def save_long(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Write ``results_long.csv`` and ``results_long.parquet`` into ``out``."""
    csv_path, parquet_path = out / "results_long.csv", out / "results_long.parquet"
    frame.to_csv(csv_path, index=False)
    try:
        parquet_ready(frame).to_parquet(parquet_path, index=False)
    except ImportError as exc:
        raise LenbenchError(f"writing Parquet needs pyarrow ({exc}); pip install pyarrow") from exc
    return [csv_path, parquet_path]
