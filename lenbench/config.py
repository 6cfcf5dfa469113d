"""Suite YAML files -> typed dataclasses, with one-line errors for every malformed input.

A suite file has ``suite``, ``description``, ``grid`` (what to sweep) and ``profiles`` (``paper``:
the published protocol, ``quick``: minutes on a CPU). :func:`from_dict` turns nested mappings into
the suite's dataclasses, rejecting unknown keys and wrong types with the file and key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lenbench.errors import LenbenchError

T = TypeVar("T")
_RANGE = re.compile(r"^(-?\d+)-(-?\d+)(?::(\d+))?$")

SUITES_DIRS = (
    Path(__file__).resolve().parent / "_suites",  # installed wheel
    Path(__file__).resolve().parent.parent / "suites",  # source checkout
)


@dataclass(frozen=True)
class SuiteFile:
    """A parsed suite YAML (profiles still raw mappings until the suite types them)."""

    name: str
    description: str
    path: Path
    grid: dict[str, Any]
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def suite_files() -> dict[str, Path]:
    """Bundled suites by name (first directory that exists wins)."""
    for folder in SUITES_DIRS:
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def find_suite(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_dir():
            raise LenbenchError(f"suite file {path} is a directory")
        if not path.exists():
            raise LenbenchError(f"suite file {path} does not exist")
        return path
    known = suite_files()
    if name_or_path not in known:
        close = difflib.get_close_matches(name_or_path.lower(), list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LenbenchError(f"unknown suite {name_or_path!r}{hint} (known: {', '.join(known) or 'none'})")
    return known[name_or_path]


def load_suite(name_or_path: str) -> SuiteFile:
    """Read and structurally validate a suite YAML."""
    path = find_suite(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LenbenchError(f"malformed YAML in {path}{where}: {problem}") from exc
    except OSError as exc:
        raise LenbenchError(f"cannot read suite file {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise LenbenchError(f"{path} must be a mapping with keys suite, description, grid, profiles")
    allowed = {"suite", "description", "grid", "profiles"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise LenbenchError(f"unknown key(s) {', '.join(unknown)} in {path} (allowed: {', '.join(sorted(allowed))})")
    for key in ("suite", "grid", "profiles"):
        if key not in data:
            raise LenbenchError(f"{path} is missing the {key!r} key")
    profiles = data["profiles"]
    if not isinstance(profiles, dict) or not profiles or not all(isinstance(v, dict) for v in profiles.values()):
        raise LenbenchError(f"{path}: 'profiles' must map profile names to mappings")
    if not isinstance(data["grid"], dict):
        raise LenbenchError(f"{path}: 'grid' must be a mapping")
    return SuiteFile(str(data["suite"]), str(data.get("description", "")), path, data["grid"], profiles)


def choose_profile(suite: SuiteFile, requested: str, cuda: bool) -> tuple[str, str]:
    """Resolve ``auto`` (paper on CUDA, quick on CPU); returns (profile, reason)."""
    if requested == "auto":
        name = "paper" if cuda else "quick"
        reason = f"--profile auto chose {name!r} ({'CUDA available' if cuda else 'no CUDA device'})"
    else:
        name, reason = requested, f"profile {requested!r}"
    if name not in suite.profiles:
        close = difflib.get_close_matches(name, list(suite.profiles), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LenbenchError(f"suite {suite.name!r} has no profile {name!r} (has: {', '.join(suite.profiles)}){hint}")
    return name, reason


def parse_int_list(text: str | int | list[Any], what: str) -> list[int]:
    """``"41-500"``, ``"41-500:10"`` (step), ``"41,77,100"``, ``"0-4"`` or a YAML list -> ints."""
    items: list[Any]
    if isinstance(text, bool):
        raise LenbenchError(f"{what} must be integers, got {text!r}")
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        items = text
    else:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise LenbenchError(f"{what} must be integers, got {item!r}")
        if isinstance(item, int):
            out.append(item)
            continue
        s = str(item)
        match = _RANGE.match(s)
        if match:
            lo, hi, step = int(match[1]), int(match[2]), int(match[3] or 1)
            if hi < lo or step < 1:
                raise LenbenchError(f"{what}: empty range {s!r}")
            out.extend(range(lo, hi + 1, step))
            continue
        try:
            out.append(int(s))
        except ValueError as exc:
            raise LenbenchError(f"{what} must be integers or ranges like 41-500, got {s!r}") from exc
    if not out:
        raise LenbenchError(f"{what} is empty")
    return out


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except LenbenchError:
                continue
        raise LenbenchError(f"{where}: {value!r} has the wrong type")
    if origin is list:
        if not isinstance(value, list):
            raise LenbenchError(f"{where} must be a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise LenbenchError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LenbenchError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LenbenchError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise LenbenchError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise LenbenchError(f"{where} must be text, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping: unknown keys, missing keys and wrong types fail."""
    if not isinstance(data, dict):
        raise LenbenchError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LenbenchError(f"unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise LenbenchError(f"{where} is missing the {name!r} key")
    return cls(**kwargs)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
