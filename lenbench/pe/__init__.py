"""Positional encodings: the interface (:mod:`lenbench.pe.base`) and every registered family."""

from lenbench.pe import absolute, bias, contextual, dape, rotary  # noqa: F401  (registration side effects)
from lenbench.pe.base import PEContext, PositionalEncoding, relative_distance
from lenbench.pe.registry import PES, PESpec, parse_pe_list, parse_pe_spec, pe_class, validate_spec

__all__ = [
    "PES",
    "PEContext",
    "PESpec",
    "PositionalEncoding",
    "parse_pe_list",
    "parse_pe_spec",
    "pe_class",
    "relative_distance",
    "validate_spec",
]
