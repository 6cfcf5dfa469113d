"""PE options whose suite default depends on the cell's training length, resolved to numbers per cell.

A profile's ``pe_defaults`` may name a rule instead of a value, e.g. ``l0: dape-neox``. A suite splits
those entries off (:func:`split_rules`), resolves its PEs with the plain defaults, and then, for each
training length ``T``, writes the rule's number into every spec that accepts the option and does not
set it (:func:`with_length_defaults`): ``fire`` trained at 512 becomes ``fire:l0=64``, so the cell's
config, its hash and the recorded options carry the number, and a changed rule never reuses a cell.

Rules:

- ``dape-neox`` (option ``l0`` of FIRE, DAPE-FIRE, DAPE-V2-FIRE): :func:`dape_neox_l0`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lenbench.errors import LenbenchError
from lenbench.pe.registry import PESpec, accepted_options, pe_class, validate_spec


def dape_neox_l0(cls: type, train_length: int) -> int:
    """FIRE's ``L0`` in DAPE's GPT-NeoX runs for training length ``T``: ``noise_seq_length // 2``.

    Code: ``positional_embeddings.py`` ``FIRE``/``FIRE_C``/``FIRE_DAPEV2`` store ``init_L // 2`` and
    ``transformer.py`` passes ``neox_args.noise_seq_length`` as ``init_L``. Configs (125M, the only
    training length released, T = 512): V1 ``noise_seq_length: 128`` (``125M_fire.yml``,
    ``125M_fire_c.yml``) -> ``L0 = 64``; V2 ``noise_seq_length: 512`` (``125M_fire_capev2.yml``) ->
    ``L0 = 256`` (docs/dape.md §1.5, §2.2). Other T keep the released ratio (a reconstruction: DAPE ships no
    config for them): V1 ``(T // 4) // 2`` (16 at T = 128), V2 ``T // 2``.
    """
    from lenbench.pe.dape import DAPEV2

    noise = train_length if issubclass(cls, DAPEV2) else train_length // 4
    return max(1, noise // 2)


RULES: dict[str, Callable[[type, int], Any]] = {"dape-neox": dape_neox_l0}


def split_rules(defaults: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """``pe_defaults`` -> (plain values, ``{option: rule name}``) for values naming a rule of :data:`RULES`."""
    plain, rules = {}, {}
    for key, value in (defaults or {}).items():
        if isinstance(value, str) and value in RULES:
            rules[key] = value
        else:
            plain[key] = value
    return plain, rules


def with_length_defaults(specs: list[PESpec], rules: dict[str, str], train_length: int) -> list[PESpec]:
    """``specs`` with each rule's value for ``train_length`` filled into the specs that accept the option
    and do not set it themselves (validated again); other specs unchanged."""
    if train_length < 1:
        raise LenbenchError(f"training length must be >= 1, got {train_length}")
    out = []
    for spec in specs:
        cls = pe_class(spec)
        accepted = accepted_options(cls)
        extra = {key: RULES[rule](cls, train_length) for key, rule in rules.items()
                 if key in accepted and key not in spec.options}
        if extra:
            spec = PESpec(spec.name, {**spec.options, **extra})
            validate_spec(spec)
        out.append(spec)
    return out
