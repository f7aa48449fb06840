"""One batch as ``batchctl status`` and ``audit`` show it: both sides, timing, history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from domain import Batch
from infrastructure.cli.common import batch_service, fail
from infrastructure.cli.events import EventView, fold
from infrastructure.cli.queries.sides import BothSides
from infrastructure.postgres.parking import PARKED_TABLE
from infrastructure.postgres.reader import EventStoreReader
from infrastructure.processes.outbox import TRACKING_TABLE as OUTBOX_TRACKING_TABLE
from infrastructure.settings import Settings


@dataclass(frozen=True)
class Status:
    """``status``: both sides, the deadline and time left, and the outbox's progress."""

    sides: BothSides
    timing: dict[str, Any]
    outbox: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {**self.sides.as_json(), **self.timing, "outbox": self.outbox}


def batch_status(s: Settings, batch_id: str) -> Status:
    """The batch as the aggregate and the read model see it (fails when neither knows it)."""
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        batch = service.get_batch(batch_id)
        now = service.clock()
        last = reader.last_position(Batch.create_id(batch_id))
        published = reader.tracked_position(OUTBOX_TRACKING_TABLE, service.name)
        parked = reader.parked_count(PARKED_TABLE, batch_id)
    sides = BothSides.of(s, batch_id, batch)
    if batch is None and sides.read_model is None:
        why = f"no events in DATABASE_SCHEMA={s.database_schema} and no read model in Redis"
        unknown(batch_id, why)
    outbox = {
        "last_event_position": last,
        "outbox_position": published,
        "published": None if published is None or last is None else published >= last,
        "parked": parked,
    }
    return Status(sides, timing(batch, now), outbox)


def timing(batch: Batch | None, now: datetime) -> dict[str, Any]:
    deadline = batch.deadline if batch is not None else None
    left = None
    if deadline is not None and batch is not None and batch.status == "open":
        left = round((deadline - now).total_seconds(), 3)
    return {
        "deadline": deadline.isoformat() if deadline is not None else None,
        "seconds_left": left,
    }


@dataclass(frozen=True)
class History:
    """``audit``: every stored event of the batch, and both sides after them."""

    sides: BothSides
    events: list[EventView]

    def as_json(self) -> dict[str, Any]:
        return {**self.sides.as_json(), "events": [e.as_json() for e in self.events]}


def batch_history(s: Settings, batch_id: str) -> History:
    """The batch's stored events in order (fails when the store has none)."""
    with batch_service(s) as service, EventStoreReader(service, s) as reader:
        pages = reader.pages(originator_id=Batch.create_id(batch_id))
        events = [EventView.decode(service.mapper, n) for page in pages for n in page]
    if not events:
        unknown(batch_id, f"no events in DATABASE_SCHEMA={s.database_schema}")
    return History(BothSides.of(s, batch_id, fold(e.event for e in events)), events)


def unknown(batch_id: str, why: str) -> NoReturn:
    fail(f"unknown batch {batch_id!r}: {why}; check the batch id and DATABASE_SCHEMA")
