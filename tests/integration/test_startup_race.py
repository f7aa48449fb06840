"""Concurrent start-up: six processes on a fresh database, all at once.

Each round makes a new database name (and a non-public schema) that does not
exist yet; six processes released by one barrier each build the service (which
creates the database, the schema and the library's tables) and the outbox (the
container creates its tables first), and store one event. Every process must
succeed, in every round.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from infrastructure.postgres.store import conninfo
from infrastructure.settings import load_settings
from tests.conftest import TEST_DATABASE_URL, drop_schema

PROCESSES = 6
ROUNDS = 4


def start_and_write(env: dict[str, str], n: int, barrier: Any, out: Any) -> None:
    try:
        from application.commands import ProvisionContent
        from infrastructure.bootstrap import Bootstrap

        settings = load_settings(env)
        barrier.wait(timeout=60)
        with Bootstrap(settings) as container:
            service = container.service
            container.outbox()  # its tables created first, as for `batchctl outbox`
            command = ProvisionContent(
                batch_id=f"b-{n}",
                correlation_id=str(uuid.uuid4()),
                text_storage_id=f"t-{n}",
                file_upload_id=f"f-{n}",
                original_file_name="x.txt",
            )
            [result] = service.execute([command])
            out.put((n, result.outcome))
    except BaseException:
        out.put((n, traceback.format_exc()))


def admin() -> psycopg.Connection[Any]:
    info = conninfo(load_settings({"DATABASE_URL": TEST_DATABASE_URL}))
    return psycopg.connect(**{**info, "dbname": "postgres"}, autocommit=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("fresh", ["database", "schema"])
def test_six_processes_starting_at_once_on_a_fresh_store_all_succeed(fresh: str) -> None:
    ctx = mp.get_context("spawn")
    for _ in range(ROUNDS):
        tag = uuid.uuid4().hex[:10]
        dbname = f"bs_start_{tag}"
        env = {
            "DATABASE_URL": TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/{dbname}",
            "DATABASE_SCHEMA": "slots",
        }
        if fresh == "schema":  # the shared test database, a schema of this round's own
            env = {"DATABASE_URL": TEST_DATABASE_URL, "DATABASE_SCHEMA": f"t_start_{tag}"}
        barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
        processes = [
            ctx.Process(target=start_and_write, args=(env, n, barrier, out))
            for n in range(PROCESSES)
        ]
        try:
            for p in processes:
                p.start()
            results = dict(out.get(timeout=240) for _ in processes)
            for p in processes:
                p.join(timeout=60)
        finally:
            for p in processes:
                if p.is_alive():
                    p.kill()
            if fresh == "schema":
                drop_schema(load_settings(env))
            else:
                with admin() as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(dbname)
                        )
                    )
        assert results == {n: "recorded" for n in range(PROCESSES)}, results
