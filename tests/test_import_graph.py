"""The static import graph of bilevel/ is acyclic, and bilevel/ imports nothing from the packages built on it.

Edges are the module-level `import bilevel...` / `from bilevel... import` statements of every module (imports inside
functions and under `if TYPE_CHECKING:` are left out: they run after every module is loaded, or never). A cycle
means a module's import-time behaviour depends on which module of the cycle is imported first; the registries
(`bilevel.registry`) are the leaf the implementations register into, so validation needs no implementation.

    python tests/test_import_graph.py [ROOT]    prints the graph's cycles for the checkout at ROOT (default: this one)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "bilevel"
ABOVE = ("worldmodels", "losses", "agents", "envs", "recipes")  # packages that build on bilevel/
ROOT = Path(__file__).resolve().parents[1]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: not in a function, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def imported_modules(node: ast.Import | ast.ImportFrom, current: str, is_package: bool,
                     modules: set[str]) -> set[str]:
    """The modules an import statement names: `from pkg import name` is `pkg` (whose `__init__` runs first and may
    still be half-way through its own imports), and also the submodule `pkg.name` when that module exists."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:  # relative: resolve against the current package
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return {target} | {f"{target}.{alias.name}" for alias in node.names} & modules


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> modules it imports at import time (every import, not only the package's own)."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(root, p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in module_level_imports(tree):
            edges |= imported_modules(node, name, path.name == "__init__.py", modules)
        graph[name] = edges
    return graph


def internal(graph: dict[str, set[str]], package: str = PACKAGE) -> dict[str, set[str]]:
    """The graph restricted to the package's own modules."""
    return {m: {t for t in ts if t == package or t.startswith(package + ".")} & graph.keys()
            for m, ts in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted; self-imports count."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path through a strongly connected component (for a readable failure message)."""
    members, path = set(component), [component[0]]
    while True:
        nxt = sorted(graph[path[-1]] & members)[0] if graph[path[-1]] & members else None
        if nxt is None:
            return path
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def test_the_graph_builder_sees_edges_and_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "from typing import TYPE_CHECKING\nfrom pkg import b\nif TYPE_CHECKING:\n    from pkg import c\n",
        "b.py": "import pkg.c\ndef f():\n    from pkg import a\n",
        "c.py": "from . import b\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = internal(import_graph(tmp_path, "pkg"), "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg", "pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg", "pkg.b"}}
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.b", "pkg.c"]]  # via the package: `from pkg import b`
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_bilevel_has_no_import_cycle():
    graph = internal(import_graph(ROOT))
    found = cycles(graph)
    assert not found, "import cycles in bilevel/: " + "; ".join(" -> ".join(one_cycle(graph, c)) for c in found)


def test_bilevel_imports_nothing_built_on_it():
    graph = import_graph(ROOT)
    bad = {m: sorted(t for t in ts if t.split(".")[0] in ABOVE) for m, ts in graph.items()}
    assert not {m: ts for m, ts in bad.items() if ts}


def test_the_registries_are_the_leaf():
    """What config validation reads imports no implementation: the registry module imports nothing of bilevel/,
    and the config imports only the registry."""
    graph = internal(import_graph(ROOT))
    assert graph["bilevel.registry"] == set()
    assert graph["bilevel.config"] == {"bilevel.registry"}


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    g = internal(import_graph(root))
    for c in cycles(g):
        print(f"cycle of {len(c)} modules: {' -> '.join(one_cycle(g, c))}  (component: {', '.join(c)})")
    print(f"{len(cycles(g))} cycle(s) among {len(g)} modules of {root / PACKAGE}")
