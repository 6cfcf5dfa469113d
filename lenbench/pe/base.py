"""The positional-encoding interface: one ``nn.Module`` with four hooks (DESIGN.md).

| hook | used by | contract |
|---|---|---|
| ``embed(x, pos)`` | absolute PEs | add position information to token embeddings once, at input |
| ``rotate(q, k, q_pos, k_pos)`` | RoPE family | transform q and k ``[B, H, N, d]`` per head |
| ``bias(q_pos, k_pos)`` | static relative biases | additive ``[H, Nq, Nk]`` fp32 bias, independent of content |
| ``scores(s, q, k, q_pos, k_pos)`` | DAPE, CoPE, Transformer-XL | rewrite the scaled logits ``s = qk^T/sqrt(d)`` |

Every hook is a no-op by default; the attention module asks which ones a PE overrides
(:meth:`PositionalEncoding.has_hook`) and picks its backend accordingly. Positions are explicit
tensors: :meth:`positions` returns ``arange(n)`` unless the PE randomizes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PEContext:
    """What a PE may know about the model it sits in.

    ``train_length`` is the longest training sequence (PEs that interpolate, like YaRN or FIRE,
    use it); ``max_length`` the longest sequence the run will evaluate (learned tables are sized
    to it); ``causal`` selects the causal (LM) or bidirectional (CHE encoder) form.
    """

    dim: int
    heads: int
    causal: bool
    train_length: int
    max_length: int
    layer: int = 0
    layers: int = 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class PositionalEncoding(nn.Module):
    """Base class of every PE. Subclasses override the hooks they need and document their formula.

    ``shared = True`` means one instance serves all layers (absolute PEs, T5's table); otherwise the
    model builds one instance per layer, each with its own parameters.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    shared: ClassVar[bool] = False

    def __init__(self, ctx: PEContext, **options: Any) -> None:
        super().__init__()
        if options:
            raise TypeError(f"unknown option(s) for {self.name}: {', '.join(sorted(options))}")
        self.ctx = ctx

    @classmethod
    def has_hook(cls, hook: str) -> bool:
        """True when this class overrides ``hook`` (one of embed, rotate, bias, scores)."""
        return getattr(cls, hook) is not getattr(PositionalEncoding, hook)

    def positions(self, n: int, device: torch.device) -> torch.Tensor:
        """Positions of an ``n``-token sequence: ``arange(n)`` (randomized PEs sample instead)."""
        return torch.arange(n, device=device)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Add absolute position information to ``x`` ``[B, N, E]``; identity by default."""
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform queries and keys ``[B, H, N, d]``; identity by default."""
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Additive logit bias ``[H, Nq, Nk]`` in fp32, added after the 1/sqrt(d) scaling."""
        raise NotImplementedError

    def score_mod(self) -> ScoreMod | None:
        """The same bias as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, or None.

        Only valid when positions are ``arange``; parameters are captured detached, so it serves
        evaluation (and CUDA training where the PE says so).
        """
        return None

    def scores(
        self,
        s: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
    ) -> torch.Tensor:
        """Rewrite scaled logits ``s`` ``[B, H, Nq, Nk]`` for a block of queries; identity by default."""
        return s


def relative_distance(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = q_pos[i] - k_pos[j]`` in fp32 (positive for past keys), shape ``[Nq, Nk]``."""
    return q_pos.to(torch.float32)[:, None] - k_pos.to(torch.float32)[None, :]
