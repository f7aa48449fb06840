"""Read-only scans of the events table for batchctl, page by page.

The ``eventsourcing`` library owns the table (``batchservice_events``); this
module only reads it in the two orders the CLI needs: global order
(``notification_id``, the "position") and stream order
(``originator_id, originator_version``, for folding every batch), plus the
existence check that makes ``import --resume`` idempotent. Nothing here loads
the whole store into memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from psycopg import sql

from application.service import BatchService
from infrastructure.postgres.store import OwnConnection, connect
from infrastructure.settings import Settings

PAGE_SIZE = 500


class EventStoreReader(OwnConnection):
    """Paged queries over the service's events table, on one connection of its own."""

    def __init__(self, service: BatchService, settings: Settings) -> None:
        super().__init__(settings)
        recorder: Any = service.recorder
        self._table = sql.Identifier(recorder.datastore.schema, recorder.events_table_name)

    # ------------------------------------------------------------- counts

    def max_position(self) -> int:
        query = sql.SQL("SELECT max(notification_id) FROM {}").format(self._table)
        row = self.conn.execute(query).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def count_events(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._table)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------- global order

    def pages(
        self,
        *,
        start: int = 1,
        stop: int | None = None,
        originator_id: UUID | None = None,
        topics: Sequence[str] = (),
        page_size: int = PAGE_SIZE,
    ) -> Iterator[list[Notification]]:
        """Stored events with ``start <= position <= stop`` in global order, a page at a time."""
        after = start - 1
        while True:
            conditions = [sql.SQL("notification_id > %s")]
            params: list[Any] = [after]
            if stop is not None:
                conditions.append(sql.SQL("notification_id <= %s"))
                params.append(stop)
            if originator_id is not None:
                conditions.append(sql.SQL("originator_id = %s"))
                params.append(originator_id)
            if topics:
                conditions.append(sql.SQL("topic = ANY(%s)"))
                params.append(list(topics))
            query = sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {} WHERE {} ORDER BY notification_id LIMIT %s"
            ).format(self._table, sql.SQL(" AND ").join(conditions))
            params.append(page_size)
            rows = self.conn.execute(query, params).fetchall()
            if not rows:
                return
            yield [
                Notification(
                    id=row[0],
                    originator_id=row[1],
                    originator_version=row[2],
                    topic=row[3],
                    state=bytes(row[4]),
                )
                for row in rows
            ]
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    # ------------------------------------------------------- stream order

    def streams(self, itersize: int = 2000) -> Iterator[list[StoredEvent]]:
        """Every stream, one at a time, each in version order (a server-side cursor)."""
        query = sql.SQL(
            "SELECT originator_id, originator_version, topic, state FROM {} "
            "ORDER BY originator_id, originator_version"
        ).format(self._table)
        with connect(self.settings) as conn, conn.cursor(name="batchctl_streams") as cur:
            cur.itersize = itersize
            cur.execute(query)
            current: list[StoredEvent] = []
            for originator_id, version, topic, state in cur:
                if current and current[0].originator_id != originator_id:
                    yield current
                    current = []
                current.append(StoredEvent(originator_id, version, topic, bytes(state)))
            if current:
                yield current

    def last_position(self, originator_id: UUID) -> int | None:
        """The position of a stream's last event (None: no such stream)."""
        query = sql.SQL("SELECT max(notification_id) FROM {} WHERE originator_id = %s").format(
            self._table
        )
        row = self.conn.execute(query, [originator_id]).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def tracked_position(self, table: str, application_name: str) -> int | None:
        """A follower's position in its tracking ``table`` of this schema (None: no table)."""
        if not self._exists(table):
            return None
        query = sql.SQL(
            "SELECT max(notification_id) FROM {} WHERE application_name = %s"
        ).format(sql.Identifier(self.settings.database_schema, table))
        row = self.conn.execute(query, [application_name]).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def parked_count(self, table: str, batch_id: str) -> int | None:
        """Events of a batch in the outbox's parking ``table`` (None: no table)."""
        if not self._exists(table):
            return None
        query = sql.SQL("SELECT count(*) FROM {} WHERE batch_id = %s").format(
            sql.Identifier(self.settings.database_schema, table)
        )
        row = self.conn.execute(query, [batch_id]).fetchone()
        return int(row[0]) if row else 0

    def _exists(self, table: str) -> bool:
        row = self.conn.execute(
            "SELECT to_regclass(%s)",
            [sql.Identifier(self.settings.database_schema, table).as_string(self.conn)],
        ).fetchone()
        return bool(row and row[0])

    def known_streams(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these aggregate ids have a stream in the store."""
        query = sql.SQL(
            "SELECT originator_id FROM {} WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(self._table)
        return {row[0] for row in self.conn.execute(query, [list(originator_ids)])}

    def existing(self, keys: Sequence[tuple[UUID, int]]) -> dict[tuple[UUID, int], StoredEvent]:
        """The stored events at these (originator_id, originator_version) keys."""
        if not keys:
            return {}
        query = sql.SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state FROM {} e "
            "JOIN unnest(%s::uuid[], %s::bigint[]) AS k(id, v) "
            "ON e.originator_id = k.id AND e.originator_version = k.v"
        ).format(self._table)
        ids = [k[0] for k in keys]
        versions = [k[1] for k in keys]
        return {
            (row[0], row[1]): StoredEvent(row[0], row[1], row[2], bytes(row[3]))
            for row in self.conn.execute(query, [ids, versions])
        }

    # ------------------------------------------------------ pending content

    def pending_streams(self, pended: str, closing: Sequence[str]) -> list[UUID]:
        """Streams with a ``pended`` event and none of the ``closing`` event topics
        (``batchctl pending``: content held for batches never registered)."""
        query = sql.SQL(
            "SELECT originator_id FROM {} GROUP BY originator_id "
            "HAVING bool_or(topic = %s) AND NOT bool_or(topic = ANY(%s))"
        ).format(self._table)
        return [row[0] for row in self.conn.execute(query, [pended, list(closing)])]
