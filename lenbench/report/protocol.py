"""Protocol fingerprints: which cells may be pooled as seeds of one table cell (docs/statistics.md §7).

A cell's **protocol** is its resolved ``config.yaml`` flattened to dotted keys, minus

- what a table cell varies over or lays out: ``seed`` (the replicate), ``train.lr`` (chosen per
  PE on in-distribution data, :func:`lenbench.present.population.choose_lr`), the PE (``pe`` and every
  ``pe_*`` key, e.g. ``pe_identity``: the table's columns) and the CHE ``task`` (its rows);
- :data:`OPERATIONAL` keys, which change when and how a computation is carried out but not what
  it computes (how often checkpoints and logs are written, ``torch.compile``, gradient
  accumulation, evaluation batching by token budget);

and, for ppl, ``eval.lengths`` replaced by the **evaluation-window signature**
(:func:`window_signature`): the evaluation lengths matter only through the tokens they make the
cell score. Under ``fixed_targets`` the fixed windows are cut to the longest length, so
``--eval-lengths 128,256,512`` scores other tokens than ``128..2048`` (another protocol), while
``dape`` and ``documents`` draw each length's windows on their own (any length grid, one protocol).

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

from lenbench.suites.ppl.protocols import LEGACY_PROTOCOL, fixed_window_length, span_length

REPLICATE = ("seed", "train.lr")
AXES = {"che": ("task",), "ppl": ()}  # table rows besides the PE columns
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
    last = int(ev.get("last_tokens", 256))
    width = fixed_window_length(lengths, last)
    return f"fixed_targets W={width} S={span_length(lengths, last)} samples={ev.get('samples')}"


def protocol_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened protocol of a cell config (module docstring)."""
    suite = str(config.get("suite"))
    flat = flatten(config)
    drop = set(REPLICATE) | set(OPERATIONAL) | set(AXES.get(suite, ()))
    out = {k: v for k, v in flat.items() if k not in drop and not _is_pe_key(k)}
    if suite == "ppl":
        out.pop("eval.lengths", None)
        out["eval.windows"] = window_signature(config)
    return out


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
