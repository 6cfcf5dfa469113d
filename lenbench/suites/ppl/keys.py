"""How the report files a ppl cell: its identifying columns in the long table, how its cells are
pooled over seeds, and its protocol fingerprint (docs/statistics.md §7).

The evaluation lengths enter the fingerprint only through the **evaluation-window signature**
(:func:`window_signature`): they matter only through the tokens they make the cell score. Under
``fixed_targets`` the fixed windows are cut to the longest length, so ``--eval-lengths 128,256,512``
scores other tokens than ``128..2048`` (another protocol), while ``dape`` and ``documents`` draw each
length's windows on their own (any length grid, one protocol). Records written before protocols
were named get ``documents`` (:data:`~lenbench.suites.ppl.protocols.LEGACY_PROTOCOL`), the only
protocol then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

LEGACY_PROTOCOL = "documents"  # what a record without a ``protocol`` field was scored with

POOLED = True  # a table cell pools its runs over seeds
TABLE_GROUP = ("suite", "dataset", "train_len", "protocol")  # one set of tables (then one per fingerprint)
CELL_IDENTITY = ("pe", "lr", "seed")  # one run within a table group and fingerprint
PROTOCOL_AXES = ("eval.lengths",)  # laid out as table columns; in the fingerprint as the window signature


def cell_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ppl columns of a cell from its resolved config (used for failed cells too)."""
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    evaluation = config.get("eval") if isinstance(config.get("eval"), Mapping) else {}
    return {"dataset": config.get("dataset"), "train_len": train.get("length"),
            "protocol": evaluation.get("protocol", LEGACY_PROTOCOL), "lr": train.get("lr")}


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """The long table with a ``protocol`` column, ppl rows without one given :data:`LEGACY_PROTOCOL`."""
    out = frame if "protocol" in frame else frame.assign(protocol=None)
    legacy = (out["suite"] == "ppl") & out["protocol"].isna()
    return out.assign(protocol=out["protocol"].astype(object).where(~legacy, LEGACY_PROTOCOL))


def window_signature(config: Mapping[str, Any]) -> str:
    """Which tokens a ppl cell's evaluation scores, as one string (module docstring).

    ``fixed_targets``: the window width ``W`` and span ``S`` of :mod:`lenbench.suites.ppl.protocols`
    with the sample count; ``dape`` and ``documents``: the protocol alone (each length on its own).
    """
    ev = config.get("eval") if isinstance(config.get("eval"), Mapping) else {}
    protocol = str(ev.get("protocol", LEGACY_PROTOCOL))
    lengths = [int(n) for n in ev.get("lengths") or []]
    if protocol != "fixed_targets" or not lengths:
        return protocol
    from lenbench.suites.ppl.protocols import fixed_window_length, span_length  # numpy: only when needed

    last = int(ev.get("last_tokens", 256))
    width = fixed_window_length(lengths, last)
    return f"fixed_targets W={width} S={span_length(lengths, last)} samples={ev.get('samples')}"


def protocol_extra(config: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation-window signature, standing for ``eval.lengths`` (module docstring)."""
    return {"eval.windows": window_signature(config)}
