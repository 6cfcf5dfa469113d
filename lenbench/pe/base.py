"""The positional-encoding interface: one ``nn.Module`` with four hooks (docs/architecture.md).

| hook | used by | contract |
|---|---|---|
| ``embed(x, pos)`` | absolute PEs | add position information to token embeddings once, at input |
| ``rotate(q, k, q_pos, k_pos)`` | RoPE family | transform q and k ``[B, H, N, d]`` per head |
| ``bias(q_pos, k_pos)`` | static relative biases | additive ``[H, Nq, Nk]`` fp32 bias, independent of content |
| ``scores(s, q, k, q_pos, k_pos)`` | DAPE, CoPE, Transformer-XL | rewrite the scaled logits ``s = qk^T/sqrt(d)`` |

Every hook is a no-op by default; the attention module asks which ones a PE overrides
(:meth:`PositionalEncoding.has_hook`) and picks its backend accordingly. Positions are explicit
tensors: :meth:`positions` returns ``arange(n)`` unless the PE randomizes them. Each overridden
hook's output is checked against this contract once per model build (:mod:`lenbench.pe.contract`):
a head-independent ``[Nq, Nk]`` bias is refused on every backend, never broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lenbench.errors import LenbenchError

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
    # True when ``bias(q_pos, k_pos)`` depends on ``q_pos - k_pos`` only (ALiBi, Kerple, T5): attention
    # then builds the bias of any block from one row of ``2N - 1`` distances.
    translation_invariant: ClassVar[bool] = False
    # The registered name of the PE a paired comparison measures this one against (the report's
    # significance table pairs each PE with its baseline): DAPE-X names X (docs/dape.md). None: none.
    baseline: ClassVar[str | None] = None

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

    def causal_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, first: int) -> torch.Tensor:
        """:meth:`bias` with -inf on future keys, causal attention's mask by sequence index: query ``a``
        is token ``first + a``, key ``t`` token ``t``, and ``t > first + a`` is masked."""
        future = torch.arange(k_pos.shape[0], device=k_pos.device)[None, :] > torch.arange(
            first, first + q_pos.shape[0], device=k_pos.device
        )[:, None]
        return self.bias(q_pos, k_pos).masked_fill(future, float("-inf"))

    def compiled_bias(self) -> bool:
        """True when :meth:`bias` runs a compiled CPU kernel without gradients (FIRE's): CPU
        evaluation then takes query blocks, which beat a per-head ``score_mod`` (benchmarks/README.md)."""
        return False

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


def fp32_region(device: torch.device) -> torch.autocast:
    """Autocast off on ``device``: a position term (bias, FIRE's or DAPE's MLP) is formed in fp32
    even when the caller runs under bf16/fp16 autocast (issue 16; docs/dape.md §1.4)."""
    return torch.autocast(device.type, enabled=False)


def relative_distance(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = q_pos[i] - k_pos[j]`` in fp32 (positive for past keys), shape ``[Nq, Nk]``."""
    return q_pos.to(torch.float32)[:, None] - k_pos.to(torch.float32)[None, :]


# --------------------------------------------------------------------------------------------------
# Randomized positional encodings (Ruoss et al., ACL 2023; docs/pe.md §9, §18; docs/che.md §3.2).
#
# For a sequence of n tokens, draw n **distinct** integers uniformly from ``[0, L)`` without
# replacement, sort them ascending, and use them instead of ``0..n-1`` (RPE
# ``noisy_fixed_positional_encodings``: ``choice(replace=False)`` then ``sort``). The model then sees
# every position up to L during training, so test lengths up to L are in distribution.
#
# Policy, shared by every PE here (options):
#
# - ``max_position`` L: default 2048 for the bidirectional CHE encoder (RPE ``example.py`` and DAPE's
#   CHE appendix) and ``4 * train_length`` for the causal LM (DAPE's "randomised length = 4x
#   training length"); docs/pe.md §18. The CHE profiles also set it to 2048 explicitly.
# - when: one draw per :meth:`positions` call, i.e. once per forward for the input-level PEs and once
#   per layer per forward for rotary/ALiBi (RPE draws NOISY_ROTARY and NOISY_ALIBI per layer), shared
#   by the batch; from torch's global RNG, so the run's seed fixes it.
# - evaluation: RPE also samples at test time (docs/che.md §2.6), so ``eval_random=True`` by default;
#   ``eval_random=False`` uses ``arange(n)`` in eval mode.
# - ``n > L``: sampling without replacement is impossible. ``overflow="arange"`` (default) falls back
#   to ``0..n-1``, the policy of docs/pe.md §18 (the LM grid evaluates past 4 x 512); ``overflow="error"``
#   raises a :class:`LenbenchError`. ``randomized-learned`` has only L rows, so it always refuses n > L.
#   Every fallback is remembered (``overflowed``: the sequence lengths), and the suites record per
#   evaluation length whether it happened (:func:`overflow_lengths`), so a table never silently mixes
#   randomized and plain positions.


OVERFLOW = ("arange", "error")


def default_max_position(ctx: PEContext) -> int:
    """L = 2048 for the bidirectional CHE encoder, ``4 * train_length`` for the causal LM (docs/pe.md §18)."""
    return 4 * ctx.train_length if ctx.causal else 2048


def sample_positions(n: int, limit: int, device: torch.device | None = None) -> torch.Tensor:
    """``n`` distinct integers drawn uniformly from ``[0, limit)`` without replacement, sorted ascending."""
    if n > limit:
        raise LenbenchError(f"cannot draw {n} distinct positions from [0, {limit})")
    return torch.randperm(limit, device=device)[:n].sort().values


class RandomizedPositions(PositionalEncoding):
    """Mixin: :meth:`positions` returns ``n`` sorted distinct positions drawn from ``[0, L)``.

    Policy (the comment block above, Ruoss et al. 2023): ``max_position`` L defaults to 2048 for
    the CHE encoder and ``4 * train_length`` for the LM; a fresh draw per call (per forward for
    input-level PEs, per layer and forward in attention), also in eval mode unless
    ``eval_random=False``; for ``n > L`` ``overflow="arange"`` uses ``0..n-1`` and
    ``overflow="error"`` raises.

    The latest draw is kept in ``self.sample`` so that :meth:`score_mod` (which receives no
    positions) can use the very positions :meth:`bias` was given in the same forward.
    """

    def __init__(
        self,
        ctx: PEContext,
        max_position: int | None = None,
        overflow: str = "arange",
        eval_random: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(ctx, **options)
        self.max_position = int(max_position) if max_position is not None else default_max_position(ctx)
        if self.max_position < 1:
            raise LenbenchError(f"{self.name}: max_position must be >= 1, got {self.max_position}")
        if overflow not in OVERFLOW:
            raise LenbenchError(f"{self.name}: overflow must be one of {', '.join(OVERFLOW)}, got {overflow!r}")
        self.overflow = overflow
        self.eval_random = bool(eval_random)
        self.sample: torch.Tensor | None = None
        self.overflowed: set[int] = set()  # sequence lengths n > L that fell back to 0..n-1

    def draws(self, n: int) -> bool:
        """Whether this call draws random positions (False: ``arange``); applies the n > L policy and
        records a fallback in ``overflowed``."""
        if n > self.max_position:
            if self.overflow == "error":
                raise LenbenchError(
                    f"{self.name}: a sequence of {n} tokens needs {n} distinct positions in [0, {self.max_position}); "
                    f"raise max_position or use overflow=arange"
                )
            self.overflowed.add(int(n))
            return False
        return self.training or self.eval_random

    def positions(self, n: int, device: torch.device) -> torch.Tensor:
        pos = sample_positions(n, self.max_position, device) if self.draws(n) else torch.arange(n, device=device)
        self.sample = pos
        return pos


def randomized_modules(module: nn.Module) -> list[RandomizedPositions]:
    """The randomized-position PEs inside ``module`` (each shared instance once)."""
    return [m for m in module.modules() if isinstance(m, RandomizedPositions)]


def overflow_lengths(module: nn.Module) -> list[int]:
    """Sequence lengths at which a randomized PE in ``module`` fell back to ``0..n-1`` (n > L) since
    the last :func:`reset_overflow`, sorted."""
    return sorted({n for m in randomized_modules(module) for n in m.overflowed})


def reset_overflow(module: nn.Module) -> None:
    """Forget the recorded fallbacks of every randomized PE in ``module``."""
    for m in randomized_modules(module):
        m.overflowed.clear()


def position_limits(module: nn.Module) -> list[int]:
    """The ranges L of the randomized PEs in ``module`` (empty when none randomizes positions)."""
    return sorted({m.max_position for m in randomized_modules(module)})
