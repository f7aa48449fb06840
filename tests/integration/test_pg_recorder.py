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

from infrastructure.postgres.recorder import APPEND_FUNCTION, UnpipelinedApplicationRecorder
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


def _events(n: int) -> list[StoredEvent]:
    originator = uuid4()
    return [StoredEvent(originator, v, "topic", f"state {v}".encode()) for v in range(1, n + 1)]


def _function_exists(dbname: str, schema: str) -> bool:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname = %s",
            (schema, APPEND_FUNCTION),
        ).fetchone()
    return row is not None and row[0] == 1


def test_an_append_is_one_statement_that_locks_inserts_and_notifies(recorder_and_lock) -> None:  # type: ignore[no-untyped-def]
    datastore, schema, dbname = recorder_and_lock
    recorder = UnpipelinedApplicationRecorder(datastore, events_table_name="stored_events")
    recorder.create_table()
    assert _function_exists(dbname, schema)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=dbname, autocommit=True) as ln:
        ln.execute(f'LISTEN "{recorder.channel_name}"')
        first = recorder.insert_events(_events(3))
        second = recorder.insert_events(_events(2), traceparents={})
        heard = [n.payload for n in ln.notifies(timeout=2.0, stop_after=2)]
    assert first == [1, 2, 3] and second == [4, 5]  # the ids in the events' order
    assert heard == [f"{schema}:3", f"{schema}:5"]  # each append names its last id
    stored = recorder.select_notifications(start=1, limit=10)
    assert [(n.id, n.originator_version) for n in stored] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 1),
        (5, 2),
    ]
    # The table lock is taken inside the statement: an append waits behind a holder.
    assert _append_big_event_while_the_table_is_locked(recorder, schema, dbname)
    assert recorder.max_notification_id() == 6


def test_a_store_without_the_append_function_is_appended_to_statement_by_statement(
    recorder_and_lock, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    datastore, schema, dbname = recorder_and_lock
    recorder = UnpipelinedApplicationRecorder(datastore, events_table_name="stored_events")
    recorder.create_table()
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=dbname, autocommit=True) as c:
        c.execute(f'DROP FUNCTION "{schema}".{APPEND_FUNCTION}')  # as an older release made it
    with caplog.at_level("WARNING"):
        assert recorder.insert_events(_events(2)) == [1, 2]
        assert recorder.insert_events(_events(1)) == [3]
    assert [r.message for r in caplog.records].count(
        f"the event store has no {APPEND_FUNCTION} function (created by an older release): "
        "appending statement by statement; `batchctl init` creates it"
    ) == 1  # said once
    recorder.create_table()  # `batchctl init` (or a start-up's creation) makes it again
    assert _function_exists(dbname, schema)
