"""Every finished (``DONE``) and failed (``FAILED``) cell of a results root -> one long pandas table.

One row per stored metric record (``suite, task, dataset, size, mode, pe, seed, train_len,
eval_len, metric, value, status, ...``); the records' extra fields (``n_sequences``, ``iqr``,
``estimated_full_ms``, ``backend`` ...) become columns, and the cell's manifest adds ``git``,
``lenbench`` (its version), ``source_sha256`` (:func:`lenbench.results.source_hash`), ``torch``,
``device``, ``cuda_device``, ``cpu_count`` and ``started``. A failed
cell is one row with ``status = failed``, its reason, and ``value`` NaN (never 0). ``status`` is
``done``, ``failed`` or ``oom`` (a timing cell that did not fit in memory). Cells still running
or never finished are counted, not shown. Every ppl row has a ``protocol`` (the evaluation protocol
of :mod:`lenbench.suites.ppl_protocols`); records written before protocols were named get
``documents``, the only protocol then.

Uncertainty columns (:func:`add_uncertainty`): every CHE and ppl record also carries the statistics
of its table cell over seeds, as the rendered tables show them: ``seeds_n``, ``seeds_mean``,
``seeds_std`` (ddof 1), ``ci95_low``/``ci95_high`` (t-based 95% CI of the mean, n >= 2) and
``bold_half_width`` (the half-width bold marking used: the CI's, or the record's ``se`` for one
seed). Timing records carry their ``iqr``.
Folders that are not cells (no config, manifest, lock or marker: e.g. a report written into the
results root, ``results/report/plots``) are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lenbench.errors import LenbenchError
from lenbench.pe.registry import pe_label
from lenbench.results import CellDir, ResultStore
from lenbench.suites.ppl_protocols import LEGACY_PROTOCOL

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
    """The identifying fields of a cell from its resolved config (used for failed cells)."""
    suite = config.get("suite")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    keys: dict[str, Any] = {"suite": suite, "pe": pe_label(config), "seed": config.get("seed")}
    if suite == "che":
        keys.update(task=config.get("task"), train_len=train.get("max_length"), train_min_len=train.get("min_length"),
                    lr=train.get("lr"))
    elif suite == "ppl":
        evaluation = config.get("eval") if isinstance(config.get("eval"), dict) else {}
        keys.update(dataset=config.get("dataset"), train_len=train.get("length"),
                    protocol=evaluation.get("protocol", LEGACY_PROTOCOL))
    elif suite == "timing":
        keys.update(
            size=config.get("size"),
            mode=config.get("mode"),
            train_len=config.get("train_len"),
            eval_len=config.get("eval_len"),
            metric=f"ms_{config.get('mode')}",
            layers=config.get("layers"),
            layers_timed=config.get("layers_timed"),
            device=config.get("device"),
            backend_policy=config.get("backend_policy", "fastest"),
            estimate_check=bool(config.get("estimate_check", False)),
        )
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
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    incomplete = 0
    for cell in ResultStore(root).cells(suite):
        if not is_cell_folder(cell):
            continue
        got = cell_rows(cell, warnings)
        if got is None:
            incomplete += 1
        else:
            rows.extend(got)
    if not rows:
        where = f"{root}/{suite}" if suite else str(root)
        raise LenbenchError(f"no finished or failed cells under {where} (run `lenbench run` first)")
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    frame = frame[COLUMNS + sorted(c for c in frame.columns if c not in COLUMNS)]
    for col in INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    if "protocol" not in frame:
        frame["protocol"] = None
    legacy = (frame["suite"] == "ppl") & frame["protocol"].isna()
    frame["protocol"] = frame["protocol"].astype(object).where(~legacy, LEGACY_PROTOCOL)
    frame = add_uncertainty(frame)
    if incomplete:
        warnings.append(f"{incomplete} cell(s) neither finished nor failed (running or interrupted); not shown")
    return Collection(frame, warnings, incomplete)


CELL_KEYS = ["suite", "task", "dataset", "protocol", "pe", "lr", "train_len", "eval_len", "metric"]  # one table cell


def add_uncertainty(frame: pd.DataFrame) -> pd.DataFrame:
    """Add each CHE/ppl record's table-cell statistics over seeds (module docstring); others get NaN.

    ``ci95 = mean -+ t_{0.975, n-1} * std / sqrt(n)``; one seed: no CI, ``bold_half_width = se``
    when the record has one.
    """
    from lenbench.report.stats import t_quantile

    out = frame.copy()
    for col in ("seeds_n", "seeds_mean", "seeds_std", "ci95_low", "ci95_high", "bold_half_width"):
        out[col] = math.nan
    done = out[out["suite"].isin(["che", "ppl"]) & (out["status"] == "done") & out["value"].notna()]
    if done.empty:
        return out
    keys = [k for k in CELL_KEYS if k in done.columns]
    for _, group in done.groupby(keys, dropna=False, sort=False):
        values = group["value"].astype(float)
        n = len(values)
        idx = group.index
        out.loc[idx, "seeds_n"] = n
        out.loc[idx, "seeds_mean"] = float(values.mean())
        if n >= 2:
            std = float(values.std(ddof=1))
            half = t_quantile(0.05, n - 1) * std / math.sqrt(n)
            out.loc[idx, "seeds_std"] = std
            out.loc[idx, ["ci95_low", "ci95_high"]] = [float(values.mean()) - half, float(values.mean()) + half]
            out.loc[idx, "bold_half_width"] = half
        elif "se" in group and pd.notna(group["se"].iloc[0]):
            out.loc[idx, "bold_half_width"] = float(group["se"].iloc[0])
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
