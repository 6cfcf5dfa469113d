"""The PE registry and the ``--pe`` spec syntax.

A spec is ``name[:key=value,key=value]``; a list is comma-separated, and a ``key=value`` item
without a colon belongs to the PE before it, so ``dape-kerple:variant=concat,hidden=64,alibi``
is two PEs. ``path/to/file.py:ClassName`` loads a user's PE class from a file; installed
packages register through the ``lenbench.pe`` entry-point group.

A PE's **identity** (:func:`pe_identity`, stored in every cell's config beside the spec) is what
decides its behaviour: its class, every constructor option resolved (the defaults included, so a
changed default is another cell), and, for a plugin, its code: the sha256 of the file of a
``file.py:Class`` plugin, or the distribution's name, version and file hashes of an entry point.
Editing a plugin therefore never reuses results computed with the old code. The hash covers the
plugin's own file (or distribution), not modules it imports from elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
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
        """Display name with options (a table's column, part of a cell's folder name): the spec as
        written for a registered PE; for a ``file.py:Class`` plugin its declared ``name`` instead of
        the path (:func:`plugin_name`), so ``mype.py:LogBias:scale=2`` reads ``log-bias:scale=2``."""
        if not _is_path_spec(self.name):
            return str(self)
        return str(PESpec(plugin_name(pe_class(self)), self.options))


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


def pe_baseline(label: str) -> str | None:
    """The registered name of the PE that ``label``'s class names as its baseline
    (:attr:`~lenbench.pe.base.PositionalEncoding.baseline`; ``dape-alibi:hidden=64`` -> ``alibi``,
    ``dape`` -> ``kerple``); None for a PE without one, and for a label no registered class carries
    (a file plugin's declared name, a PE no longer registered)."""
    name = canonical_pe_name(label.partition(":")[0].strip().lower())
    if _is_path_spec(label) or name not in PES:
        return None
    return PES.get(name).baseline


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


_FILE_MODULES: dict[tuple[str, str], ModuleType] = {}  # (resolved path, sha256 of the file) -> module


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes; a one-line error when it cannot be read."""
    return hashlib.sha256(_read_plugin(path)).hexdigest()


def _read_plugin(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LenbenchError(f"cannot read PE plugin file {path}: {exc.strerror or exc}") from exc


def _plugin_path(spec_name: str) -> Path:
    path = Path(spec_name.partition(":")[0])
    if not path.is_file():
        raise LenbenchError(f"PE plugin file not found: {path}")
    return path


def _file_module(path: Path) -> tuple[ModuleType, str]:
    """The plugin file's module and the sha256 of the bytes it was executed from.

    The file is executed once per process and content: later calls read and hash it (cheap) and
    return the cached module; an edited file loads anew, so a long-lived process never runs stale
    code. The bytes hashed are the bytes executed, so a cell's identity names the code that ran.
    """
    source = _read_plugin(path)
    resolved, digest = str(path.resolve()), hashlib.sha256(source).hexdigest()
    module = _FILE_MODULES.get((resolved, digest))
    if module is not None:
        return module, digest
    where = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    module_name = f"lenbench_user_pe_{where}_{digest[:12]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None:
        raise LenbenchError(f"cannot load PE plugin file {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # the bytes hashed above, not a re-read
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise LenbenchError(f"PE plugin {path} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        del sys.modules[module_name]
        raise LenbenchError(f"PE plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _FILE_MODULES[(resolved, digest)] = module
    return module, digest


def _load_from_file(spec_name: str) -> tuple[type[PositionalEncoding], str]:
    """A ``file.py:Class`` plugin's class and the sha256 of the file content it was loaded from."""
    from lenbench.pe.base import PositionalEncoding

    class_name = spec_name.partition(":")[2]
    path = _plugin_path(spec_name)
    module, digest = _file_module(path)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LenbenchError(f"PE plugin {path} defines no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, PositionalEncoding)):
        raise LenbenchError(f"{class_name} in {path} is not a lenbench.pe.PositionalEncoding subclass")
    return cls, digest


def pe_class(spec: PESpec) -> type[PositionalEncoding]:
    """The class a spec names: a registered name or a ``file.py:Class`` plugin (executed once per
    process and file content, :func:`_file_module`)."""
    if _is_path_spec(spec.name):
        return _load_from_file(spec.name)[0]
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
        pe = cls(probe, **spec.options)
    except LenbenchError:
        raise
    except (TypeError, ValueError) as exc:
        raise LenbenchError(f"PE {spec.name!r}: bad option value ({exc})") from exc
    from lenbench.pe.contract import check_hooks

    check_hooks(pe, spec_name(spec), probe.dim, probe.heads)  # before any cell starts


def spec_name(spec: PESpec) -> str:
    """How errors name a PE: ``'label'``, plus the spec where it differs (a plugin's file)."""
    return repr(spec.label) if spec.label == str(spec) else f"{spec.label!r} ({spec})"


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


def plugin_name(cls: type[PositionalEncoding]) -> str:
    """A plugin class's display name: its declared ``name`` (the class name when it declares none);
    ``name@ClassName`` when a registered PE already has that name."""
    declared = cls.__dict__.get("name")
    name = declared if isinstance(declared, str) and declared else cls.__name__
    return f"{name}@{cls.__name__}" if name in PES and PES.get(name) is not cls else name


SKIPPED_PARAMETERS = ("self", "ctx")


def _plain(value: Any) -> Any:
    """A default as YAML/JSON-safe data that reads back equal (tuples -> lists, other objects -> repr)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if not math.isnan(value) else "nan"
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Every keyword default of a class's constructors, base classes first, so a subclass's wins."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object or klass.__module__.startswith("torch."):
            continue
        for name, param in inspect.signature(init).parameters.items():
            kinds = (param.VAR_POSITIONAL, param.VAR_KEYWORD)
            if name not in SKIPPED_PARAMETERS and param.kind not in kinds and param.default is not param.empty:
                defaults[name] = _plain(param.default)
    return defaults


def resolved_options(spec: PESpec, cls: type | None = None) -> dict[str, Any]:
    """The options a PE is built with: every constructor default, overridden by the spec's options."""
    defaults = constructor_defaults(cls if cls is not None else pe_class(spec))
    return {**defaults, **{k: _plain(v) for k, v in spec.options.items()}}


def _source_files(dist: metadata.Distribution) -> list[Path]:
    return sorted(Path(str(dist.locate_file(f))) for f in dist.files or [] if f.suffix in (".py", ".c", ".cu"))


@cache
def distribution_code(name: str, version: str) -> str:
    """sha256 over an installed distribution's source files (names and bytes), cached per version."""
    dist = metadata.distribution(name)
    digest = hashlib.sha256()
    for path in _source_files(dist):
        digest.update(path.name.encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _entry_point_dist(name: str) -> metadata.Distribution | None:
    for ep in metadata.entry_points(group=PES.entry_point_group or ""):
        if ep.name == name:
            return ep.dist
    return None


def _installed_code(name: str, cls: type[PositionalEncoding]) -> dict[str, Any] | None:
    """What identifies a registered PE's code: None for lenbench's own PEs (the manifest's source
    hash covers them); for an installed plugin its distribution's name, version and file hashes,
    plus the sha256 of the class's own source file (an editable install lists no source files)."""
    if cls.__module__ == "lenbench" or cls.__module__.startswith("lenbench."):
        return None
    code: dict[str, Any] = {"module": cls.__module__}
    dist = _entry_point_dist(name)
    if dist is not None:
        dist_name = dist.metadata["Name"]
        code.update(distribution=dist_name, version=dist.version,
                    files_sha256=distribution_code(dist_name, dist.version))
    source = inspect.getsourcefile(cls)
    if source is not None and Path(source).is_file():
        code["sha256"] = file_sha256(Path(source))
    return code


def pe_identity(spec: PESpec) -> dict[str, Any]:
    """What decides a PE's behaviour, stored in each cell's config (module docstring): display label,
    class, every option resolved, a wrapped base class's defaults (DAPE), and a plugin's code.

    A file plugin is loaded once here, so its class, defaults and code hash all come from the same
    file content."""
    code: dict[str, Any] | None
    if _is_path_spec(spec.name):
        cls, digest = _load_from_file(spec.name)
        where = _plugin_path(spec.name).name
        label = str(PESpec(plugin_name(cls), spec.options))
        code = {"file": where, "sha256": digest}
    else:
        cls = PES.get(spec.name)
        where, label, code = cls.__module__, spec.label, _installed_code(spec.name, cls)
    identity: dict[str, Any] = {
        "label": label,
        "class": f"{where}:{cls.__qualname__}",
        "options": resolved_options(spec, cls),
    }
    base = getattr(cls, "base_class", None)
    if isinstance(base, type):
        identity["base"] = {"class": f"{base.__module__}:{base.__qualname__}", "defaults": constructor_defaults(base)}
    if code is not None:
        identity["code"] = code
    return identity


def pe_entries(spec: PESpec) -> dict[str, Any]:
    """A cell config's PE entries, the one way every suite writes them: ``pe`` (the spec, which
    builds the PE) and ``pe_identity`` (:func:`pe_identity`, which makes a changed default or an
    edited plugin another cell)."""
    return {"pe": str(spec), "pe_identity": pe_identity(spec)}


def pe_label(config: dict[str, Any]) -> Any:
    """A cell's PE as tables show it: the identity's label (a plugin's declared name plus options),
    else the spec (cells written before identities were stored)."""
    identity = config.get("pe_identity")
    label = identity.get("label") if isinstance(identity, dict) else None
    return str(label) if label else config.get("pe")
