"""Imports flow one way (STYLE.md practice 15, issue 14): what each package's docstring
says it must not import, checked on the source. Direct imports only, those inside
functions included; what an allowed module imports in turn is its own rule's business.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"
REQUEST_PATH = ("proxy.pipeline", "proxy.listener", "proxy.delivery")

# module or package -> what none of its modules may import
RULES: dict[str, tuple[str, ...]] = {
    # leaves: value types and the error model, imported from everywhere
    "proxy.errors": ("proxy", "aiohttp"),
    "proxy.failpoints": ("proxy", "aiohttp"),
    "proxy.request_ids": ("proxy", "aiohttp"),
    "proxy.sketch": ("proxy", "aiohttp"),
    # the shared domain logic of the two front ends
    "proxy.manage": ("aiohttp", "proxy.admin", "proxy.cli", "proxy.app", *REQUEST_PATH),
    # the front ends: neither imports the other, nor the request path; the admin listener
    # shares the public one's connection classes (proxy.listener: deadlines, error pages)
    "proxy.admin": ("proxy.cli", "proxy.app", "proxy.pipeline", "proxy.delivery"),
    "proxy.cli": ("aiohttp", "proxy.admin", *REQUEST_PATH),
    # the customer page: a front end of the admin API's actions, as the CLI is of manage
    "proxy.portal": ("proxy.cli", "proxy.app", "proxy.pipeline", "proxy.delivery"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; `from x import y` counts
    as x and as x.y (y may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_of(target: str) -> list[Path]:
    path = PACKAGE.parent / target.replace(".", "/")
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("target", sorted(RULES))
def test_imports_flow_one_way(target: str) -> None:
    broken = [
        f"{module_name(path)} imports {name}"
        for path in modules_of(target)
        for name in sorted(imported(path))
        if any(within(name, banned) for banned in RULES[target])
        and not within(name, target)  # a package's own modules
        and name != "proxy"  # `from .. import x`: x itself is checked
    ]
    assert broken == []


def test_the_check_sees_relative_imports() -> None:
    """The rule above would pass vacuously if relative imports were not resolved."""
    assert "proxy.errors.Invalid" in imported(PACKAGE / "manage" / "actions.py")
    assert "proxy.failpoints" in imported(PACKAGE / "admin" / "handlers.py")
    assert "proxy.manage.actions" in imported(PACKAGE / "admin" / "__init__.py") | imported(
        PACKAGE / "admin" / "handlers.py"
    )
