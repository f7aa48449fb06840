"""The durable due-batch index: what the timeout sweep reads, kept beside the store.

Two tables in the event store's schema:

- ``batch_due(batch_id, deadline, pending_since)``: one row per batch that is
  open (``deadline``: when it times out) or holds content before its
  registration (``pending_since``: its oldest pending content); a row whose
  both columns are empty is deleted, so the table holds only what may fall due;
- ``due_index_tracking``: the position in the notification log up to which the
  rows are up to date (the library's single-row tracking table).

A page of events moves the rows and the position in one transaction, and the
position moves only from the one the page was read after (compare and set):
a re-delivered event changes nothing, and of two followers that read the
same page only the first commits; the other gets ``IntegrityError``, rolls
back and reads again from the new position. A flushed or lost Redis never
delays a timeout: nothing here depends on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.persistence import IntegrityError
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL, Composable, Identifier

from projections.due_index import DueChange, DueEntry, fold_due

DUE_TABLE = "batch_due"
TRACKING_TABLE = "due_index_tracking"


class DueIndex(PostgresTrackingRecorder):
    """The ``batch_due`` table and its tracking position (a library tracking recorder)."""

    def __init__(self, datastore: PostgresDatastore, application_name: str) -> None:
        super().__init__(datastore, tracking_table_name=TRACKING_TABLE)
        self.application_name = application_name
        schema = Identifier(datastore.schema)
        self._rows = SQL("{0}.{1}").format(schema, Identifier(DUE_TABLE))
        self._tracking = SQL("{0}.{1}").format(schema, Identifier(TRACKING_TABLE))
        self.sql_create_statements.extend(
            [
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} ("
                    "batch_id text PRIMARY KEY, "
                    "deadline timestamptz, "
                    "pending_since timestamptz)"
                ).format(self._rows),
                SQL(
                    "CREATE INDEX IF NOT EXISTS {0} ON {1} (deadline) WHERE deadline IS NOT NULL"
                ).format(Identifier(f"{DUE_TABLE}_deadline"), self._rows),
                SQL(
                    "CREATE INDEX IF NOT EXISTS {0} ON {1} (pending_since) "
                    "WHERE pending_since IS NOT NULL"
                ).format(Identifier(f"{DUE_TABLE}_pending"), self._rows),
            ]
        )

    def create_table(self) -> None:
        """Create the tables (callers serialise start-up DDL) and the position row."""
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0} (application_name, notification_id) VALUES (%s, 0) "
                    "ON CONFLICT DO NOTHING"
                ).format(self._tracking),
                [self.application_name],
            )

    # -------------------------------------------------------------- writes

    def position(self) -> int:
        """The last notification id the rows reflect (0: none)."""
        return self.max_tracking_id(self.application_name) or 0

    def apply(self, changes: Sequence[tuple[str, DueChange]], after: int, position: int) -> None:
        """Apply a page's changes (in log order) and move the position from ``after``
        to ``position``, in one transaction; ``IntegrityError`` (nothing written)
        when the position is no longer ``after``: another follower got there first."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET notification_id = %s "
                    "WHERE application_name = %s AND notification_id = %s"
                ).format(self._tracking),
                [position, self.application_name, after],
            )
            if curs.rowcount != 1:  # the row lock serialises followers; the loser re-reads
                raise IntegrityError(
                    f"due index position is no longer {after} (another follower moved it)"
                )
            batch_ids = sorted({b for b, c in changes if not c.empty})
            if not batch_ids:
                return
            curs.execute(
                SQL(
                    "SELECT batch_id, deadline, pending_since FROM {0} WHERE batch_id = ANY(%s)"
                ).format(self._rows),
                [batch_ids],
            )
            entries: dict[str, DueEntry] = {
                row["batch_id"]: DueEntry(row["deadline"], row["pending_since"])
                for row in curs.fetchall()
            }
            for batch_id, change in changes:
                if not change.empty:
                    entries[batch_id] = fold_due(entries.get(batch_id, DueEntry()), change)
            gone = [b for b in batch_ids if entries[b] == DueEntry()]
            kept = [(b, entries[b].deadline, entries[b].pending_since) for b in batch_ids]
            kept = [row for row in kept if row[0] not in set(gone)]
            if gone:
                curs.execute(
                    SQL("DELETE FROM {0} WHERE batch_id = ANY(%s)").format(self._rows), [gone]
                )
            if kept:
                curs.executemany(
                    SQL(
                        "INSERT INTO {0} (batch_id, deadline, pending_since) VALUES (%s, %s, %s) "
                        "ON CONFLICT (batch_id) DO UPDATE SET deadline = EXCLUDED.deadline, "
                        "pending_since = EXCLUDED.pending_since"
                    ).format(self._rows),
                    kept,
                )

    # --------------------------------------------------------------- reads

    def due_for_timeout(self, now: datetime, *, limit: int | None = None) -> list[str]:
        """Open batches whose deadline is at or before ``now``, earliest first."""
        return self._due("deadline", now, limit)

    def due_for_expiry(
        self, now: datetime, ttl_seconds: int, *, limit: int | None = None
    ) -> list[str]:
        """Unregistered batches whose oldest pending content is ``ttl_seconds`` old."""
        return self._due("pending_since", now - timedelta(seconds=ttl_seconds), limit)

    def oldest_pending_since(self) -> datetime | None:
        """The oldest content still held for a batch never registered (None: none).

        One index lookup (``batch_due_pending``), as up to date as the index.
        """
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(SQL("SELECT min(pending_since) AS oldest FROM {0}").format(self._rows))
            row = curs.fetchone()
        oldest = None if row is None else row["oldest"]
        return oldest if isinstance(oldest, datetime) else None

    def entries(self) -> dict[str, DueEntry]:
        """Every row (for tests and checks)."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL("SELECT batch_id, deadline, pending_since FROM {0}").format(self._rows)
            )
            return {
                r["batch_id"]: DueEntry(r["deadline"], r["pending_since"]) for r in curs.fetchall()
            }

    def listing(
        self, ttl_seconds: int, *, until: datetime | None = None, open_only: bool = False
    ) -> list[tuple[str, datetime | None, datetime | None]]:
        """(batch_id, deadline, pending_since) of every batch the index holds, soonest due
        first (a deadline, or the oldest pending content + ``ttl_seconds``); ``until``:
        only those due by then; ``open_only``: only registered (open) batches."""
        due = SQL("coalesce(deadline, pending_since + make_interval(secs => %s))")
        conditions: list[Composable] = [SQL("deadline IS NOT NULL")] if open_only else []
        params: list[Any] = []
        if until is not None:
            conditions.append(due + SQL(" <= %s"))
            params += [ttl_seconds, until]
        where = SQL(" WHERE ") + SQL(" AND ").join(conditions) if conditions else SQL("")
        query = (
            SQL("SELECT batch_id, deadline, pending_since FROM {0}").format(self._rows)
            + where
            + SQL(" ORDER BY ")
            + due
            + SQL(", batch_id")
        )
        params.append(ttl_seconds)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(query, params)
            return [(r["batch_id"], r["deadline"], r["pending_since"]) for r in curs.fetchall()]

    def _due(self, column: str, until: datetime, limit: int | None) -> list[str]:
        query = SQL("SELECT batch_id FROM {0} WHERE {1} <= %s ORDER BY {1}, batch_id").format(
            self._rows, Identifier(column)
        )
        params: list[Any] = [until]
        if limit is not None:
            query += SQL(" LIMIT %s")
            params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(query, params)
            return [row["batch_id"] for row in curs.fetchall()]
