"""The transformer (encoder and decoder), its attention module and size presets."""

from lenbench.model.sizes import SIZES, ModelSize
from lenbench.model.transformer import ModelConfig, Transformer

__all__ = ["SIZES", "ModelConfig", "ModelSize", "Transformer"]
