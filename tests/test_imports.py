"""The package imports one way: no module of ``lenbench`` reaches itself through its imports.

Every ``import`` counts, at module level or inside a function (and under ``TYPE_CHECKING``): a
function-local import only defers a circle, it does not remove it. Importing ``a.b.c`` also runs
the packages ``a.b`` and ``a``, so an import edge goes to the module and to each of its packages
that does not hold the importer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lenbench

PACKAGE = Path(lenbench.__file__).parent


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its ``__init__``)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    edges: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in known and not (name == prefix or name.startswith(prefix + ".")):
                edges.add(prefix)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_cycle_finder_sees_a_function_local_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_walk_resolves_relative_and_function_local_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from . import y\n    from ..z import g\n")
    known = {"pkg": tmp_path, "pkg.sub": pkg, "pkg.sub.x": pkg / "x.py", "pkg.sub.y": pkg / "y.py",
             "pkg.z": tmp_path / "pkg" / "z.py"}
    assert imported("pkg.sub.x", pkg / "x.py", known) == {"pkg.sub.y", "pkg.z"}


def test_lenbench_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "lenbench.cli" in graph and graph["lenbench.cli"], "the walk found no imports at all"
    assert cycles(graph) == []
