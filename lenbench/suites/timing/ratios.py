"""Timing tables from stored records alone: DAPE Table 1's layout with paired ratios and their
intervals (:func:`timing_tables`), and the slice-extrapolation check (:func:`estimate_checks`).

How a ratio is formed and why: :mod:`lenbench.suites.timing` and docs/timing.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lenbench import bench
from lenbench.errors import LenbenchError
from lenbench.model.sizes import SIZES

MODES = ("fwd", "train")
POLICIES = ("fastest", "paper")  # plus any forced backend name of Attention's BACKENDS
REFERENCE_PES = ("dape-kerple", "dape")  # the default Ratio denominator (the first one timed)
POLICY_TEXT = {
    "fastest": "fastest exact kernel per PE",
    "paper": "paper: every PE on DAPE's unfused NeoX logits path",
}


def size_params(size: str) -> float:
    """Approximate parameters of a named size's blocks (``12 x layers x width^2``); unknown: inf."""
    try:
        s = SIZES.get(size)
    except LenbenchError:
        return float("inf")
    return 12.0 * s.layers * s.dim * s.dim


def size_order(sizes: list[str]) -> list[str]:
    """Model sizes smallest first (350m < 2.7b < 6.7b), unknown names last by name."""
    return sorted(dict.fromkeys(sizes), key=lambda s: (size_params(s), s))


def _times(value: Any) -> list[float] | None:
    """A record's per-round times (a list, or JSON text in the long table)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return [float(v) for v in value] if isinstance(value, list) and value else None


@dataclass(frozen=True)
class TableEntry:
    """One (PE, size, length) entry of a timing table."""

    ms: float | None  # measured: the K-layer slice, or the full model (median over rounds)
    est_ms: float | None  # full-model estimate (slices only)
    ratio: bench.RatioStat | None  # paired per-round ratio to the reference PE, same group
    oom: bool = False
    rounds: int | None = None
    budget_limited: bool = False
    role: str | None = None  # "base" / "twin" of the identical-work control
    group: str | None = None  # the cell (group) that measured it

    @property
    def headline(self) -> float | None:
        """The full-model time: the estimate for slices, the measurement otherwise."""
        return self.est_ms if self.est_ms is not None else self.ms


def approx_one(ratio: bench.RatioStat, floor: float | None) -> bool:
    """A ratio indistinguishable from identical work: its interval contains 1, or its median is
    within the identical-work control's noise floor of 1."""
    return ratio.contains_one or (floor is not None and abs(ratio.median - 1.0) <= floor)


@dataclass
class TimingTable:
    """DAPE Table 1 layout for one mode: rows are PEs, column groups are sizes, columns lengths."""

    mode: str
    policy: str = "fastest"  # backend_policy of its cells
    pes: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # size -> (timed, total)
    backends: dict[str, str] = field(default_factory=dict)
    entries: dict[tuple[str, str, int], TableEntry] = field(default_factory=dict)
    reference: str | None = None
    devices: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    control: tuple[str, str] | None = None  # (base, twin) of the identical-work control
    noise: dict[tuple[str, int], bench.RatioStat] = field(default_factory=dict)  # (size, N) -> twin / base

    @property
    def policy_text(self) -> str:
        """What the backend policy means, for table titles."""
        return POLICY_TEXT.get(self.policy, f"{self.policy} backend forced for every PE")

    def sliced(self, size: str) -> bool:
        timed, total = self.layers[size]
        return timed < total

    def floor(self, size: str, n: int) -> float | None:
        """The noise floor at (size, N): how far the control's ratio interval reaches from 1."""
        stat = self.noise.get((size, n))
        return stat.reach if stat is not None else None


def default_reference(pes: list[str]) -> str | None:
    """The Ratio's denominator when none is chosen: DAPE-Kerple (``dape-kerple`` or ``dape``) when
    timed, else None (the caller names one, e.g. ``--reference-pe``)."""
    for wanted in REFERENCE_PES:
        for pe in pes:
            if pe == wanted:
                return pe
    return None


def _latest(records: list[dict[str, Any]]) -> dict[str, Any]:
    return max(records, key=lambda r: (str(r.get("measured_at") or ""), str(r.get("group") or "")))


def timing_tables(records: list[dict[str, Any]], reference: str | None = None) -> list[TimingTable]:
    """Tables (one per mode and backend policy; fwd first, fastest before paper) from stored timing
    records alone; ``--check-estimate`` slices are left to :func:`estimate_checks`.

    Where several groups timed the same (PE, size, length) the latest is shown; its Ratio pairs it
    with the reference PE of the same group (no Ratio if that group did not time the reference).
    ``reference`` None: :func:`default_reference`."""
    by_key: dict[tuple[str, str], dict[tuple[str, str, int], list[dict[str, Any]]]] = {}
    for rec in records:
        metric = str(rec.get("metric", ""))
        if rec.get("suite") != "timing" or not metric.startswith("ms_") or rec.get("estimate_check"):
            continue
        policy = str(rec.get("backend_policy") or "fastest")
        by_key.setdefault((metric[3:], policy), {}).setdefault(
            (rec["pe"], rec["size"], int(rec["eval_len"])), []).append(rec)
    tables = []
    for (mode, policy), cells in by_key.items():
        t = TimingTable(mode, policy)
        chosen = {key: _latest(recs) for key, recs in cells.items()}
        by_group: dict[str, dict[str, dict[str, Any]]] = {}
        for recs in cells.values():
            for r in recs:
                if r.get("group"):
                    by_group.setdefault(str(r["group"]), {})[r["pe"]] = r
        for (pe, size, n), rec in chosen.items():
            if pe not in t.pes:
                t.pes.append(pe)
            t.lengths[size] = sorted({*t.lengths.get(size, []), n})
            t.layers[size] = (int(rec["layers_timed"]), int(rec["layers"]))
            for attr, value in (("devices", rec.get("device")), ("precisions", rec.get("precision"))):
                if value and value not in getattr(t, attr):
                    getattr(t, attr).append(value)
            if rec.get("backend"):
                seen = t.backends.get(pe, "").split("/") if t.backends.get(pe) else []
                if rec["backend"] not in seen:
                    t.backends[pe] = "/".join([*seen, rec["backend"]])
            if rec.get("control_role") and isinstance(rec.get("control"), list | str):
                control = json.loads(rec["control"]) if isinstance(rec["control"], str) else rec["control"]
                t.control = (str(control[0]), str(control[1]))
        t.sizes = size_order(list(t.lengths))
        t.reference = reference if reference is not None else default_reference(t.pes)
        for (pe, size, n), rec in chosen.items():
            members = by_group.get(str(rec.get("group")), {})
            ratio = None
            ref = members.get(t.reference) if t.reference else None
            mine, theirs = _times(rec.get("times_ms")), _times(ref.get("times_ms")) if ref else None
            if rec.get("status") != "oom" and mine and theirs and len(mine) == len(theirs):
                ratio = bench.ratio_stat(mine, theirs)
            t.entries[(pe, size, n)] = TableEntry(
                rec.get("value"), rec.get("estimated_full_ms"), ratio, rec.get("status") == "oom",
                int(rec["rounds"]) if rec.get("rounds") is not None else None, bool(rec.get("budget_limited")),
                rec.get("control_role"), rec.get("group"))
            if rec.get("control_role") == "twin" and rec.get("status") != "oom":
                base = next((r for r in members.values() if r.get("control_role") == "base"), None)
                base_times = _times(base.get("times_ms")) if base and base.get("status") != "oom" else None
                if base_times and mine and len(base_times) == len(mine):
                    t.noise[(size, n)] = bench.ratio_stat(mine, base_times)
        tables.append(t)

    def order(t: TimingTable) -> tuple[int, int, str]:
        return ((MODES + (t.mode,)).index(t.mode), (POLICIES + (t.policy,)).index(t.policy), t.policy)

    return sorted(tables, key=order)


@dataclass(frozen=True)
class EstimateCheck:
    """``K``-layer slice time scaled to ``M`` layers against the measured ``M``-layer slice."""

    pe: str
    size: str
    eval_len: int
    mode: str
    policy: str
    k: int
    m: int
    k_ms: float
    m_ms: float
    k_iqr: float | None
    m_iqr: float | None

    @property
    def predicted_ms(self) -> float:
        """``K-layer time x M / K``, the extrapolation the full-model estimate uses."""
        return self.k_ms * self.m / self.k

    @property
    def rel_error(self) -> float:
        """``(predicted - measured) / measured``."""
        return (self.predicted_ms - self.m_ms) / self.m_ms


def estimate_checks(records: list[dict[str, Any]]) -> list[EstimateCheck]:
    """Every (K < M) pair of slice depths timed at one (PE, size, length, mode, policy, precision)."""
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for rec in records:
        metric = str(rec.get("metric", ""))
        if rec.get("suite") != "timing" or not metric.startswith("ms_") or rec.get("value") is None:
            continue
        if rec.get("status") not in (None, "ok", "done") or int(rec["layers_timed"]) >= int(rec["layers"]):
            continue
        key = (rec["pe"], rec["size"], int(rec["eval_len"]), metric[3:], str(rec.get("backend_policy") or "fastest"),
               rec.get("precision"), rec.get("device"))
        groups.setdefault(key, {})[int(rec["layers_timed"])] = rec
    out = []
    for (pe, size, n, mode, policy, _, _), by_k in sorted(groups.items(), key=lambda kv: (
            size_params(kv[0][1]), kv[0][1], kv[0][0], kv[0][2], kv[0][3], kv[0][4])):
        for k in sorted(by_k):
            for m in sorted(by_k):
                if k < m:
                    a, b = by_k[k], by_k[m]
                    out.append(EstimateCheck(pe, size, n, mode, policy, k, m, float(a["value"]), float(b["value"]),
                                             a.get("iqr"), b.get("iqr")))
    return out
