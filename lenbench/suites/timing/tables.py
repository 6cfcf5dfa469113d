"""The timing suite's report tables (docs/timing.md).

DAPE Table 1 per mode, backend policy and model size (smallest first): PEs x lengths in ms (``KL
ms`` for a K-layer CPU slice, with its full-model ``est. ms``) and the paired ``Ratio PE/<reference>``
with its bootstrap 95% interval, ``≈ 1`` where it cannot be told from identical work (built by
:func:`lenbench.suites.timing.ratios.timing_tables` from the stored records); the noise floor of the
identical-work control under each table; then peak memory per size, and the estimate check where
``--check-estimate`` slices exist. Timing has no seeds, so no significance comparisons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from lenbench.present.cells import FAILED, MISSING, blank, pe_order
from lenbench.present.table import Section, Table, TCell
from lenbench.results import slug


def suite_tables(frame: pd.DataFrame, options: Mapping[str, Any] | None = None) -> tuple[list[Table], pd.DataFrame]:
    """The suite's report tables and tidy summary; ``options["reference_pe"]``: the Ratio's
    denominator (None: DAPE-Kerple when timed)."""
    return timing_report_tables(frame, (options or {}).get("reference_pe"))


def warnings(frame: pd.DataFrame) -> list[str]:
    """What the reader of the timing tables should know (:func:`timing_duplicate_warnings`)."""
    return timing_duplicate_warnings(frame)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if blank(v) else v) for k, v in row.items()}


def _flag(value: Any) -> bool:
    """A stored boolean column (NaN where the record has no such field) as a bool."""
    return not blank(value) and bool(value)


def _policy(r: dict[str, Any]) -> str:
    """A timing record's backend policy; records from before the option are ``fastest``."""
    value = r.get("backend_policy")
    return "fastest" if blank(value) else str(value)


def _group_pes(r: dict[str, Any]) -> list[str]:
    """A timing row's PE, or for a failed group's row (no ``pe``) every PE of the group
    (``group_pes``, JSON text)."""
    if not blank(r.get("pe")):
        return [str(r["pe"])]
    value = r.get("group_pes")
    return [str(p) for p in json.loads(value)] if isinstance(value, str) and value.startswith("[") else []


def timing_data(
    frame: pd.DataFrame, reference: str | None = None
) -> tuple[list[Any], set[tuple[str, str, int, str, str]]]:
    """(:class:`~lenbench.suites.timing.TimingTable` per mode and backend policy, failed
    (pe, size, length, mode, policy) keys); ``reference``: the Ratio's denominator (None: the default)."""
    from lenbench.suites.timing.ratios import timing_tables as build

    timing = frame[frame["suite"] == "timing"]
    records = [_record(r) for r in timing[timing["status"] != "failed"].to_dict("records")]
    failed = {
        (pe, str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
        for r in timing[timing["status"] == "failed"].to_dict("records")
        if not _flag(r.get("estimate_check"))
        for pe in _group_pes(r)
    }
    return build(records, reference), failed


def timing_duplicate_warnings(frame: pd.DataFrame) -> list[str]:
    """A PE timed at the same (size, length, mode, policy, slice) by several groups: the tables show
    the latest group's time and pair its Ratio within that group; say so."""
    timing = frame[(frame["suite"] == "timing") & frame["metric"].astype(str).str.startswith("ms_")]
    keys = [k for k in ("size", "mode", "pe", "eval_len", "backend_policy", "layers_timed") if k in timing]
    if timing.empty or "pe" not in timing:
        return []
    per = timing[keys + ["cell"]].drop_duplicates().groupby(keys, dropna=False)["cell"].nunique()
    return [f"{n} timing groups timed {', '.join(f'{k}={v}' for k, v in zip(keys, key, strict=True))}; "
            "the tables show the latest group's time, its Ratio paired within that group"
            for key, n in per[per > 1].items()]


def _memory_cells(frame: pd.DataFrame) -> dict[tuple[str, str, int, str, str], tuple[str, float | None]]:
    """``{(pe, size, length, mode, policy): (status, MiB)}`` of the timing suite's peak-memory records
    (estimate-check slices left out; the latest group where several timed a PE); status ``done``
    (MiB None: not measured on this platform), ``oom`` or ``failed``."""
    timing = frame[frame["suite"] == "timing"]
    out: dict[tuple[str, str, int, str, str], tuple[str, float | None]] = {}
    when: dict[tuple[str, str, int, str, str], str] = {}
    for r in timing.to_dict("records"):
        if blank(r.get("eval_len")) or blank(r.get("mode")) or _flag(r.get("estimate_check")):
            continue
        stamp = "" if blank(r.get("measured_at")) else str(r["measured_at"])
        for pe in _group_pes(r):
            key = (pe, str(r["size"]), int(r["eval_len"]), str(r["mode"]), _policy(r))
            if key in when and when[key] > stamp:
                continue
            if r["status"] == "failed":
                out[key], when[key] = ("failed", None), stamp
            elif r.get("metric") == "peak_mem_mb":
                out[key], when[key] = (str(r["status"]), None if blank(r.get("value")) else float(r["value"])), stamp
    return out


def _memory_text(cell: tuple[str, float | None] | None) -> str:
    if cell is None:
        return MISSING
    status, mib = cell
    if status == "oom":
        return "OOM"
    if status == "failed":
        return FAILED
    return "n/a" if mib is None else (f"{mib:.0f}" if mib >= 10 else f"{mib:.1f}")


def _policy_suffix(policy: str) -> str:
    """Table-key suffix of a backend policy: none for ``fastest`` (the default), ``_<policy>`` else."""
    return "" if policy == "fastest" else f"_{slug(policy)}"


def timing_memory_tables(frame: pd.DataFrame, layers: dict[str, tuple[int, int]]) -> list[Table]:
    """Peak memory per model size (smallest first) and backend policy: PE rows, per length and mode
    the MiB the timed call added."""
    from lenbench.suites.timing.ratios import POLICY_TEXT, size_order

    cells = _memory_cells(frame)
    if not cells:
        return []
    timing = frame[frame["suite"] == "timing"]
    mem_rows = timing[timing["metric"] == "peak_mem_mb"]
    methods = sorted({str(m) for m in mem_rows.get("method", pd.Series(dtype=object)).dropna().unique()})
    tables = []
    order = {s: i for i, s in enumerate(size_order([k[1] for k in cells]))}
    for size, policy in sorted(dict.fromkeys((k[1], k[4]) for k in cells), key=lambda sp: (order[sp[0]], sp[1])):
        keys = [k for k in cells if k[1] == size and k[4] == policy]
        lengths = sorted({k[2] for k in keys})
        modes = [m for m in ("fwd", "train") if any(k[3] == m for k in keys)]
        modes += sorted({k[3] for k in keys} - set(modes))
        header = ["PE"] + [f"N={n} {mode} MiB" for n in lengths for mode in modes]
        rows = [
            [TCell(pe)]
            + [TCell(_memory_text(cells.get((pe, size, n, mode, policy)))) for n in lengths for mode in modes]
            for pe in pe_order([k[0] for k in keys])
        ]
        timed, total = layers.get(size, (0, 0))
        part = f" (of the {timed} timed block(s) of {total})" if 0 < timed < total else ""
        part = " (the full model)" if 0 < timed == total else part
        notes = [
            f"peak memory of one timed call above the memory held before it{part}; "
            "CUDA: max allocated; CPU: peak RSS delta",
            "methods: " + (", ".join(methods) if methods else "?") + "; n/a: not measurable on this platform",
            f"OOM: did not fit in memory; {FAILED}: the cell failed; {MISSING}: not run",
        ]
        what = POLICY_TEXT.get(policy, f"{policy} backend forced for every PE")
        tables.append(Table(f"timing_memory_{slug(size)}{_policy_suffix(policy)}",
                            f"{size}: peak memory (MiB), batch 1, backend {what}", header,
                            [Section(None, rows)], notes))
    return tables


def _dape_width(frame: pd.DataFrame, pe: str) -> int | None:
    """D_DAPE of a timed PE: as its records stored it, else from the PE registry (None: no DAPE MLP)."""
    if "d_dape" in frame:
        stored = frame[(frame["suite"] == "timing") & (frame["pe"] == pe)]["d_dape"].dropna()
        if len(stored):
            return int(stored.iloc[0])
    from lenbench.suites.timing.measure import dape_width

    try:
        return dape_width(pe)
    except Exception:  # a plugin PE this process cannot build: say nothing rather than guess
        return None


def ratio_text(ratio: Any, floor: float | None) -> str:
    """``0.93 (0.90–0.97)``: the paired ratio's median and bootstrap 95% interval; ``≈ 1 (0.97–1.04)``
    where it cannot be told from identical work (:func:`lenbench.suites.timing.ratios.approx_one`)."""
    from lenbench.suites.timing.ratios import approx_one

    if ratio is None:
        return MISSING
    interval = f"({ratio.low:.2f}–{ratio.high:.2f})"
    return f"≈ 1 {interval}" if approx_one(ratio, floor) else f"{ratio.median:.2f} {interval}"


def _noise_note(t: Any, size: str, lengths: list[int]) -> str:
    if t.control is None:
        return "no identical-work control was timed (control: none), so no noise floor is known"
    base, twin = t.control
    parts = []
    for n in lengths:
        stat = t.noise.get((size, n))
        if stat is not None:
            parts.append(f"N={n} ±{100 * stat.reach:.1f}% ({stat.median:.2f}, {stat.low:.2f}–{stat.high:.2f})")
    if not parts:
        return f"identical-work control {twin} / {base}: not measured here, so no noise floor is known"
    return (f"noise floor = how far the identical-work control's interval ({twin} / {base}, the same operations "
            f"on other angles, timed in the same rounds) reaches from 1: " + "; ".join(parts))


def timing_report_tables(frame: pd.DataFrame, reference: str | None = None) -> tuple[list[Table], pd.DataFrame]:
    """DAPE Table 1 per (mode, backend policy, size), sizes smallest first: PE rows, per length the
    measured ms (and the full-model estimate) and the paired Ratio to the reference PE with its
    bootstrap 95% interval; then peak memory per size, and the estimate check where
    ``--check-estimate`` slices exist. ``reference`` None: DAPE-Kerple when timed."""
    from lenbench.suites.timing.ratios import TimingTable, approx_one, size_order

    tables_by_mode, failed = timing_data(frame, reference)
    titles = {"fwd": "forward (inference)", "train": "forward + backward (training step)"}
    tables, summary = [], []
    memory = _memory_cells(frame)
    layers: dict[str, tuple[int, int]] = {}
    for t in tables_by_mode:
        layers.update(t.layers)
    built = {(t.mode, t.policy): t for t in tables_by_mode}
    for mode, policy in sorted({(m, p) for *_, m, p in failed} - set(built)):
        built[(mode, policy)] = TimingTable(mode, policy)
    for (mode, policy), t in built.items():
        fails = {(p, s, n) for p, s, n, m, pol in failed if m == mode and pol == policy}
        sizes = size_order([*t.sizes, *(s for _, s, _ in fails)])
        ref = t.reference
        ratio_name = f"Ratio PE/{ref or '?'} (95% CI)"
        for size in sizes:
            lengths = sorted({*t.lengths.get(size, []), *(n for _, s, n in fails if s == size)})
            sliced = size in t.layers and t.sliced(size)
            timed = t.layers[size][0] if sliced else 0
            pes = pe_order([*(p for (p, s, _) in t.entries if s == size), *(p for p, s, _ in fails if s == size)])
            header = ["PE", "backend"]
            for n in lengths:
                header += [f"N={n} {timed}L ms" if sliced else f"N={n} ms"]
                header += ([f"N={n} est. ms"] if sliced else []) + [f"N={n} {ratio_name}"]
            rows = []
            rounds: dict[int, set[tuple[int | None, bool]]] = {}
            for pe in pes:
                label = pe
                row: list[TCell] = []
                for n in lengths:
                    e = t.entries.get((pe, size, n))
                    width = 3 if sliced else 2
                    if (pe, size, n) in fails and e is None:
                        row += [TCell(FAILED)] * (width - 1) + [TCell(MISSING)]
                    elif e is None:
                        row += [TCell(MISSING)] * width
                    elif e.oom:
                        row += [TCell("OOM")] * (width - 1) + [TCell(MISSING)]
                    else:
                        floor = t.floor(size, n)
                        row += [TCell(_fmt_ms(e.ms))] + ([TCell(_fmt_ms(e.est_ms))] if sliced else [])
                        row.append(TCell("1 (reference)" if pe == ref and e.ratio is not None
                                         else ratio_text(e.ratio, floor)))
                        rounds.setdefault(n, set()).add((e.rounds, e.budget_limited))
                    if e is not None:
                        label = f"{pe} (control)" if e.role == "twin" else pe
                        mem = memory.get((pe, size, n, mode, policy))
                        stat = e.ratio
                        floor = t.floor(size, n)
                        summary.append({
                            "mode": mode, "backend_policy": policy, "size": size, "pe": pe, "eval_len": n,
                            "precision": "/".join(t.precisions) or None, "ms": e.ms,
                            "iqr_ms": _iqr_of(frame, e.group, pe, mode), "est_full_ms": e.est_ms,
                            "reference_pe": ref, "ratio": stat.median if stat else None,
                            "ratio_ci95_low": stat.low if stat else None,
                            "ratio_ci95_high": stat.high if stat else None,
                            "ratio_approx_1": approx_one(stat, floor) if stat else None, "noise_floor": floor,
                            "rounds": e.rounds, "budget_limited": e.budget_limited, "control_role": e.role,
                            "oom": e.oom, "peak_mem_mb": mem[1] if mem else None, "group": e.group,
                        })
                rows.append([TCell(label), TCell(t.backends.get(pe, MISSING))] + row)
            notes = [f"backend: {t.policy_text}" + (
                " (Ratio isolates each PE's own cost, as DAPE Table 1)" if policy == "paper" else
                " (Ratio mixes the PE's cost with the difference between kernels; --backend paper times "
                "DAPE Table 1's quantity)" if policy == "fastest" else "")]
            what = f"{timed}-block slice" if sliced else "model"
            notes.append(
                f"Ratio = median over rounds of PE time / {ref or '(no reference PE timed)'} time measured in the "
                f"same round, with its bootstrap 95% interval; from the measured {what} times, never est. ms; "
                "below 1: faster than the reference; ≈ 1: the interval contains 1 or the median is within the "
                "noise floor of 1")
            notes.append(_noise_note(t, size, lengths))
            notes.append(_rounds_note(rounds))
            if sliced:
                total = t.layers[size][1]
                notes.append(f"{timed}L ms: {timed} of {total} blocks measured; est. ms: full model estimated as "
                             f"{timed}L ms x {total}/{timed} + the measured embedding and head "
                             "(an estimate, not a measurement; its error: `lenbench timing --check-estimate`, "
                             "docs/timing.md)")
            widths = [f"{pe} {w}" for pe in pes if (w := _dape_width(frame, pe)) is not None]
            if widths:
                notes.append("D_DAPE (DAPE's MLP width; the paper times 32): " + ", ".join(widths))
            notes.append("kernel per PE (flex: fused FlexAttention; sdpa: fused SDPA; dape_fused: the fused DAPE "
                         "kernel; sdpa_bias, blocked_bias, explicit: materialized bias or logits; paper: DAPE's "
                         "unfused NeoX path); a/b: a at some lengths, b at others")
            notes.append(f"ms: median over rounds (IQR: iqr_ms in timing_summary.csv, iqr in results_long); "
                         f"OOM: did not fit in memory; {MISSING}: not run")
            devices = "/".join(t.devices) if t.devices else "?"
            precision = "/".join(t.precisions) if t.precisions else "?"
            title = (f"{size}: ms per sequence, {titles.get(mode, mode)}, batch 1, {devices} {precision}, "
                     f"backend {policy}")
            key = f"timing_{mode}_{slug(size)}{_policy_suffix(policy)}"
            tables.append(Table(key, title, header, [Section(None, rows)], notes, left=2))
    tables += timing_memory_tables(frame, layers)
    check = estimate_check_table(frame)
    if check is not None:
        tables.append(check)
    return tables, pd.DataFrame(summary)


def _rounds_note(rounds: dict[int, set[tuple[int | None, bool]]]) -> str:
    """How many measured rounds each length's ratios rest on, and where a budget cut them."""
    counts = {r for per in rounds.values() for r, _ in per if r is not None}
    cut = sorted(n for n, per in rounds.items() if any(limited for _, limited in per))
    text = "rounds per group: " + ("/".join(str(c) for c in sorted(counts)) if counts else "?")
    text += " (after a discarded warm-up round; PEs in a fresh random order each round)"
    if cut:
        text += "; fewer than asked at N=" + ",".join(str(n) for n in cut) + " (the group's max_seconds budget)"
    if any(r is None for per in rounds.values() for r, _ in per):
        text += ("; times stored before interleaved groups (one PE per cell, repeats back to back) have no "
                 "paired Ratio: rerun them with lenbench timing")
    return text


def _iqr_of(frame: pd.DataFrame, group: str | None, pe: str, mode: str) -> float | None:
    """IQR (ms) of a shown timing entry (its record in its group)."""
    rows = frame[(frame["suite"] == "timing") & (frame["metric"] == f"ms_{mode}") & (frame["pe"] == pe)]
    if group is not None and "group" in rows:
        rows = rows[rows["group"] == group]
    values = rows["iqr"].dropna() if "iqr" in rows else []
    return float(values.iloc[-1]) if len(values) else None


def estimate_check_table(frame: pd.DataFrame) -> Table | None:
    """The measured error of ``K-layer x M/K`` (:func:`lenbench.suites.timing.estimate_checks`)."""
    from lenbench.suites.timing.ratios import estimate_checks

    timing = frame[(frame["suite"] == "timing") & (frame["status"] == "done")]
    checks = estimate_checks([_record(r) for r in timing.to_dict("records")])
    if not checks:
        return None
    header = ["PE", "size", "N", "mode", "backend", "K", "M", "K ms", "predicted M ms (K ms x M/K)",
              "measured M ms", "error"]
    rows = [[TCell(c.pe), TCell(c.size), TCell(str(c.eval_len)), TCell(c.mode), TCell(c.policy), TCell(str(c.k)),
             TCell(str(c.m)), TCell(_fmt_ms(c.k_ms)), TCell(_fmt_ms(c.predicted_ms)), TCell(_fmt_ms(c.m_ms)),
             TCell(f"{100 * c.rel_error:+.1f}%")] for c in checks]
    notes = ["error = (predicted - measured) / measured: how well scaling a K-block slice predicts a deeper "
             "M-block slice (the full-model estimate scales the timed slice the same way)",
             "median over rounds of each slice; IQRs in results_long"]
    return Table("timing_estimate_check", "Timing: error of the slice-to-full-model extrapolation", header,
                 [Section(None, rows)], notes, left=5)


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
