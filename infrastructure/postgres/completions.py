"""What HuleEdu's completion announcement needs from a batch's stream (CONTRACT §7).

``BatchContentProvisioningCompletedV1`` carries the registration's correlation
id and owner, and the ready essays of every part of the ``BatchCompleted``;
the outbox reads those stored events here, one query per page that completes
batches (``projections/huleedu.py`` maps them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

from domain import Batch

TOPICS = (get_topic(Batch.BatchRegistered), get_topic(Batch.BatchCompleted))


class CompletionFacts:
    """The registration and completion events of given streams, from the events table."""

    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self._datastore = recorder.datastore
        self._events = SQL("{0}.{1}").format(
            Identifier(self._datastore.schema), Identifier(recorder.events_table_name)
        )

    def stored(self, originator_ids: Iterable[UUID]) -> dict[UUID, list[StoredEvent]]:
        """Each stream's ``BatchRegistered`` and ``BatchCompleted`` events, in version order."""
        ids = sorted(set(originator_ids))
        found: dict[UUID, list[StoredEvent]] = {i: [] for i in ids}
        if not ids:
            return found
        with self._datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT originator_id, originator_version, topic, state FROM {0} "
                    "WHERE originator_id = ANY(%s) AND topic = ANY(%s) "
                    "ORDER BY originator_id, originator_version"
                ).format(self._events),
                (ids, list(TOPICS)),
            )
            rows: list[Any] = curs.fetchall()
        for row in rows:
            found[row["originator_id"]].append(
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
            )
        return found
