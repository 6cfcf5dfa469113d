"""How the report files a timing cell (a group of PEs timed in interleaved rounds): its identifying
columns in the long table. Timing cells are not pooled over seeds and have no fingerprint
(docs/timing.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

POOLED = False
TABLE_GROUP: tuple[str, ...] = ()
CELL_IDENTITY: tuple[str, ...] = ()
PROTOCOL_AXES: tuple[str, ...] = ()


def cell_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The timing columns of a cell: a group, its PEs in ``group_pes`` (JSON text), ``pe`` None."""
    return {
        "group_pes": json.dumps(config.get("pes") or ([config["pe"]] if config.get("pe") else [])),
        "size": config.get("size"),
        "mode": config.get("mode"),
        "train_len": config.get("train_len"),
        "eval_len": config.get("eval_len"),
        "metric": f"ms_{config.get('mode')}",
        "layers": config.get("layers"),
        "layers_timed": config.get("layers_timed"),
        "device": config.get("device"),
        "backend_policy": config.get("backend_policy", "fastest"),
        "estimate_check": bool(config.get("estimate_check", False)),
    }


def protocol_extra(config: Mapping[str, Any]) -> dict[str, Any]:
    """No fingerprint: nothing to add."""
    return {}
