"""The event store's append, without psycopg's pipeline mode, with each event's trace context.

The library appends in pipeline mode: LOCK TABLE (so notification ids commit
in order), NOTIFY, and one ``INSERT … SELECT FROM unnest(…) RETURNING`` in a
transaction; this recorder sends the NOTIFY after the INSERT, with the last
notification id it stored as the payload (``"<schema>:<id>"``), so a follower
woken by it knows whether it has already read that far. psycopg 3.3.9 can
deadlock in pipeline mode: when the socket's send buffer
is full (a large append, while another writer holds the table lock and the
server is not reading), ``_pipeline_communicate`` stops after a partial
``flush()`` and waits for results the server cannot send, while the server
waits for the rest of the transaction, holding the table lock: every writer
stops (seen under two workers with poll-sized appends; cf. psycopg issue
#685). This recorder sends the same statements in an ordinary transaction,
where psycopg flushes everything before it waits for a result.

Trace context (docs/architecture.md, "Trace context"): the events table has
one more, nullable column, ``traceparent`` (added by ``create_table`` to a
table created by an older release, under the start-up DDL lock). An append
given ``traceparents={(originator_id, version): traceparent}`` (by
``BatchService``) stores each event's in the same INSERT; without it the
column stays NULL. Notifications read
back are ``TracedNotification``s, which carry it. The stored event (its
topic and state) and the library's composite type are unchanged. Every append
sends its rows as five base-type arrays (ids, versions, topics, states,
traceparents) rather than the library's composite array, which psycopg dumps in
pure Python field by field (13% of the run process's GIL samples,
docs/benchmarks.md), and sends them in PostgreSQL's binary format (``%b``):
psycopg builds a text-format array literal in Python, quoting and escaping
every element (about 20 ms for a 1,500-event append here, against under 2 ms
in binary, the server's share included).

One round trip per append: the statements above (lock timeout, table lock,
INSERT, NOTIFY) run inside one PL/pgSQL function of the schema,
``batchslot_append``, called as a single autocommit statement, which is its own
transaction: one round trip instead of six (BEGIN, SET LOCAL, LOCK TABLE, INSERT,
NOTIFY, COMMIT), whatever the append's size, so a one-command poll costs what a
large one does per transaction. The function is created with the table (``batchctl
init``, or a process's start-up creation); a store created by an older release,
without it, is appended to as before (the statements one by one) until it is
created, and a log line says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import get_topic, retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier, Literal

__all__ = [
    "TRACEPARENT_COLUMN",
    "AppendWatcher",
    "TracedNotification",
    "UnpipelinedApplicationRecorder",
    "recorder_topic",
    "traceparent_of_notification",
]

log = logging.getLogger(__name__)

TRACEPARENT_COLUMN = "traceparent"
APPEND_FUNCTION = "batchslot_append"
Traceparents = Mapping[tuple[UUID | str, int], str]


@dataclass(frozen=True)
class TracedNotification(Notification):
    """A notification with the W3C ``traceparent`` stored beside its event (or None)."""

    traceparent: str | None = None


def traceparent_of_notification(notification: Notification) -> str | None:
    if isinstance(notification, TracedNotification):
        return notification.traceparent
    return None


class UnpipelinedApplicationRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema, table = self.datastore.schema, self.events_table_name
        # After the library's CREATE TABLE: the column, for tables created before it. The
        # catalogue is read first, so a start on an up-to-date table takes no table lock.
        self.sql_create_statements.append(
            SQL(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = {s} AND table_name = {t} AND column_name = {c}) "
                "THEN ALTER TABLE {schema}.{table} ADD COLUMN {column} text; "
                "END IF; END $$"
            ).format(
                s=schema,
                t=table,
                c=TRACEPARENT_COLUMN,
                schema=Identifier(schema),
                table=Identifier(table),
                column=Identifier(TRACEPARENT_COLUMN),
            )
        )
        # Every append's NOTIFY, after its INSERT: "<schema>:<its last notification id>"
        # (delivered at commit, as the library's; followers skip a read it says they
        # need not make, infrastructure/postgres/listen.py).
        self.notify_statement: Composed = SQL("SELECT pg_notify({channel}, %s)").format(
            channel=Literal(self.channel_name)
        )
        # Every append: five parallel base-type arrays (see _insert_stored_events).
        self.insert_traced_events_statement: Composed = SQL(
            "INSERT INTO {schema}.{table} AS t ("
            "originator_id, originator_version, topic, state, {column}) "
            "SELECT * FROM unnest(%b::{originator_id_type}[], %b::bigint[], %b::text[], "
            "%b::bytea[], %b::text[]) "
            "RETURNING notification_id"
        ).format(
            schema=Identifier(schema),
            table=Identifier(table),
            originator_id_type=Identifier(self.datastore.originator_id_type),
            column=Identifier(TRACEPARENT_COLUMN),
        )

        # The whole append in one statement (see the module docstring): the lock timeout
        # and table lock first (so ids commit in order), the INSERT, then the NOTIFY of
        # the last id; the ids are returned in the events' order.
        function = SQL("{schema}.{name}").format(
            schema=Identifier(schema), name=Identifier(APPEND_FUNCTION)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {function}(ids {originator_id_type}[], "
                "versions bigint[], topics text[], states bytea[], traceparents text[], "
                "lock_timeout text) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$ "
                "DECLARE stored bigint[]; "
                "BEGIN "
                "PERFORM set_config('lock_timeout', lock_timeout, true); "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "WITH inserted AS (INSERT INTO {schema}.{table} ("
                "originator_id, originator_version, topic, state, {column}) "
                "SELECT * FROM unnest(ids, versions, topics, states, traceparents) "
                "RETURNING notification_id) "
                "SELECT array_agg(notification_id ORDER BY notification_id) INTO stored "
                "FROM inserted; "
                "PERFORM pg_notify({channel}, {prefix} || stored[cardinality(stored)]); "
                "RETURN QUERY SELECT unnest(stored); "
                "END $body$"
            ).format(
                function=function,
                originator_id_type=Identifier(self.datastore.originator_id_type),
                schema=Identifier(schema),
                table=Identifier(table),
                column=Identifier(TRACEPARENT_COLUMN),
                channel=Literal(self.channel_name),
                prefix=Literal(f"{schema}:"),
            )
        )
        self.call_append_statement: Composed = SQL(
            "SELECT * FROM {function}(%b::{originator_id_type}[], %b::bigint[], %b::text[], "
            "%b::bytea[], %b::text[], %s::text)"
        ).format(
            function=function, originator_id_type=Identifier(self.datastore.originator_id_type)
        )
        self._one_statement = True  # False: the function is missing (an older store)

        self._watchers: list[AppendWatcher] = []

    def watch(self, watcher: AppendWatcher) -> None:
        """Tell ``watcher`` of every append of this recorder, in the appending thread:
        ``appending()`` before it, ``appended(notifications, events)`` after it (empty
        when it failed or stored nothing). ``events``: the domain events the append
        stored, aligned with its notifications, when the caller gave them
        (``decided_events=``), else None. ``shared_log.py`` keeps both, so the followers
        of the process that appended need not read them back or decode them."""
        self._watchers.append(watcher)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        for watcher in self._watchers:
            watcher.appending()
        appended: Sequence[int] | None = None
        try:
            if stored_events and self._one_statement:
                appended = self._append_in_one_statement(stored_events, **kwargs)
            if appended is None:
                appended = self._append_statement_by_statement(stored_events, **kwargs)
        finally:
            if self._watchers:
                self._tell_appended(stored_events, appended or [], kwargs)
        return appended

    def _append_statement_by_statement(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return None
            # Lock the table, insert, read the notification ids, NOTIFY which they are.
            self._insert_stored_events(curs, stored_events, **kwargs)
            ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
            if ids:
                curs.execute(self.notify_statement, (f"{self.datastore.schema}:{max(ids)}",))
            return ids

    def _tell_appended(
        self, stored_events: Sequence[StoredEvent], ids: Sequence[int], kwargs: Mapping[str, Any]
    ) -> None:
        contexts: Traceparents = kwargs.get("traceparents") or {}
        notifications = [
            TracedNotification(
                id=nid,
                originator_id=e.originator_id,
                originator_version=e.originator_version,
                topic=e.topic,
                state=e.state,
                traceparent=contexts.get((e.originator_id, e.originator_version)),
            )
            for nid, e in zip(ids, stored_events, strict=True)
        ]
        events = _aligned(kwargs.get("decided_events"), notifications)
        for watcher in self._watchers:
            try:
                watcher.appended(notifications, events)
            except Exception:  # committed already: a watcher's failure is not the append's
                log.exception("a watcher of the event store's appends failed")

    def _append_in_one_statement(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        traceparents: Traceparents | None = None,
        **_: Any,
    ) -> list[int] | None:
        """Append through the schema's append function (None: it does not exist)."""
        columns = _columns(stored_events, traceparents)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            try:
                curs.execute(
                    self.call_append_statement,
                    (*columns, f"{self.datastore.lock_timeout}s"),
                    prepare=True,
                )
            except psycopg.errors.UndefinedFunction:
                self._one_statement = False
                log.warning(
                    "the event store has no %s function (created by an older release): "
                    "appending statement by statement; `batchctl init` creates it",
                    APPEND_FUNCTION,
                )
                return None
            return [row[APPEND_FUNCTION] for row in curs.fetchall()]

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        traceparents: Traceparents | None = None,
        **kwargs: Any,
    ) -> None:
        # Five base-type arrays, not the library's composite array: psycopg dumps a
        # composite array in pure Python, field by field (docs/benchmarks.md), base-type
        # arrays in C. unnest() of parallel arrays zips them in order, so RETURNING
        # still lists the ids in the events' order. No traceparents: the column is NULL.
        self._lock_table(curs)
        curs.execute(self.insert_traced_events_statement, _columns(stored_events, traceparents))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """The library's query (``SELECT *`` already reads the column), its rows kept
        with their ``traceparent``."""
        statement = SQL("SELECT * FROM {schema}.{table}").format(
            schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
        )
        where: list[Composed | SQL] = []
        params: list[Any] = []
        if start is not None:
            where.append(SQL("notification_id>=%s" if inclusive_of_start else "notification_id>%s"))
            params.append(start)
        if stop is not None:
            where.append(SQL("notification_id<=%s"))
            params.append(stop)
        if topics:
            where.append(SQL("topic = ANY(%s)"))
            params.append(list(topics))
        if where:
            statement += SQL(" WHERE ") + SQL(" AND ").join(where)
        statement += SQL(" ORDER BY notification_id LIMIT %s")
        params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params, prepare=True)
            return [
                TracedNotification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                    traceparent=row.get(TRACEPARENT_COLUMN),
                )
                for row in curs.fetchall()
            ]


class AppendWatcher(Protocol):
    """What ``UnpipelinedApplicationRecorder.watch`` tells of each append."""

    def appending(self) -> None: ...

    def appended(
        self, notifications: list[TracedNotification], events: list[Any] | None
    ) -> None: ...


def _aligned(
    events: Sequence[Any] | None, notifications: Sequence[Notification]
) -> list[Any] | None:
    """The domain events of an append in its notifications' order (None: not given, or
    not exactly the events stored)."""
    if not events or len(events) != len(notifications):
        return None
    by_key = {(e.originator_id, e.originator_version): e for e in events}
    found = [by_key.get((n.originator_id, n.originator_version)) for n in notifications]
    return None if any(e is None for e in found) else found


def _columns(
    stored_events: Sequence[StoredEvent], traceparents: Traceparents | None
) -> tuple[list[Any], ...]:
    """An append's rows as five parallel arrays: ids, versions, topics, states and
    traceparents (None where an event has none)."""
    contexts = traceparents or {}
    return (
        [e.originator_id for e in stored_events],
        [e.originator_version for e in stored_events],
        [e.topic for e in stored_events],
        [e.state for e in stored_events],
        [contexts.get((e.originator_id, e.originator_version)) for e in stored_events],
    )


def recorder_topic() -> str:
    return get_topic(UnpipelinedApplicationRecorder)
