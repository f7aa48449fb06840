"""PostgreSQL: the event store's configuration and the few direct queries.

The ``eventsourcing`` library owns the events table (``batchservice_events``),
its notification sequence and the snapshots table. This module turns
``DATABASE_URL`` into the library's settings, makes sure the database and
schema exist, and gives direct connections to those that need one (the
CLI's queries are in ``infrastructure/postgres/reader.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

from infrastructure.postgres.recorder import recorder_topic
from infrastructure.postgres.timeouts import (
    BoundedConnection,
    factory_env,
    factory_topic,
    libpq_bounds,
)
from infrastructure.settings import Settings, redact_url

# libpq reads these from the environment; DATABASE_URL's query string sets them.
_LIBPQ_PARAMS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "application_name": "PGAPPNAME",
}


def conninfo(settings: Settings, dbname: str | None = None) -> dict[str, Any]:
    """psycopg connect() keyword arguments for DATABASE_URL (password included)."""
    parts = urlsplit(settings.database_url.get_secret_value())
    kwargs: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 5432,
        "user": unquote(parts.username or "postgres"),
        "dbname": dbname or unquote(parts.path.lstrip("/")),
    }
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    for key, value in parse_qsl(parts.query):
        if key in _LIBPQ_PARAMS:
            kwargs[key] = value
        elif key == "password" and parts.password is None:  # libpq's ?password= form
            kwargs["password"] = value
    return kwargs


def event_store_env(settings: Settings, *, create: bool = True) -> dict[str, str]:
    """The ``eventsourcing`` library's environment for this deployment.

    ``create``: the library creates its tables when the application is built
    (callers hold the DDL lock); without it, it only uses the tables there are.
    """
    info = conninfo(settings)
    # The library builds its pool from host/port/user/password only; TLS and
    # friends reach libpq through its standard environment variables.
    for key, var in _LIBPQ_PARAMS.items():
        if key in info:
            os.environ[var] = str(info[key])
    return {
        # The library's factory, with keepalives, tcp_user_timeout, statement_timeout
        # and a client-side call deadline on every pooled connection (pg_timeouts.py).
        "PERSISTENCE_MODULE": factory_topic(),
        **factory_env(settings),
        "POSTGRES_DBNAME": info["dbname"],
        "POSTGRES_HOST": str(info["host"]),
        "POSTGRES_PORT": str(info["port"]),
        "POSTGRES_USER": info["user"],
        "POSTGRES_PASSWORD": info.get("password", ""),
        "POSTGRES_SCHEMA": settings.database_schema,
        "POSTGRES_POOL_SIZE": str(settings.database_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.database_pool_size),
        "POSTGRES_LOCK_TIMEOUT": str(settings.database_lock_timeout_seconds),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        # The library passes this to its pool as the checkout timeout.
        "POSTGRES_CONNECT_TIMEOUT": str(settings.database_pool_timeout_seconds),
        # No "SELECT 1" before every statement (a round trip each): a broken connection
        # fails the statement instead, and every caller retries transient failures.
        "POSTGRES_PRE_PING": "n",
        "CREATE_TABLE": "y" if create else "n",
        # Appends without psycopg's pipeline mode (see infrastructure/postgres/recorder.py).
        "APPLICATION_RECORDER_TOPIC": recorder_topic(),
        # No library aggregate cache: BatchService keeps its own (AGGREGATE_CACHE_SIZE),
        # which neither deep-copies nor fast-forwards on every load (docs/benchmarks.md).
    }


# Start-up DDL is serialized across processes with a session advisory lock: the
# first key says "batch slot service DDL", the second is the schema's (or, on the
# maintenance database, the database's) name hashed by PostgreSQL.
DDL_LOCK_KEY = 0x42534C54  # "BSLT"


@contextlib.contextmanager
def ddl_lock(settings: Settings, *, admin: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """Hold the start-up DDL lock for this schema (blocks until it is free).

    Several processes starting at once on an empty database otherwise race in
    CREATE DATABASE, CREATE SCHEMA and the library's CREATE TABLE / CREATE TYPE
    (``duplicate key value violates unique constraint``, ``tuple concurrently
    updated``). The lock is released when the block ends (or the session dies).
    ``admin``: the lock for creating the database itself, held in the server's
    ``postgres`` database.
    """
    info = conninfo(settings)
    name = f"database:{info['dbname']}" if admin else settings.database_schema
    if admin:
        info["dbname"] = "postgres"
    with psycopg.connect(**info, **libpq_bounds(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (DDL_LOCK_KEY, name))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (DDL_LOCK_KEY, name))


def ensure_database(settings: Settings) -> None:
    """Create the database and schema on first use (idempotent, safe to run concurrently)."""
    info = conninfo(settings)
    try:
        psycopg.connect(**info, **libpq_bounds(settings)).close()
    except psycopg.OperationalError as e:
        if "does not exist" not in str(e):
            raise
        with ddl_lock(settings, admin=True) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (info["dbname"],)
            ).fetchone()
            if exists is None:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info["dbname"])))
    if settings.database_schema != "public":
        with ddl_lock(settings) as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(settings.database_schema)
                )
            )


class StoreMissing(RuntimeError):
    """The database, schema or a table a command needs does not exist (one line, says
    which setting to check and that ``batchctl init`` creates it)."""


def require_store(settings: Settings, tables: Sequence[str] = ()) -> None:
    """Check, creating nothing, that the database, the schema and ``tables`` exist.

    Raises ``StoreMissing`` naming what is missing: a typo in DATABASE_URL or
    DATABASE_SCHEMA must not look like an empty store.
    """
    info = conninfo(settings)
    dbname, schema = info["dbname"], settings.database_schema
    url = redact_url(settings.database_url.get_secret_value())
    try:
        conn = psycopg.connect(**info, **libpq_bounds(settings), autocommit=True)
    except psycopg.OperationalError as e:
        if f'database "{dbname}" does not exist' not in str(e):
            raise
        raise StoreMissing(
            f"database {dbname!r} does not exist at {url} (DATABASE_URL): check DATABASE_URL, "
            "or create the store with `batchctl init`"
        ) from None
    with conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
        if found is None:
            raise StoreMissing(
                f"schema {schema!r} does not exist in database {dbname!r} (DATABASE_SCHEMA): "
                "check DATABASE_SCHEMA and DATABASE_URL, or create the store with `batchctl init`"
            )
        for table in tables:
            row = conn.execute(
                "SELECT to_regclass(%s)", [sql.Identifier(schema, table).as_string(conn)]
            ).fetchone()
            if row is None or row[0] is None:
                raise StoreMissing(
                    f"table {schema}.{table} does not exist in database {dbname!r} "
                    f"(DATABASE_SCHEMA={schema}): the store is not initialised; run "
                    "`batchctl init`, or check DATABASE_SCHEMA and DATABASE_URL"
                )


def store_tables(settings: Settings) -> list[str]:
    """The tables in DATABASE_SCHEMA, by name."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "ORDER BY table_name",
            [settings.database_schema],
        ).fetchall()
    return [str(r[0]) for r in rows]


def connect(settings: Settings) -> psycopg.Connection[Any]:
    """A direct connection with the same bounds as the event store's pool."""
    return BoundedConnection.with_timeout(settings.database_call_deadline_seconds).connect(
        **conninfo(settings), **libpq_bounds(settings)
    )


class OwnConnection:
    """One autocommit connection of its own, opened on first use, closed on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            self._conn = connect(self.settings)
            self._conn.autocommit = True
        return self._conn
