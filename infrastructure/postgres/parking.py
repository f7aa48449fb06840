"""Parked outbound events: stored events the broker (or the producer) refuses.

A refused event (say, an envelope over the producer's ``max_request_size`` or
the broker's ``message.max.bytes``) must not hold back the events of other
batches. The outbox parks it here, together with every later event of the
same batch (a batch's events are published in stream order, so they wait
behind it), moves its position past the page, and retries the parked events
of each batch in order, every ``parked_retry_seconds``, until they go
through (for instance after the limit was raised); then they are unparked.

The table lives beside ``outbox_tracking`` in the event store's schema:
``outbox_parked(application_name, notification_id, batch_id, event_id,
event_type, reason, attempts, first_failure, last_failure)``, one row per
parked event. ``batchctl`` operators can read it with plain SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from infrastructure.postgres.recorder import TRACEPARENT_COLUMN, TracedNotification

PARKED_TABLE = "outbox_parked"


@dataclass(frozen=True)
class Parked:
    """One parked event (a row of ``outbox_parked``)."""

    notification_id: int
    batch_id: str
    event_id: str
    event_type: str
    reason: str
    attempts: int
    first_failure: datetime
    last_failure: datetime


class ParkingLot:
    """The ``outbox_parked`` table of one application's outbox."""

    def __init__(self, recorder: PostgresApplicationRecorder, application_name: str) -> None:
        self._recorder = recorder
        self._datastore = recorder.datastore
        self.application_name = application_name
        schema = Identifier(self._datastore.schema)
        self._table = SQL("{0}.{1}").format(schema, Identifier(PARKED_TABLE))
        self._events = SQL("{0}.{1}").format(schema, Identifier(recorder.events_table_name))

    def create_table(self) -> None:
        """Create the table if missing (serialized: several processes may start at once)."""
        with self._datastore.transaction(commit=True) as curs:
            curs.execute(SQL("SELECT pg_advisory_xact_lock(hashtext('batchslot.outbox_parked'))"))
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} ("
                    "application_name text NOT NULL, "
                    "notification_id bigint NOT NULL, "
                    "batch_id text NOT NULL, "
                    "event_id text NOT NULL, "
                    "event_type text NOT NULL, "
                    "reason text NOT NULL, "
                    "attempts integer NOT NULL DEFAULT 0, "
                    "first_failure timestamptz NOT NULL DEFAULT now(), "
                    "last_failure timestamptz NOT NULL DEFAULT now(), "
                    "PRIMARY KEY (application_name, notification_id))"
                ).format(self._table)
            )

    def park(self, rows: Iterable[tuple[int, str, str, str, str, int]]) -> int:
        """Park events: (notification_id, batch_id, event_id, event_type, reason, attempts).

        Idempotent (a page re-read after a crash parks nothing twice).
        """
        params = [
            {
                "app": self.application_name,
                "nid": nid,
                "batch": batch_id,
                "eid": event_id,
                "etype": event_type,
                "reason": reason,
                "attempts": attempts,
            }
            for nid, batch_id, event_id, event_type, reason, attempts in rows
        ]
        if not params:
            return 0
        with self._datastore.transaction(commit=True) as curs:
            curs.executemany(
                SQL(
                    "INSERT INTO {0} (application_name, notification_id, batch_id, event_id, "
                    "event_type, reason, attempts) VALUES (%(app)s, %(nid)s, %(batch)s, "
                    "%(eid)s, %(etype)s, %(reason)s, %(attempts)s) "
                    "ON CONFLICT (application_name, notification_id) DO NOTHING"
                ).format(self._table),
                params,
            )
        return len(params)

    def batches(self) -> set[str]:
        """The batches that have parked events (their later events wait behind them)."""
        with self._datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT DISTINCT batch_id FROM {0} WHERE application_name = %s").format(
                    self._table
                ),
                (self.application_name,),
            )
            return {row["batch_id"] for row in curs.fetchall()}

    def count(self) -> int:
        with self._datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT count(*) AS n FROM {0} WHERE application_name = %s").format(
                    self._table
                ),
                (self.application_name,),
            )
            row = curs.fetchone()
            return int(row["n"]) if row else 0

    def parked(self) -> list[Parked]:
        """Every parked event, in notification order."""
        with self._datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT notification_id, batch_id, event_id, event_type, reason, attempts, "
                    "first_failure, last_failure FROM {0} WHERE application_name = %s "
                    "ORDER BY notification_id"
                ).format(self._table),
                (self.application_name,),
            )
            return [Parked(**row) for row in curs.fetchall()]

    def notifications(self, ids: list[int]) -> dict[int, Notification]:
        """The stored events of the given notification ids."""
        with self._datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT notification_id, originator_id, originator_version, topic, state, "
                    "{1} FROM {0} WHERE notification_id = ANY(%s)"
                ).format(self._events, Identifier(TRACEPARENT_COLUMN)),
                (ids,),
            )
            rows: list[Any] = curs.fetchall()
        return {
            row["notification_id"]: TracedNotification(
                id=row["notification_id"],
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
                traceparent=row[TRACEPARENT_COLUMN],
            )
            for row in rows
        }

    def unpark(self, notification_id: int) -> None:
        with self._datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {0} WHERE application_name = %s AND notification_id = %s").format(
                    self._table
                ),
                (self.application_name, notification_id),
            )

    def failed(self, notification_id: int, reason: str) -> None:
        """Count another refused attempt of a parked event."""
        with self._datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET attempts = attempts + 1, last_failure = now(), reason = %s "
                    "WHERE application_name = %s AND notification_id = %s"
                ).format(self._table),
                (reason, self.application_name, notification_id),
            )
