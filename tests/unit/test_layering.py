"""Layering, checked on the source: the domain knows only the standard library
and ``eventsourcing.domain``; the application layer knows no infrastructure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
APPLICATION_FORBIDDEN = ("redis", "aiokafka", "psycopg", "psycopg_pool", "infrastructure")


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every absolute module a file imports (relative imports resolved to the package)."""
    if package is None:
        package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    return files


def domain_allows(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top in STDLIB
        or top == "domain"
        or module == "eventsourcing.domain"
        or module.startswith("eventsourcing.domain.")
    )


def application_allows(module: str) -> bool:
    top = module.split(".")[0]
    return top not in APPLICATION_FORBIDDEN


@pytest.mark.parametrize("path", sources("domain"), ids=lambda p: p.name)
def test_domain_imports_only_stdlib_and_eventsourcing_domain(path: Path) -> None:
    bad = [(line, m) for line, m in imported_modules(path) if not domain_allows(m)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", sources("application"), ids=lambda p: p.name)
def test_application_imports_no_infrastructure(path: Path) -> None:
    bad = [(line, m) for line, m in imported_modules(path) if not application_allows(m)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checker_catches_violations(tmp_path: Path) -> None:
    """The rules above can fail: a forbidden import is reported."""
    assert not domain_allows("eventsourcing.application")
    assert not domain_allows("pydantic")
    assert not domain_allows("application.service")
    assert domain_allows("eventsourcing.domain")
    assert domain_allows("datetime")
    assert not application_allows("redis.asyncio")
    assert not application_allows("infrastructure.settings")
    assert not application_allows("psycopg")
    assert application_allows("eventsourcing.application")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\nfrom eventsourcing import persistence\nimport redis.asyncio as r\n"
        "from . import batch\nfrom .errors import X\n"
        "def f() -> None:\n    import psycopg\n"
    )
    mods = [m for _, m in imported_modules(probe, package="domain")]
    assert mods == ["os", "eventsourcing", "redis.asyncio", "domain", "domain.errors", "psycopg"]
    assert [m for m in mods if not domain_allows(m)] == [
        "eventsourcing",
        "redis.asyncio",
        "psycopg",
    ]
