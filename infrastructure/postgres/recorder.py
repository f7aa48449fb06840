"""The event store's append, without psycopg's pipeline mode.

The library appends in pipeline mode: LOCK TABLE (so notification ids commit
in order), NOTIFY, and one ``INSERT … SELECT FROM unnest(…) RETURNING`` in a
transaction. psycopg 3.3.9 can deadlock there: when the socket's send buffer
is full (a large append, while another writer holds the table lock and the
server is not reading), ``_pipeline_communicate`` stops after a partial
``flush()`` and waits for results the server cannot send, while the server
waits for the rest of the transaction, holding the table lock: every writer
stops (seen under two workers with poll-sized appends; cf. psycopg issue
#685). This recorder sends the same statements in an ordinary transaction,
where psycopg flushes everything before it waits for a result.

The rows go as four arrays of base types (``unnest(ids, versions, topics,
states)``), not as one array of the library's composite type: psycopg dumps a
composite array in pure Python, field by field (13% of the worker's
GIL-holding samples in docs/benchmarks.md's profile), base-type arrays in C.
Same rows, same order, same statement otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic, retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

__all__ = ["UnpipelinedApplicationRecorder", "recorder_topic"]


class UnpipelinedApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} AS t "
            "(originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{originator_id_type}[], %s::bigint[], %s::text[], "
            "%s::bytea[]) RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            originator_id_type=Identifier(self.datastore.originator_id_type),
        )

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_arrays_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return None
            # Lock the table, NOTIFY, then insert and return the notification ids.
            self._insert_stored_events(curs, stored_events, **kwargs)
            return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)


def recorder_topic() -> str:
    return get_topic(UnpipelinedApplicationRecorder)
