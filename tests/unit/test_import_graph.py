"""The ``kvstore`` package's import graph has no cycle: every module can be read after the ones it uses.

A cycle (``a`` imports ``b`` and ``b``, directly or through others, imports
``a``) makes the import order matter, hides a module's real dependencies and
usually means one job is split across two modules. Imports inside functions
count too: they are dependencies, only deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvstore

PACKAGE = Path(kvstore.__file__).resolve().parent


def module_name(path: Path) -> str:
    """``kvstore/local/cli.py`` -> ``kvstore.local.cli``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import sub`` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package upwards
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_real_package() -> None:
    graph = import_graph()
    # A few edges that exist, so an empty or broken graph cannot pass by finding nothing.
    assert "kvstore.routing" in graph["kvstore.api"]
    assert "kvstore.routing" in graph["kvstore.dashboard"]
    assert "kvstore.server" in graph["kvstore.cli"]  # imported inside main(): still a dependency
    assert "kvstore.replication.protocol" in graph["kvstore.replication.follower"]


def test_no_module_imports_one_that_imports_it_back() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (each group imports itself through the others): " + "; ".join(
        " <-> ".join(group) for group in found)


def test_a_cycle_is_found() -> None:
    # The check itself: a two-module and a three-module cycle, and a chain that is none.
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
