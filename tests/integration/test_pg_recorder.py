"""The event store's append without pipeline mode, on the real PostgreSQL.

The library's own ApplicationRecorderTestCase runs against it, and a
regression test reproduces the psycopg pipeline deadlock the recorder avoids:
a large append while another transaction holds the events table's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.tests.persistence import ApplicationRecorderTestCase

from infrastructure.postgres.recorder import UnpipelinedApplicationRecorder
from infrastructure.postgres.store import conninfo, ensure_database
from tests.conftest import drop_schema, make_settings


def _datastore(schema: str, dbname: str) -> PostgresDatastore:
    return PostgresDatastore(
        dbname=dbname,
        host="127.0.0.1",
        port=5432,
        user="postgres",
        password="",
        pool_size=4,
        max_overflow=4,
        lock_timeout=30,
        schema=schema,
    )


class TestUnpipelinedRecorderWithTheLibrarysCases(
    ApplicationRecorderTestCase[UnpipelinedApplicationRecorder]
):
    def setUp(self) -> None:
        self.settings = make_settings()
        ensure_database(self.settings)
        info = conninfo(self.settings)
        self.datastore = _datastore(self.settings.database_schema, info["dbname"])

    def tearDown(self) -> None:
        self.datastore.close()
        drop_schema(self.settings)

    def create_recorder(self) -> UnpipelinedApplicationRecorder:
        recorder = UnpipelinedApplicationRecorder(self.datastore, events_table_name="stored_events")
        recorder.create_table()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


@pytest.fixture
def recorder_and_lock() -> Iterator[tuple[PostgresApplicationRecorder, PostgresDatastore, str]]:
    settings = make_settings()
    ensure_database(settings)
    info = conninfo(settings)
    datastore = _datastore(settings.database_schema, info["dbname"])
    yield datastore, settings.database_schema, info["dbname"]  # type: ignore[misc]
    datastore.close()
    drop_schema(settings)


def _append_big_event_while_the_table_is_locked(
    recorder: PostgresApplicationRecorder, schema: str, dbname: str
) -> bool:
    """Hold the events table's lock for 1 s while a 16 MiB append is sent; True if done."""
    locked, done = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn:
            conn.execute(f'LOCK TABLE "{schema}".stored_events IN EXCLUSIVE MODE')
            locked.set()
            time.sleep(1.0)

    def append() -> None:
        event = StoredEvent(uuid4(), 1, "topic", b"x" * (16 * 1024 * 1024))
        recorder.insert_events([event])
        done.set()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(10)
    writer = threading.Thread(target=append, daemon=True)  # may hang: never joined blocking
    writer.start()
    holder.join()
    return done.wait(30)


def test_a_large_append_behind_a_table_lock_completes(recorder_and_lock) -> None:  # type: ignore[no-untyped-def]
    datastore, schema, dbname = recorder_and_lock
    recorder = UnpipelinedApplicationRecorder(datastore, events_table_name="stored_events")
    recorder.create_table()
    assert _append_big_event_while_the_table_is_locked(recorder, schema, dbname)
    assert recorder.max_notification_id() == 1
