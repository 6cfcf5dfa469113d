"""How the report files a CHE cell: its identifying columns in the long table, how its cells are
pooled over seeds, and what its protocol fingerprint leaves out (docs/statistics.md §7)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

POOLED = True  # a table cell pools its runs over seeds
TABLE_GROUP = ("suite",)  # the columns that make one set of tables (then one per fingerprint)
CELL_IDENTITY = ("task", "pe", "lr", "seed")  # one run within a table group and fingerprint
PROTOCOL_AXES = ("task",)  # config keys the tables lay out (rows), besides the PE: not in the fingerprint


def cell_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The CHE columns of a cell from its resolved config (used for failed cells too)."""
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    return {"task": config.get("task"), "train_len": train.get("max_length"), "train_min_len": train.get("min_length"),
            "lr": train.get("lr")}


def protocol_extra(config: Mapping[str, Any]) -> dict[str, Any]:
    """No derived protocol keys."""
    return {}
