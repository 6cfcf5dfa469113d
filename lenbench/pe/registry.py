"""The PE registry and the ``--pe`` spec syntax.

A spec is ``name[:key=value,key=value]``; a list is comma-separated, and a ``key=value`` item
without a colon belongs to the PE before it, so ``dape-kerple:variant=concat,hidden=64,alibi``
is two PEs. ``path/to/file.py:ClassName`` loads a user's PE class from a file; installed
packages register through the ``lenbench.pe`` entry-point group.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenbench.errors import LenbenchError
from lenbench.registry import Registry

if TYPE_CHECKING:
    from lenbench.pe.base import PositionalEncoding

PES: Registry[type[PositionalEncoding]] = Registry("positional encoding", entry_point_group="lenbench.pe")


@dataclass(frozen=True)
class PESpec:
    """A PE name (or ``file.py:Class``) plus its options, as written on the command line or in YAML."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}:{opts}"

    @property
    def label(self) -> str:
        """Short display name: the registry name, or the class name of a file plugin."""
        return self.name.rsplit(":", 1)[-1] if _is_path_spec(self.name) else str(self)


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _is_path_spec(text: str) -> bool:
    head = text.split(":", 1)[0]
    return head.endswith(".py")


def parse_pe_spec(text: str) -> PESpec:
    """Parse one ``name[:k=v,...]`` or ``file.py:Class[:k=v,...]`` spec."""
    text = text.strip()
    if not text:
        raise LenbenchError("empty positional-encoding name")
    if _is_path_spec(text):
        parts = text.split(":")
        if len(parts) < 2 or not parts[1]:
            raise LenbenchError(f"PE plugin {text!r} must be written path/to/file.py:ClassName")
        name, rest = f"{parts[0]}:{parts[1]}", ":".join(parts[2:])
    else:
        name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise LenbenchError(f"PE option {item!r} in {text!r} must be key=value")
        options[key.strip().replace("-", "_")] = _coerce(value.strip())
    return PESpec(canonical_pe_name(name.strip().lower()) if not _is_path_spec(name) else name.strip(), options)


def canonical_pe_name(name: str) -> str:
    """The registered name an alias stands for (``dape`` -> ``dape-kerple``); other names unchanged.

    An alias is a registered class that only renames its one registered parent (it sets nothing
    but ``name`` and ``description``), so both spellings build the same PE and are one cell and
    one table column.
    """
    if name not in PES:
        return name
    cls: Any = PES.get(name)
    own = {k for k in vars(cls) if not k.startswith("__")}
    if len(cls.__bases__) != 1 or not own <= {"name", "description"}:
        return name
    parent = next((n for n, c in PES.items() if c is cls.__bases__[0]), None)
    return name if parent is None else canonical_pe_name(parent)


def canonical_pe_label(label: str) -> str:
    """A stored PE label or spec with an alias name canonicalised (``dape:hidden=32`` ->
    ``dape-kerple:hidden=32``); labels that do not parse as a spec stay as they are."""
    head, sep, rest = label.partition(":")
    if _is_path_spec(label) or not head:
        return label
    name = canonical_pe_name(head.strip().lower())
    return name + sep + rest if name != head else label


def parse_pe_list(text: str) -> list[PESpec]:
    """Split a comma-separated list of specs; ``k=v`` items attach to the preceding PE."""
    groups: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if "=" in item and ":" not in item.split("=", 1)[0] and groups and ":" not in item:
            groups[-1] += ("," if ":" in groups[-1] else ":") + item
        elif item:
            groups.append(item)
    if not groups:
        raise LenbenchError("no positional encoding given")
    return [parse_pe_spec(g) for g in groups]


def _load_from_file(spec_name: str) -> type[PositionalEncoding]:
    from lenbench.pe.base import PositionalEncoding

    path_text, _, class_name = spec_name.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise LenbenchError(f"PE plugin file not found: {path}")
    module_name = f"lenbench_user_pe_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise LenbenchError(f"cannot load PE plugin file {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise LenbenchError(f"PE plugin {path} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise LenbenchError(f"PE plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LenbenchError(f"PE plugin {path} defines no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, PositionalEncoding)):
        raise LenbenchError(f"{class_name} in {path} is not a lenbench.pe.PositionalEncoding subclass")
    return cls


def pe_class(spec: PESpec) -> type[PositionalEncoding]:
    """The class a spec names: a registered name or a ``file.py:Class`` plugin."""
    if _is_path_spec(spec.name):
        return _load_from_file(spec.name)
    return PES.get(spec.name)


def validate_spec(spec: PESpec) -> None:
    """Fail early, with one line, on an unknown name or option (before any training starts)."""
    cls = pe_class(spec)
    accepted = accepted_options(cls)
    unknown = sorted(set(spec.options) - accepted)
    if unknown:
        raise LenbenchError(
            f"unknown option(s) {', '.join(unknown)} for PE {spec.name!r} "
            f"(accepted: {', '.join(sorted(accepted)) or 'none'})"
        )
    # Option values are checked by the constructor: build once on a small model shape.
    from lenbench.pe.base import PEContext

    probe = PEContext(dim=32, heads=4, causal=False, train_length=8, max_length=16)
    try:
        cls(probe, **spec.options)
    except LenbenchError:
        raise
    except (TypeError, ValueError) as exc:
        raise LenbenchError(f"PE {spec.name!r}: bad option value ({exc})") from exc


def accepted_options(cls: type[PositionalEncoding]) -> set[str]:
    """Keyword options a PE class's constructors accept (its own and its bases')."""
    import inspect

    accepted: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object and klass.__module__ != "torch.nn.modules.module":
            params = inspect.signature(init).parameters
            accepted |= {p for p in params if p not in ("self", "ctx", "options", "args", "kwargs")}
    return accepted


def resolve_pes(value: str | list[Any], defaults: dict[str, Any] | None = None) -> list[PESpec]:
    """A suite's ``pes`` (comma text, YAML list or ``all``) -> validated specs.

    ``defaults`` (a profile's ``pe_defaults``, e.g. DAPE's ``hidden: 64``) fill options a PE
    accepts and the spec does not set; other PEs ignore them.
    """
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    specs = [parse_pe_spec(n) for n in PES.names()] if text.strip() == "all" else parse_pe_list(text)
    out: list[PESpec] = []
    for spec in specs:
        accepted = accepted_options(pe_class(spec))
        extra = {k: v for k, v in (defaults or {}).items() if k in accepted and k not in spec.options}
        full = PESpec(spec.name, {**extra, **spec.options})
        validate_spec(full)
        if str(full) not in {str(s) for s in out}:  # an alias and its name (``all``, ``dape,dape-kerple``) are one PE
            out.append(full)
    return out
