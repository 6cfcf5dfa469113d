"""Model size presets (layers, width, heads) for the LM and timing suites.

350m/2.7b/6.7b follow the GPT-3 shapes used in the DAPE timing table (issue #5; docs/dape.md §3(c));
125m is the DAPE 125M config (12 x 768, 12 heads; docs/dape.md §3(d)); tiny is a CPU-sized decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from lenbench.registry import Registry


@dataclass(frozen=True)
class ModelSize:
    """A named transformer shape."""

    name: str
    layers: int
    dim: int
    heads: int
    description: str

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


SIZES: Registry[ModelSize] = Registry("model size")
for _size in (
    ModelSize("tiny", 2, 128, 4, "CPU-sized decoder for quick runs and tests"),
    ModelSize("125m", 12, 768, 12, "DAPE's 125M LM (GPT-2 small shape)"),
    ModelSize("350m", 24, 1024, 16, "GPT-3 350M shape (timing suite)"),
    ModelSize("2.7b", 32, 2560, 32, "GPT-3 2.7B shape (timing suite)"),
    ModelSize("6.7b", 32, 4096, 32, "GPT-3 6.7B shape (timing suite)"),
):
    SIZES.add(_size.name, _size)
