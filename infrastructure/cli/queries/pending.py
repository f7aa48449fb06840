"""Content held for batches not yet registered, as ``batchctl pending`` lists it.

Computed from the event store (the truth): every stream with ``ContentPended``
and neither ``BatchRegistered`` nor ``PendingContentExpired`` is folded; its
pending content is listed with the time it arrived and the batch's expiry time
(first pending + PENDING_TTL_SECONDS), after which the sweep releases it with
``PendingContentExpired``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from infrastructure.cli.common import batch_service
from infrastructure.cli.events import EventView, event_topic, fold
from infrastructure.postgres.reader import EventStoreReader
from infrastructure.settings import Settings


@dataclass(frozen=True)
class Held:
    batch_id: str
    text_storage_id: str
    file_upload_id: str
    original_file_name: str
    correlation_id: str
    pended_at: datetime
    first_pending_at: datetime
    expires_at: datetime

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "text_storage_id": self.text_storage_id,
            "file_upload_id": self.file_upload_id,
            "original_file_name": self.original_file_name,
            "correlation_id": self.correlation_id,
            "pended_at": self.pended_at.isoformat(),
            "age_seconds": round((now - self.pended_at).total_seconds(), 3),
            "batch_first_pending_at": self.first_pending_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "overdue": now >= self.expires_at,
        }


@dataclass(frozen=True)
class Pending:
    """What is held, oldest first, as of ``now``."""

    now: datetime
    pending_ttl_seconds: int
    held: list[Held]

    @property
    def batches(self) -> int:
        return len({h.batch_id for h in self.held})

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "pending_ttl_seconds": self.pending_ttl_seconds,
            "count": len(self.held),
            "batches": self.batches,
            "pending": [h.as_json(self.now) for h in self.held],
        }


def held_in(events: list[EventView], ttl: timedelta) -> list[Held]:
    """The content one stream still holds (none once the batch is registered or released)."""
    batch = fold(e.event for e in events)
    if batch is None or batch.status != "awaiting_registration":
        return []
    first = batch.first_pending_at or events[0].timestamp
    still = set(batch.pending)
    return [
        Held(
            batch_id=e.batch_id,
            text_storage_id=e.data["text_storage_id"],
            file_upload_id=e.data["file_upload_id"],
            original_file_name=e.data["original_file_name"],
            correlation_id=e.correlation_id,
            pended_at=e.timestamp,
            first_pending_at=first,
            expires_at=first + ttl,
        )
        for e in events
        if e.event_type == "ContentPended" and e.data["text_storage_id"] in still
    ]


def pending_content(s: Settings, minimum: timedelta) -> Pending:
    """Everything pending for at least ``minimum``, oldest first."""
    now = datetime.now(UTC)
    ttl = timedelta(seconds=s.pending_ttl_seconds)
    held: list[Held] = []
    pended = event_topic("ContentPended")
    closing = [event_topic("BatchRegistered"), event_topic("PendingContentExpired")]
    assert pended is not None and None not in closing
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        for originator_id in reader.pending_streams(pended, [t for t in closing if t]):
            events = [
                EventView.decode(service.mapper, n)
                for page in reader.pages(originator_id=originator_id)
                for n in page
            ]
            held.extend(held_in(events, ttl))
    chosen = sorted(
        (h for h in held if now - h.pended_at >= minimum),
        key=lambda h: (h.pended_at, h.batch_id, h.text_storage_id),
    )
    return Pending(now, s.pending_ttl_seconds, chosen)
