"""The package imports one way: no module of ``lenbench`` reaches itself through its imports, and
no layer imports a higher one (:data:`LAYERS`, docs/architecture.md).

Every ``import`` counts, at module level or inside a function (and under ``TYPE_CHECKING``): a
function-local import only defers a circle, it does not remove it. Importing ``a.b.c`` also runs
the packages ``a.b`` and ``a``, so an import edge goes to the module and to each of its packages
that does not hold the importer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lenbench

PACKAGE = Path(lenbench.__file__).parent

# The layers of lenbench's top-level modules and packages (``lenbench.X``), low -> high: the one place
# the order is written. A module may import its own layer or a lower one, never a higher one. The root
# package (``lenbench/__init__.py``, the version) is the lowest.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"registry", "config", "paths", "results", "native", "bench", "progress"}),
    frozenset({"pe", "tasks", "data"}),
    frozenset({"model"}),
    frozenset({"devices", "train"}),
    frozenset({"present"}),
    frozenset({"suites"}),
    frozenset({"execute", "report", "inspect", "doctor"}),
    frozenset({"cli", "__main__"}),
)


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


def layer_of(module: str, layers: tuple[frozenset[str], ...] = LAYERS) -> int:
    """The layer index of a dotted module name, by its top-level part (``pkg.X.y`` -> X's layer)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    for index, group in enumerate(layers):
        if parts[1] in group:
            return index
    raise AssertionError(f"{module}: {parts[0]}.{parts[1]} is in no layer; add it to LAYERS in {Path(__file__).name}")


def back_edges(graph: dict[str, set[str]], files: dict[str, Path],
               layers: tuple[frozenset[str], ...] = LAYERS) -> list[str]:
    """Every import from a lower layer to a higher one, as ``file (layer i) imports module (layer j)``."""
    found = []
    for importer in sorted(graph):
        for target in sorted(graph[importer]):
            low, high = layer_of(importer, layers), layer_of(target, layers)
            if high > low:
                top = importer.split(".")[1] if "." in importer else importer
                found.append(f"{files[importer]} ({top}, layer {low}) imports {target} (layer {high})")
    return found


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


def test_layer_checker_sees_an_import_that_runs_up() -> None:
    layers = (frozenset({"low"}), frozenset({"mid", "side"}), frozenset({"top"}))
    names = ("pkg", "pkg.low", "pkg.mid", "pkg.mid.a", "pkg.side", "pkg.top")
    files = {n: Path(n.replace(".", "/") + ".py") for n in names}
    fine = {"pkg": set(), "pkg.low": set(), "pkg.mid": set(), "pkg.mid.a": {"pkg.low", "pkg.side"},
            "pkg.side": {"pkg.mid"}, "pkg.top": {"pkg.mid.a", "pkg.low"}}
    assert back_edges(fine, files, layers) == []  # own layer and lower ones
    bad = {**fine, "pkg.mid.a": {"pkg.top", "pkg.low"}, "pkg": {"pkg.side"}}
    assert back_edges(bad, files, layers) == [
        "pkg.py (pkg, layer 0) imports pkg.side (layer 1)",  # the root package is the lowest layer
        "pkg/mid/a.py (mid, layer 1) imports pkg.top (layer 2)",
    ]
    with pytest.raises(AssertionError, match="pkg.other is in no layer"):
        back_edges({"pkg.other": {"pkg.low"}}, {"pkg.other": Path("other.py")}, layers)


def test_no_layer_imports_a_higher_one() -> None:
    known = module_names()
    files = {name: path.relative_to(PACKAGE.parent) for name, path in known.items()}
    found = back_edges(import_graph(), files)
    assert not found, "imports that run up the layers:\n" + "\n".join(found)
