"""Protocol fingerprints: which cells may be pooled as seeds of one table cell (docs/statistics.md §7).

A cell's **protocol** is its resolved ``config.yaml`` flattened to dotted keys, minus

- what a table cell varies over or lays out: ``seed`` (the replicate), ``train.lr`` (chosen per
  PE on in-distribution data, :func:`lenbench.present.population.choose_lr`), the PE (``pe`` and every
  ``pe_*`` key, e.g. ``pe_identity``: the table's columns) and the suite's ``protocol_axes`` (e.g.
  CHE's ``task``, its rows);
- :data:`OPERATIONAL` keys, which change when and how a computation is carried out but not what
  it computes (how often checkpoints and logs are written, ``torch.compile``, gradient
  accumulation, evaluation batching by token budget);

plus the suite's ``protocol_extra(config)`` keys (e.g. ppl's evaluation-window signature, which
stands for its evaluation lengths: :mod:`lenbench.suites.ppl.keys`).

The fingerprint is the first 10 hex digits of the sha256 of the protocol as sorted JSON: keys a
later lenbench adds to cell configs are covered without a change here. Every other key splits:
steps, model shape, evaluation samples and batch size (CHE's per-length accuracy is a mean over
sub-batches), dropout at evaluation, precision, tokenizer, corpus, fit threshold, test lengths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lenbench.suites import get_suite, suite_names

REPLICATE = ("seed", "train.lr")
OPERATIONAL = (
    "train.checkpoint_every",  # when checkpoints are written (a resume restores the exact state)
    "train.log_every",  # how often the training log gets a line
    "train.compile",  # torch.compile: the same model and maths, compiled
    "train.micro_batch_size",  # gradient accumulation: the same global batch
    "eval.tokens_per_batch",  # ppl evaluation batching: exp(mean CE) over the same targets
)
ABSENT = "(absent)"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _is_pe_key(key: str) -> bool:
    top = key.split(".", 1)[0]
    return top == "pe" or top.startswith("pe_")


def protocol_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened protocol of a cell config (module docstring)."""
    suite = get_suite(str(config.get("suite"))) if config.get("suite") in suite_names() else None
    flat = flatten(config)
    drop = set(REPLICATE) | set(OPERATIONAL) | set(suite.protocol_axes if suite else ())
    out = {k: v for k, v in flat.items() if k not in drop and not _is_pe_key(k)}
    return out | (suite.protocol_extra(config) if suite else {})


def fingerprint(protocol: Mapping[str, Any]) -> str:
    """10 hex digits of sha256 over the protocol as sorted JSON."""
    text = json.dumps(dict(protocol), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def differences(protocols: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{fingerprint: "key=value, ..."}`` naming, for each protocol, the keys where the given
    protocols differ (empty text when there is only one)."""
    varying = varying_keys(protocols.values())
    return {fp: ", ".join(f"{k}={_show(p.get(k, ABSENT))}" for k in varying) for fp, p in protocols.items()}


def varying_keys(protocols: Iterable[Mapping[str, Any]]) -> list[str]:
    """The dotted keys whose values differ among ``protocols``."""
    items = list(protocols)
    keys = sorted({k for p in items for k in p})
    return [k for k in keys if len({json.dumps(p.get(k, ABSENT), default=str) for p in items}) > 1]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return f"{value[0]}..{value[-1]} ({len(value)})" if len(value) > 4 else ",".join(map(str, value))
    return str(value)
