"""A typo in DATABASE_URL or DATABASE_SCHEMA never creates an empty store, and a repair
under such a typo never wipes the read model.

Only `batchctl init` (and the long-running processes, unless DATABASE_AUTO_CREATE=false)
create the database, schema and tables; every other command refuses a missing one with
exit 2 and one line that names the setting and `batchctl init`. `rebuild` refuses to
drop read-model data the store cannot give back unless --force.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from infrastructure.bootstrap import Bootstrap
from infrastructure.postgres.store import conninfo
from infrastructure.redis.client import connect
from infrastructure.redis.keys import tracking_key
from infrastructure.settings import Settings
from tests.conftest import TEST_DATABASE_URL, drop_redis_prefix, drop_schema, make_settings
from tests.e2e.test_cli import ROOT, batchctl, env_of, one_line_error, seed
from tests.support.followers import rebuilt
from tests.support.scratch import new_tag

READERS = [
    ["status", "b1"],
    ["audit", "b1"],
    ["replay"],
    ["export"],
    ["verify"],
    ["rebuild"],
    ["pending"],
]


def _admin_query(s: Settings, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(**conninfo(s, dbname="postgres"), autocommit=True) as conn:
        cursor = conn.execute(query, list(params))
        return cursor.fetchall() if cursor.description else []


def _schemas(s: Settings, name: str) -> list[tuple[object, ...]]:
    with psycopg.connect(**conninfo(s), autocommit=True) as conn:
        return conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = %s", [name]
        ).fetchall()


def redis_snapshot(s: Settings) -> dict[str, bytes | None]:
    """Every key under the prefix with its serialized value: equal means untouched."""
    client = connect(s)
    try:
        keys = sorted(client.scan_iter(match=f"{s.redis_key_prefix}*", count=1000))
        return {k.decode() if isinstance(k, bytes) else k: client.dump(k) for k in keys}
    finally:
        client.close()


@pytest.fixture
def seeded(test_settings: Settings) -> Settings:
    with Bootstrap(test_settings) as built:
        seed(built.service)
    rebuilt(test_settings)
    return test_settings


@pytest.fixture
def empty_store() -> Iterator[Settings]:
    """An initialised store with no events (its own schema)."""
    s = make_settings()
    with Bootstrap(s) as built:
        built.create_store()
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


# ------------------------------------------------------- nothing is created


def test_a_typo_in_the_database_name_is_refused_and_not_created(seeded: Settings) -> None:
    typo = f"batchslot_typo_{new_tag(8)}"
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/{typo}"
    before = redis_snapshot(seeded)
    for command in READERS:
        line = one_line_error(batchctl(seeded, *command, DATABASE_URL=url))
        assert f"database '{typo}' does not exist" in line, (command, line)
        assert "DATABASE_URL" in line and "batchctl init" in line, (command, line)
    assert _admin_query(seeded, "SELECT 1 FROM pg_database WHERE datname = %s", typo) == []
    assert redis_snapshot(seeded) == before  # rebuild under the typo dropped nothing


def test_a_typo_in_the_schema_is_refused_and_not_created(seeded: Settings) -> None:
    typo = f"t_typo_{new_tag(8)}"
    before = redis_snapshot(seeded)
    for command in READERS:
        line = one_line_error(batchctl(seeded, *command, DATABASE_SCHEMA=typo))
        assert f"schema '{typo}' does not exist" in line, (command, line)
        assert "DATABASE_SCHEMA" in line and "batchctl init" in line, (command, line)
    assert _schemas(seeded, typo) == []
    assert redis_snapshot(seeded) == before


def test_the_documented_repair_is_safe_under_a_typo(seeded: Settings) -> None:
    """`verify || rebuild` (docs/cli.md) with a mistyped schema: both refuse, Redis is kept."""
    before = redis_snapshot(seeded)
    assert len(before) > 2
    typo = f"t_typo_{new_tag(8)}"
    cli = f"{sys.executable} -m infrastructure.cli.main"
    result = subprocess.run(
        ["sh", "-c", f"{cli} verify || {cli} rebuild"],
        cwd=ROOT,
        env=env_of(seeded, DATABASE_SCHEMA=typo),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert redis_snapshot(seeded) == before
    assert _schemas(seeded, typo) == []


def test_a_schema_without_the_tables_is_refused(seeded: Settings) -> None:
    bare = f"t_bare_{new_tag(8)}"
    with psycopg.connect(**conninfo(seeded), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(bare)))
    try:
        line = one_line_error(batchctl(seeded, "verify", DATABASE_SCHEMA=bare))
        assert f"table {bare}.batchservice_events does not exist" in line
        assert "batchctl init" in line
        with psycopg.connect(**conninfo(seeded), autocommit=True) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [bare],
            ).fetchall()
        assert tables == []
    finally:
        with psycopg.connect(**conninfo(seeded), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(bare)))


# ---------------------------------------------------------------- init


EXPECTED_TABLES = {
    "batchservice_events",
    "batchservice_snapshots",
    "batch_due",
    "due_index_tracking",
    "outbox_tracking",
    "outbox_parked",
    "dlq_redrives",
}


def test_init_creates_database_schema_and_tables_idempotently(test_settings: Settings) -> None:
    database = f"batchslot_init_{new_tag(8)}"
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/{database}"
    try:
        first = batchctl(test_settings, "init", "--json", DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        doc = json.loads(first.stdout)
        assert doc["database"] == database and doc["schema"] == test_settings.database_schema
        assert set(doc["tables"]) == EXPECTED_TABLES
        again = batchctl(test_settings, "init", DATABASE_URL=url)  # idempotent
        assert again.returncode == 0, again.stderr
        assert "The store is initialised" in again.stdout
        # An initialised, empty store: the commands work (an unknown batch is just unknown).
        unknown = one_line_error(batchctl(test_settings, "audit", "b1", DATABASE_URL=url))
        assert "unknown batch 'b1'" in unknown
        verified = batchctl(test_settings, "verify", "--json", DATABASE_URL=url)
        assert verified.returncode == 0 and json.loads(verified.stdout)["events"] == 0
    finally:
        _admin_query(
            test_settings,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            .format(sql.Identifier(database))
            .as_string(None),
        )


def test_init_runs_concurrently(test_settings: Settings) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "init"],
            cwd=ROOT,
            env=env_of(test_settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with psycopg.connect(**conninfo(test_settings), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [test_settings.database_schema],
        ).fetchall()
    assert {r[0] for r in rows} == EXPECTED_TABLES


def test_without_auto_create_a_process_refuses_a_missing_schema(test_settings: Settings) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", "projector"],
        cwd=ROOT,
        env=env_of(test_settings, DATABASE_AUTO_CREATE="false", STARTUP_TIMEOUT_SECONDS="60"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert time.monotonic() - started < 30  # not retried as if it were down
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "DATABASE_SCHEMA" in last and "batchctl init" in last
    assert _schemas(test_settings, test_settings.database_schema) == []


# ------------------------------------------------------------- rebuild


def test_rebuild_refuses_an_empty_store_over_a_full_read_model(
    seeded: Settings, empty_store: Settings
) -> None:
    before = redis_snapshot(seeded)
    line = one_line_error(
        batchctl(seeded, "rebuild", DATABASE_SCHEMA=empty_store.database_schema)
    )
    assert "refusing to rebuild" in line and "drop all 2 batches" in line and "--force" in line
    assert redis_snapshot(seeded) == before
    forced = batchctl(seeded, "rebuild", "--force", DATABASE_SCHEMA=empty_store.database_schema)
    assert forced.returncode == 0, forced.stderr
    assert "0 events, 0 batches" in forced.stdout
    assert not any(":summary" in k for k in redis_snapshot(seeded))


def test_rebuild_refuses_a_store_behind_the_read_model(seeded: Settings) -> None:
    client = connect(seeded)
    client.set(tracking_key(seeded.redis_key_prefix, "BatchService"), "100")
    client.close()
    before = redis_snapshot(seeded)
    line = one_line_error(batchctl(seeded, "rebuild"))
    assert "ends at position 8" in line and "seen position 100" in line and "--force" in line
    assert redis_snapshot(seeded) == before
    forced = batchctl(seeded, "rebuild", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["events"] == 8
    verified = batchctl(seeded, "verify", "--json")
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["read_model_position"] == 8


def test_rebuild_of_an_empty_read_model_needs_no_force(seeded: Settings) -> None:
    drop_redis_prefix(seeded)
    result = batchctl(seeded, "rebuild")
    assert result.returncode == 0, result.stderr
    assert batchctl(seeded, "verify").returncode == 0


def test_a_projector_on_a_mistyped_schema_does_not_wipe_the_read_model(
    seeded: Settings,
) -> None:
    """The processes create on start (DATABASE_AUTO_CREATE), so a typo gives an empty
    store: the projector must not take the read model ahead of it for a restore."""
    typo = f"t_typo_{new_tag(8)}"
    before = redis_snapshot(seeded)
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "infrastructure.cli.main", "projector"],
            cwd=ROOT,
            env=env_of(seeded, DATABASE_SCHEMA=typo, METRICS_PORT="0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: refusing to project") and typo in last, last
        assert "batchctl rebuild --force" in last
        assert time.monotonic() - started < 30
        assert redis_snapshot(seeded) == before
    finally:
        with psycopg.connect(**conninfo(seeded), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(typo)))
