"""The store side of the fault run: the stored history and the processes' positions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from psycopg import sql

from application.service import BatchService
from infrastructure.postgres.lease import LEASE_LOCK_KEY, lease_key
from infrastructure.postgres.store import conninfo
from infrastructure.processes.outbox import TRACKING_TABLE
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import Settings


@dataclass
class StoredEvent:
    notification_id: int
    originator_id: uuid.UUID
    version: int
    type: str
    data: dict[str, Any]

    @classmethod
    def of(cls, notification_id: int, event: Any) -> StoredEvent:
        """A stored domain event as the checker sees it (its attributes but the originator)."""
        data = {k: v for k, v in vars(event).items() if not k.startswith("originator")}
        return cls(
            notification_id,
            uuid.UUID(str(event.originator_id)),
            int(event.originator_version),
            type(event).__name__,
            data,
        )


def read_store(service: BatchService) -> list[StoredEvent]:
    """Every stored event in notification order."""
    out: list[StoredEvent] = []
    position = 0
    for _ in range(100_000):
        page = service.recorder.select_notifications(position, 1000, inclusive_of_start=False)
        if not page:
            break
        out += [StoredEvent.of(n.id, service.mapper.to_domain_event(n)) for n in page]
        position = page[-1].id
    return out


def outbox_position(settings: Settings) -> int:
    """The outbox's recorded position (where a restarted outbox resumes); 0 before it ran."""
    with psycopg.connect(**conninfo(settings), connect_timeout=5) as conn:
        query = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}.{}").format(
            sql.Identifier(settings.database_schema), sql.Identifier(TRACKING_TABLE)
        )
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0


def positions(settings: Settings, service: BatchService) -> tuple[int, int, int]:
    """(store head, outbox position, projector position)."""
    head = service.recorder.max_notification_id() or 0
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        projected = RedisSlotView(client, settings.redis_key_prefix).position() or 0
    finally:
        client.close()
    return head, outbox_position(settings), projected


def lease_holder_pid(settings: Settings, follower: str) -> int | None:
    """The OS process id of the instance holding ``follower``'s lease (None: nobody), read
    from its keeper session's ``application_name`` (``batchslot-lease host:pid:id``)."""
    with psycopg.connect(**conninfo(settings), connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
            " AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LEASE_LOCK_KEY, lease_key(settings.database_schema, follower) % 2**32),
        ).fetchone()
    if row is None or not str(row[0]).startswith("batchslot-lease "):
        return None
    parts = str(row[0]).removeprefix("batchslot-lease ").rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
