"""Name -> factory registries for PEs, tasks and model sizes, with entry-point plugins.

A registry maps lower-case dashed names to objects (usually classes). Unknown names raise
``LenbenchError`` with a "did you mean" suggestion. Third-party packages add entries through the
entry-point group named at construction (``lenbench.pe`` for positional encodings).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from lenbench.errors import LenbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> object map with helpful errors and optional entry-point loading."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name != name.lower() or not name or " " in name:
            raise LenbenchError(f"{self.kind} name {name!r} must be lower-case, without spaces")
        self._items[name] = obj

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.entry_point_group is None:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the tool
                raise LenbenchError(
                    f"plugin {ep.name!r} ({ep.value}) in {self.entry_point_group} failed to load: {exc}"
                ) from exc
            self._items.setdefault(ep.name, obj)

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_plugins()
        return iter(list(self._items.items()))

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def get(self, name: str) -> T:
        self._load_plugins()
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self._items, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LenbenchError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self._items)})"
        )
