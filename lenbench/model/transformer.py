"""One transformer for every suite: the CHE encoder and the causal LM decoder share these blocks.

CHE encoder (docs/che.md §2.3): token embedding x sqrt(E), additive PE then dropout (absolute PEs
only), post-LN blocks ``a = LN(h + Drop(MHA(h)))``, ``h = LN(a + Drop(FFN(a)))`` with a ReLU FFN
of width 4E, no final LN, a per-position ``Linear(E -> C)`` head. Haiku initialisation:
truncated normal (std 1/sqrt(fan_in), +-2 sigma) for linears, zero biases, embedding std 0.02.

LM decoder (GPT-2 style, docs/pe.md / docs/dape.md §3(d)): pre-LN blocks, GELU FFN, a final LN,
causal attention, N(0, 0.02) initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenbench.model.attention import Attention
from lenbench.model.dropout import Dropout
from lenbench.pe.base import PEContext, PositionalEncoding
from lenbench.pe.contract import check_hooks
from lenbench.pe.registry import PESpec, pe_class, spec_name


@dataclass(frozen=True)
class ModelConfig:
    """Shape and flavour of a transformer. ``vocab_size`` counts input ids (CHE: V_in + 1)."""

    vocab_size: int
    out_size: int
    dim: int = 64
    layers: int = 5
    heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.1
    causal: bool = False
    prenorm: bool = False
    activation: str = "relu"
    embed_scale: bool = True
    final_norm: bool = False
    init: str = "haiku"  # "haiku" (CHE) or "gpt2" (LM)
    train_length: int = 40
    max_length: int = 2048
    attention_backend: str = "auto"

    @staticmethod
    def gpt(vocab_size: int, dim: int, layers: int, heads: int, dropout: float, train_length: int,
            max_length: int, attention_backend: str = "auto") -> ModelConfig:
        """The GPT-style causal decoder of the LM protocol (docs/dape.md §3(d)): pre-LN blocks,
        GELU, a final LayerNorm, N(0, 0.02) init, unscaled embeddings, the vocabulary as output."""
        return ModelConfig(vocab_size=vocab_size, out_size=vocab_size, dim=dim, layers=layers, heads=heads,
                           dropout=dropout, causal=True, prenorm=True, activation="gelu", embed_scale=False,
                           final_norm=True, init="gpt2", train_length=train_length, max_length=max_length,
                           attention_backend=attention_backend)


class Block(nn.Module):
    """Attention + feed-forward with residuals; post-LN (CHE) or pre-LN (GPT)."""

    def __init__(self, cfg: ModelConfig, pe: PositionalEncoding) -> None:
        super().__init__()
        self.prenorm = cfg.prenorm
        self.attn = Attention(cfg.dim, cfg.heads, pe, cfg.causal, cfg.attention_backend)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.ff_in = nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim)
        self.ff_out = nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        self.act = nn.ReLU() if cfg.activation == "relu" else nn.GELU()
        self.drop = Dropout(cfg.dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.act(self.ff_in(x)))

    def forward(self, x: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """Outputs at every position, or at the last ``last`` ones only (keys still see every token)."""
        skip = x if last is None else x[:, -last:]
        if self.prenorm:
            x = self.drop.residual(skip, self.attn(self.norm1(x), last))
            return self.drop.residual(x, self.ffn(self.norm2(x)))
        x = self.norm1(self.drop.residual(skip, self.attn(x, last)))
        return self.norm2(self.drop.residual(x, self.ffn(x)))


def build_pes(cfg: ModelConfig, spec: PESpec) -> list[PositionalEncoding]:
    """One PE per layer, or one shared instance when the PE class says ``shared``."""
    cls = pe_class(spec)

    def make(layer: int) -> PositionalEncoding:
        ctx = PEContext(cfg.dim, cfg.heads, cfg.causal, cfg.train_length, cfg.max_length, layer, cfg.layers)
        return cls(ctx, **spec.options)

    if cls.shared:
        pe = make(0)
        return [pe] * cfg.layers
    return [make(i) for i in range(cfg.layers)]


class Transformer(nn.Module):
    """Token ids ``[B, N]`` -> logits ``[B, N, out_size]`` (a prediction at every position)."""

    def __init__(self, cfg: ModelConfig, pe: PESpec) -> None:
        super().__init__()
        self.cfg = cfg
        pes = build_pes(cfg, pe)
        check_hooks(pes[0], spec_name(pe), cfg.dim, cfg.heads)  # once per model build (lenbench.pe.contract)
        self.pe_input = pes[0]
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, p) for p in pes)
        self.final_norm = nn.LayerNorm(cfg.dim) if cfg.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.out_size)
        self.drop = Dropout(cfg.dropout)
        self.embeds_positions = type(self.pe_input).has_hook("embed")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Haiku defaults (CHE) or GPT-2 N(0, 0.02) (LM); PE modules keep their own init."""
        owned_by_pe = {id(m) for pe in self.modules() if isinstance(pe, PositionalEncoding) for m in pe.modules()}
        for module in [self.embed, self.head, *self.blocks.modules()]:
            if isinstance(module, nn.Linear) and id(module) not in owned_by_pe:
                if self.cfg.init == "haiku":
                    std = 1.0 / math.sqrt(module.in_features)
                    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                else:
                    nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embed.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """Logits at every position, or ``[B, last, C]`` at the last ``last`` positions only.

        With ``last``, the final block computes queries, feed-forward and head for those positions
        alone (its keys and values still cover every token), which equals slicing the full output:
        an encoder's other final-layer outputs are never read (CHE reads the last
        ``output_length(N)`` positions, docs/che.md §2.1). Causal models never need it.
        """
        x = self.embed(ids)
        if self.cfg.embed_scale:
            x = x * math.sqrt(self.cfg.dim)
        if self.embeds_positions:
            x = self.drop(self.pe_input.embed(x, self.pe_input.positions(ids.shape[1], ids.device)))
        if last is not None and not 0 < last <= ids.shape[1]:
            raise ValueError(f"cannot read the last {last} of {ids.shape[1]} positions")
        if last == ids.shape[1]:
            last = None  # every position is read: the plain forward
        *inner, final = self.blocks
        for block in inner:
            x = block(x)
        x = final(x, last)
        return self.head(self.final_norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy, logits ``[..., C]`` vs class ids ``[...]`` (docs/che.md §2.4: unmasked)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
