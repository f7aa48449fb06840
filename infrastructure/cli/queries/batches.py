"""The batches still to close, soonest due first, as ``batchctl batches`` lists them.

Read from the due-batch index (table batch_due, kept by the follower in every
worker), with the index's and the store's positions to tell when it is behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from infrastructure.cli.common import container
from infrastructure.settings import Settings


@dataclass(frozen=True)
class Due:
    now: datetime
    index_position: int
    store_position: int
    batches: list[dict[str, Any]]

    @property
    def behind(self) -> bool:
        return self.index_position < self.store_position

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "index_position": self.index_position,
            "store_position": self.store_position,
            "count": len(self.batches),
            "batches": self.batches,
        }


def due_batches(s: Settings, window: timedelta | None, open_only: bool) -> Due:
    """The batches due within ``window`` (all when None), overdue ones too."""
    ttl = s.pending_ttl_seconds
    with container(s) as built:
        service, index = built.service, built.due_index
        now = service.clock()
        rows = index.listing(
            ttl, until=now + window if window is not None else None, open_only=open_only
        )
        position, head = index.position(), service.recorder.max_notification_id() or 0
    found = [entry(batch_id, deadline, pending, ttl, now) for batch_id, deadline, pending in rows]
    return Due(now, position, head, found)


def entry(
    batch_id: str, deadline: datetime | None, pending: datetime | None, ttl: int, now: datetime
) -> dict[str, Any]:
    """One row of the index as listed: open by its deadline, unregistered by its expiry."""
    if deadline is not None:
        status, due = "open", deadline
    else:
        assert pending is not None
        status, due = "awaiting_registration", pending + timedelta(seconds=ttl)
    left = (due - now).total_seconds()
    return {
        "batch_id": batch_id,
        "status": status,
        "due_at": due.isoformat(),
        "seconds_left": round(left, 3),
        "overdue": left <= 0,
    }
