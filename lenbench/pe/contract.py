"""The hook contract, checked once per model build: each hook a PE overrides runs on a small probe
and its output must have the shape, dtype and values the attention backends rely on.

| hook | probe call | contract |
|---|---|---|
| ``positions(n)`` | ``n = 5`` | ``[n]`` |
| ``embed(x, pos)`` | ``x [2, 5, E]`` | ``[2, 5, E]``, ``x``'s dtype, finite |
| ``rotate(q, k, q_pos, k_pos)`` | ``q, k [2, H, 5, d]`` | ``(q', k')`` of the same shapes and dtype, finite |
| ``bias(q_pos, k_pos)`` | 3 queries, 5 keys | ``[H, 3, 5]`` float32, no NaN or +inf |
| ``scores(s, q, k, q_pos, k_pos)`` | ``s [2, H, 3, 5]`` | ``s``'s shape and dtype, no NaN or +inf |

Queries and keys differ in number, so a transposed bias fails too. A bias or score may hold -inf
(a masked pair); NaN and +inf never make sense. A head-independent ``[Nq, Nk]`` bias is **refused**
on every backend alike (the check runs before any backend is chosen): broadcasting it silently
would hide a mistake in a PE that meant to have heads, and the C kernels take the bias's first axis
as its heads. A PE whose bias is the same for every head returns ``b.expand(heads, -1, -1)``.

The probe runs without gradients, under a forked RNG, and restores every parameter, buffer and
attribute the hooks changed (a randomized PE's last draw, a clamp in place), so building a model
gives the same weights and training draws as without the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from lenbench.errors import LenbenchError
from lenbench.pe.base import PositionalEncoding

BATCH, KEYS, QUERIES = 2, 5, 3  # probe shape: 3 queries (the last 3 positions) over 5 keys


def _shape(t: Any) -> str:
    return f"[{', '.join(str(n) for n in t.shape)}]" if isinstance(t, torch.Tensor) else type(t).__name__


@contextlib.contextmanager
def _restored(pe: PositionalEncoding) -> Iterator[None]:
    """Undo whatever the probe changes: parameters and buffers (in place) and plain attributes."""
    tensors = {k: v.detach().clone() for k, v in pe.state_dict(keep_vars=True).items()}
    attrs = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in pe.modules()]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            yield
        finally:
            pe.load_state_dict(tensors)
            for module, saved in attrs:
                for key in [k for k in vars(module) if not k.startswith("_") and k not in saved]:
                    delattr(module, key)
                for key, value in saved.items():
                    setattr(module, key, value)


class _Check:
    def __init__(self, name: str, probe: str) -> None:
        self.name, self.probe = name, probe

    def fail(self, hook: str, problem: str) -> LenbenchError:
        return LenbenchError(f"PE {self.name}: hook {hook} {problem}")

    def tensor(self, hook: str, out: Any, shape: tuple[int, ...], meaning: str, dtype: torch.dtype,
               finite: bool) -> None:
        """``out`` must be a tensor of ``shape`` and ``dtype``; finite, or (``finite=False``) without NaN/+inf."""
        expected = f"[{', '.join(map(str, shape))}] = [{meaning}]"
        if not isinstance(out, torch.Tensor):
            raise self.fail(hook, f"returned {_shape(out)}, expected a tensor {expected}")
        if tuple(out.shape) != shape:
            hint = ("; a head-independent bias must be expanded to every head: b.expand(heads, -1, -1)"
                    if hook.startswith("bias") and out.dim() == 2 else "")
            raise self.fail(hook, f"returned shape {_shape(out)}, expected {expected} ({self.probe}){hint}")
        if out.dtype != dtype:
            raise self.fail(hook, f"returned dtype {out.dtype}, expected {dtype} (shape {_shape(out)} is right)")
        bad = ~torch.isfinite(out) if finite else torch.isnan(out) | (out == float("inf"))
        if bool(bad.any()):
            what = "non-finite values" if finite else "NaN or +inf"
            raise self.fail(hook, f"returned {what} at initialization (shape {_shape(out)}, {int(bad.sum())} entries)")


def check_hooks(pe: PositionalEncoding, name: str, dim: int, heads: int) -> None:
    """Run each hook ``pe`` overrides on the probe (module docstring); a one-line :class:`LenbenchError`
    names the PE, the hook, the expected and the actual shape. ``name`` is how the error names the PE."""
    cls, d = type(pe), dim // heads
    check = _Check(name, f"probe: {heads} heads of dim {d}, {QUERIES} queries, {KEYS} keys, batch {BATCH}")
    device = next((t.device for t in [*pe.parameters(), *pe.buffers()]), torch.device("cpu"))
    dtype = torch.float32
    with _restored(pe):
        pos = pe.positions(KEYS, device)
        check.tensor("positions(n)", pos, (KEYS,), "n", pos.dtype if isinstance(pos, torch.Tensor) else dtype,
                     finite=True)
        q_pos, k_pos = pos[KEYS - QUERIES :], pos
        if cls.has_hook("embed"):
            x = torch.randn(BATCH, KEYS, dim, device=device, dtype=dtype)
            check.tensor("embed(x, pos)", pe.embed(x, pos), (BATCH, KEYS, dim), "batch, tokens, width", dtype, True)
        if cls.has_hook("rotate"):
            q, k = (torch.randn(BATCH, heads, KEYS, d, device=device, dtype=dtype) for _ in range(2))
            out = pe.rotate(q, k, pos, pos)
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise check.fail("rotate(q, k, q_pos, k_pos)", f"returned {_shape(out)}, expected a pair (q, k)")
            for which, t in zip("qk", out, strict=True):
                check.tensor(f"rotate(q, k, q_pos, k_pos) ({which})", t, (BATCH, heads, KEYS, d),
                             "batch, heads, tokens, head dim", dtype, True)
        if cls.has_hook("bias"):
            check.tensor("bias(q_pos, k_pos)", pe.bias(q_pos, k_pos), (heads, QUERIES, KEYS),
                         "heads, queries, keys", torch.float32, finite=False)
        if cls.has_hook("scores"):
            q = torch.randn(BATCH, heads, QUERIES, d, device=device, dtype=dtype)
            k = torch.randn(BATCH, heads, KEYS, d, device=device, dtype=dtype)
            s = q @ k.transpose(-1, -2) / d**0.5
            check.tensor("scores(s, q, k, q_pos, k_pos)", pe.scores(s, q, k, q_pos, k_pos),
                         (BATCH, heads, QUERIES, KEYS), "batch, heads, queries, keys", dtype, finite=False)
