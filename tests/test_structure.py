"""The package's import graph has no cycle (issue 14, STYLE "imports flow one way").

Every module of proxy/ is parsed with `ast` (nothing is imported) and every import
statement in it counts: at module level and inside functions and classes alike, since
a lazy import inside a function is still a dependency, only paid later. The one
exception: imports under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`), which name a
type for mypy and never run. An edge goes to the module the statement names
(`from .base import Store` -> proxy.store.base; `from . import file` -> the submodule),
not to the packages Python initialises on the way there.

A cycle is reported as a path, e.g. `proxy.store -> proxy.store.redis -> proxy.store`:
the value type or interface in the middle of it wants a leaf module of its own.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"

# Cycles tolerated for now: none. (Add one here only with the issue that removes it.)
KNOWN: set[frozenset[str]] = set()


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below `node`, at any depth, except type-only ones."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _type_checking_only(child):
            for other in child.orelse:  # the `else:` branch does run
                if isinstance(other, ast.Import | ast.ImportFrom):
                    yield other
                yield from _imports(other)
        else:
            yield from _imports(child)


def dependencies(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the package that module `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in known)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                deps.add(submodule)  # `from . import file`: the submodule itself
            elif base in known:
                deps.add(base)
    deps.discard(name)
    return deps


@functools.cache  # parsed once per test run: the package does not change meanwhile
def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: dependencies(name, path, known) for name, path in known.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module, as a path."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle in {component}")  # a component always has one


def cycles(root: Path) -> list[str]:
    graph = import_graph(root)
    return [
        " -> ".join(a_cycle(graph, component))
        for component in strongly_connected(graph)
        if frozenset(component) not in KNOWN
    ]


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(PACKAGE) == []


def test_value_types_sit_below_their_users() -> None:
    """The leaves issue 14 named: the store layer never imports the usage meter, and
    what a request knows of a key (CachedKey) sits in a leaf beside the records, not
    behind the record cache and its store."""
    graph = import_graph(PACKAGE)
    for module in ("proxy.store", "proxy.store.base", "proxy.store.redis_usage",
                   "proxy.store.sqlite_usage"):  # fmt: skip
        assert "proxy.usage" not in graph[module], module
    assert "proxy.record_cache" not in graph["proxy.exchange"]
    assert "proxy.record_cache" not in graph["proxy.keylookup.cache"]


# What each package's docstring says it must not import (issue 14, item 5).
MUST_NOT_IMPORT = {
    "proxy.store": ("proxy.usage", "proxy.record_cache", "proxy.ratelimit",
                    "proxy.shared_limiter", "proxy.pipeline", "proxy.delivery", "proxy.cache",
                    "proxy.exchange", "proxy.admin", "proxy.app"),
    "proxy.origin": ("proxy.cache", "proxy.pipeline", "proxy.store", "proxy.app"),
    "proxy.keylookup": ("proxy.record_cache", "proxy.pipeline", "proxy.delivery",
                        "proxy.cache", "proxy.exchange", "proxy.admin", "proxy.app"),
    "proxy.supervisors": ("proxy.app", "proxy.pipeline", "proxy.delivery", "proxy.cache",
                          "proxy.origin", "proxy.store", "proxy.admin"),
}  # fmt: skip


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(MUST_NOT_IMPORT))
def test_packages_import_only_what_their_docstring_allows(package: str) -> None:
    graph = import_graph(PACKAGE)
    wrong = sorted(
        f"{module} -> {dep}"
        for module, deps in graph.items()
        if _within(module, package)
        for dep in deps
        if any(_within(dep, banned) for banned in MUST_NOT_IMPORT[package])
    )
    assert wrong == []


def test_the_root_package_imports_nothing() -> None:
    assert import_graph(PACKAGE)["proxy"] == set()


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("a_text", "expected"),
    [
        ("from .b import x\n", ["pkg.a -> pkg.b -> pkg.a"]),
        ("def later():\n    from . import b\n", ["pkg.a -> pkg.b -> pkg.a"]),
        ("class C:\n    import pkg.b\n", ["pkg.a -> pkg.b -> pkg.a"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n", []),
        ("import typing\nif typing.TYPE_CHECKING:\n    from .b import x\n", []),
        ("if TYPE_CHECKING:\n    pass\nelse:\n    from .b import x\n",
         ["pkg.a -> pkg.b -> pkg.a"]),
        ("from .sub.c import x\n", ["pkg.a -> pkg.sub.c -> pkg.b -> pkg.a"]),
        ("import os\nfrom .sub import c\n", ["pkg.a -> pkg.sub.c -> pkg.b -> pkg.a"]),
    ],
)  # fmt: skip
def test_the_checker_sees_every_kind_of_import(
    tmp_path: Path, a_text: str, expected: list[str]
) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": a_text,
            "b.py": "from .a import y\n",
            "sub/__init__.py": "",
            "sub/c.py": "from .. import b\n",
        },
    )
    assert cycles(root) == expected
