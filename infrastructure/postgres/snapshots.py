"""Snapshot pruning: keep only the latest snapshot of each batch.

The library keeps every snapshot it is given (``batchservice_snapshots``,
primary key ``(originator_id, originator_version)``) and never deletes one.
A 5,000-slot batch snapshotted every 100 versions would store about 50
snapshots, each a copy of the whole state: ~13x the bytes of its events. Only
the latest is ever read (the repository loads the newest snapshot, then the
events after it), so older ones are deleted right after a new one is stored,
in the following transaction. A failed prune is logged and left for the next
snapshot of that batch to catch up (it deletes every older version).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres import PostgresAggregateRecorder
from psycopg import Error as PsycopgError
from psycopg.sql import SQL, Identifier

log = logging.getLogger(__name__)


def prune_snapshots(recorder: Any, kept: Sequence[tuple[UUID, int]]) -> None:
    """Delete every snapshot of each aggregate older than the version kept."""
    if not kept or not isinstance(recorder, PostgresAggregateRecorder):
        return
    statement = SQL(
        "DELETE FROM {0}.{1} WHERE originator_id = %s AND originator_version < %s"
    ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
    try:
        with recorder.datastore.transaction(commit=True) as curs:
            for originator_id, version in kept:
                curs.execute(statement, (originator_id, version))
    except (PersistenceError, PsycopgError) as e:
        log.warning(
            "older snapshots not pruned (%s: %s); the next snapshot will", type(e).__name__, e
        )
