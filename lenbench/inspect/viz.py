"""``lenbench viz``: what one attention layer of a trained LM adds to the logits, per head.

For one evaluation sequence of ``query`` tokens, the queries and keys of the chosen layer are
captured with a forward hook on its ``qkv`` projection (the forward stops there), the PE's own
methods are applied to them, and for the last query position (``query - 1``) against every key
``0 .. query - 1`` the figure shows, per head (a row each), whichever of these exist:

- ``logits q·k/√d``: the scaled content logits ``S`` (after the PE's ``rotate`` hook, e.g. RoPE);
- ``base bias B``: the PE's ``bias(q_pos, k_pos)`` (ALiBi, Kerple, ... and DAPE's base bias);
- ``DAPE f([S;B])``: the DAPE MLP's (V2: convolutions') output, ``pe.adaptive(S, B[, q_pos, k_pos])``;
- ``total (pre-softmax)``: what the softmax sees, ``pe.scores(...)`` or ``S + B``.

The model code is not changed; the PE's hooks compute every term, so any bias or DAPE PE works.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lenbench.errors import LenbenchError  # noqa: E402
from lenbench.present.figures import RC  # noqa: E402
from lenbench.results import CellDir, safe_torch_load  # noqa: E402

TERMS = {
    "logits": "logits q·k/√d",
    "bias": "base bias B",
    "dape": "DAPE f([S;B])",
    "total": "total (pre-softmax)",
}


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the chosen layer's q/k/v are captured."""


@dataclass
class LoadedModel:
    """A trained LM, its cell config (None for a bare checkpoint) and where it came from."""

    model: Any
    config: dict[str, Any] | None
    source: Path


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.yaml"
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LenbenchError(f"corrupted config {path}: {exc}") from exc


def load(path: Path | str) -> LoadedModel:
    """A ppl cell folder (its ``model.pt``), a ``model.pt`` file, or a training ``checkpoint.pt``
    next to its cell's ``config.yaml`` -> the trained model in eval mode."""
    from lenbench.model.transformer import ModelConfig, Transformer
    from lenbench.pe.registry import parse_pe_spec
    from lenbench.suites.ppl import run as ppl
    from lenbench.suites.ppl.config import PplCellConfig

    path = Path(path)
    if not path.exists():
        raise LenbenchError(f"{path} does not exist (give a ppl cell folder or its model.pt)")
    folder = path if path.is_dir() else path.parent
    config = _read_config(folder)
    if config is not None and config.get("suite") != "ppl":
        raise LenbenchError(f"{folder} is a {config.get('suite')!r} cell; viz needs a ppl (causal LM) cell")
    if path.is_dir():
        return LoadedModel(ppl.load_model(CellDir(path)), config, path / "model.pt")
    if path.name == ppl.MODEL_FILE or path.with_name(ppl.MODEL_META).exists():
        meta, weights = ppl.read_model_file(path)  # tensors only, weights_only=True; config from model.json
        model = Transformer(ModelConfig(**meta["model_config"]), parse_pe_spec(meta["pe"]))
        model.load_state_dict(weights)
        return LoadedModel(model.eval(), config, path)
    state = safe_torch_load(path, "checkpoint")
    if isinstance(state, dict) and "model_config" in state:  # a model.pt of lenbench before issue 26, renamed
        model = Transformer(ModelConfig(**state["model_config"]), parse_pe_spec(state["pe"]))
        model.load_state_dict(state["state_dict"])
    elif isinstance(state, dict) and "model" in state and config is not None:
        from lenbench.data.tokenizer import spec_vocab_size

        spec = PplCellConfig.from_dict(config)
        vocab = spec_vocab_size(spec.data["tokenizer"])
        model = Transformer(ppl.model_config(spec.model, spec.length, spec.lengths, vocab), parse_pe_spec(spec.pe))
        model.load_state_dict(state["model"])
    else:
        raise LenbenchError(f"{path} is neither a model.pt nor a training checkpoint next to its config.yaml")
    return LoadedModel(model.eval(), config, path)


def eval_sequence(loaded: LoadedModel, length: int) -> tuple[torch.Tensor, str]:
    """The first evaluation sequence of ``length`` tokens of the cell's corpus (ids ``[1, length]``)."""
    from lenbench.suites.ppl import run as ppl
    from lenbench.suites.ppl.config import PplCellConfig
    from lenbench.suites.ppl.protocols import document_windows

    if loaded.config is None:
        raise LenbenchError(f"no config.yaml next to {loaded.source}: cannot tell which corpus to evaluate on")
    corpus = ppl.load_cell_corpus(PplCellConfig.from_dict(loaded.config))
    ev = loaded.config.get("eval", {})
    windows, concatenated, _ = document_windows(
        corpus.validation, length, int(ev.get("samples", 1)), int(ev.get("min_sequences", 1))
    )
    where = f"{loaded.config.get('dataset', '?')} validation" + (" (documents joined)" if concatenated else "")
    return torch.from_numpy(windows[:1, :length]), where


def attention_terms(model: Any, ids: torch.Tensor, layer: int) -> dict[str, np.ndarray]:
    """The terms of the module docstring for the last query of ``ids``: ``{name: [heads, keys]}``."""
    blocks = model.blocks
    if not -len(blocks) <= layer < len(blocks):
        raise LenbenchError(f"--layer {layer} is out of range: the model has {len(blocks)} layers")
    attn = blocks[layer].attn
    captured: dict[str, torch.Tensor] = {}

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
        captured["qkv"] = output
        raise _Captured

    handle = attn.qkv.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(ids)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "qkv" not in captured:
        raise LenbenchError("the chosen layer's attention was not reached in the forward pass")
    pe = attn.pe
    b, n, _ = captured["qkv"].shape
    with torch.no_grad():
        q, k, _v = captured["qkv"].view(b, n, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        pos = pe.positions(n, ids.device)
        q, k = pe.rotate(q, k, pos, pos)
        qb, q_pos, k_pos = q[:, :, n - 1 :], pos[n - 1 :], pos
        s = torch.matmul(qb, k.transpose(-1, -2)) / math.sqrt(attn.head_dim)  # [1, H, 1, N]
        terms = {"logits": s}
        cls = type(pe)
        bias = pe.bias(q_pos, k_pos) if cls.has_hook("bias") else None
        if bias is not None:
            terms["bias"] = bias[None]
        if hasattr(pe, "adaptive") and bias is not None:  # DAPE: f(S, B); V2's also takes the positions
            wide = len(inspect.signature(pe.adaptive).parameters) >= 4
            terms["dape"] = pe.adaptive(s, bias, q_pos, k_pos) if wide else pe.adaptive(s, bias)
        if cls.has_hook("scores"):
            terms["total"] = pe.scores(s, qb, k, q_pos, k_pos)
        elif bias is not None:
            terms["total"] = s + bias[None].to(s.dtype)
    return {name: t[0, :, 0].float().numpy() for name, t in terms.items()}


def plot_terms(terms: dict[str, np.ndarray], heads: list[int], title: str) -> Figure:
    """Rows = heads, columns = terms (see :data:`TERMS`); x = key position, one line per panel."""
    names = [t for t in TERMS if t in terms]
    keys = np.arange(terms["logits"].shape[1])
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(heads), len(names), figsize=(2.3 * len(names) + 0.4, 1.5 * len(heads) + 0.6),
            squeeze=False, sharex=True,
        )  # fmt: skip
        for r, h in enumerate(heads):
            for c, name in enumerate(names):
                ax = axes[r, c]
                ax.plot(keys, terms[name][h], color=f"C{c}", linewidth=0.8)
                ax.set_title(f"head {h}: {TERMS[name]}")
                if r == len(heads) - 1:
                    ax.set_xlabel("key position")
        fig.suptitle(title)
        fig.tight_layout()
    return fig


def parse_heads(text: str | None, n_heads: int) -> list[int]:
    if text is None or text.strip().lower() == "all":
        return list(range(n_heads))
    try:
        heads = [int(h) for h in text.split(",") if h.strip()]
    except ValueError as exc:
        raise LenbenchError(f"--heads takes head numbers like 0,1,2; got {text!r}") from exc
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad or not heads:
        raise LenbenchError(f"--heads {text!r}: the model has heads 0..{n_heads - 1}")
    return heads


def visualize(
    path: Path | str, query: int = 8192, layer: int = 0, heads: str | None = None, out: Path | str | None = None
) -> tuple[Figure, Path]:
    """Load a trained ppl model, run one evaluation sequence of ``query`` tokens and plot the terms
    for its last query position; writes ``out`` (default ``<cell>/attention_L<layer>_q<query>.png``)."""
    if query < 1:
        raise LenbenchError(f"--query must be >= 1, got {query}")
    loaded = load(path)
    ids, where = eval_sequence(loaded, query)
    model = loaded.model
    layer_index = layer % len(model.blocks) if -len(model.blocks) <= layer < len(model.blocks) else layer
    terms = attention_terms(model, ids, layer_index)
    chosen = parse_heads(heads, terms["logits"].shape[0])
    pe = loaded.config.get("pe") if loaded.config else type(model.blocks[layer_index].attn.pe).name
    title = f"{pe}, layer {layer_index}, query position {query - 1} ({where})"
    fig = plot_terms(terms, chosen, title)
    folder = loaded.source.parent
    target = Path(out) if out is not None else folder / f"attention_L{layer_index}_q{query}.png"
    if not target.suffix:  # matplotlib would add ".png" itself; name the file it writes
        target = target.with_suffix(".png")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=150, bbox_inches="tight")
    except OSError as exc:
        raise LenbenchError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return fig, target
