"""batchctl init: create what the event store needs, explicitly (no other command creates)."""

from __future__ import annotations

from infrastructure.bootstrap import Bootstrap
from infrastructure.cli.common import settings
from infrastructure.cli.output import JsonOpt, emit
from infrastructure.postgres.store import conninfo


def init(json_output: JsonOpt = False) -> None:
    """Create the database (if missing), DATABASE_SCHEMA and every table the service uses.

    Idempotent, and safe to run while the service runs or from several places at
    once (the start-up DDL lock). The long-running processes create the same on
    start unless DATABASE_AUTO_CREATE=false; every other command only uses an
    initialised store and refuses a missing database, schema or table (exit 2),
    so a typo in DATABASE_URL or DATABASE_SCHEMA never creates an empty store.

    Examples:

        batchctl init

        DATABASE_SCHEMA=restore batchctl init && DATABASE_SCHEMA=restore batchctl import x.jsonl
    """
    s = settings()
    with Bootstrap(s, create=True) as built:
        tables = built.create_store()
    database = conninfo(s)["dbname"]
    emit(
        {"database": database, "schema": s.database_schema, "tables": tables},
        json_output,
        f"The store is initialised: database {database}, schema {s.database_schema}, "
        f"tables {', '.join(tables)}.",
    )
