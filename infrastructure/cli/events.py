"""Stored events as an operator reads them: decoded, flattened, summarised.

``EventView.as_json()`` is the stable shape of ``replay --json`` lines and of
``audit --json`` events: position, batch_id, version, event_type, timestamp,
correlation_id, data (the event's own fields, as in CONTRACT §3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper, Notification, StoredEvent
from eventsourcing.utils import get_topic

from domain import Batch

# Fields every stored event has that are not part of its contract `data`.
_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "correlation_id"})


def event_classes() -> dict[str, type[Batch.Event]]:
    """Every stored Batch event type, by its name (``SlotAssigned``, ...)."""
    return {
        name: value
        for name, value in vars(Batch).items()
        if isinstance(value, type)
        and issubclass(value, Batch.Event)
        and not issubclass(value, Aggregate.Created)  # Batch streams have no created event
        and value is not Batch.Event
    }


def event_topic(event_type: str) -> str | None:
    cls = event_classes().get(event_type)
    return get_topic(cls) if cls is not None else None


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EventView:
    position: int | None
    batch_id: str
    version: int
    event_type: str
    timestamp: datetime
    correlation_id: str
    data: dict[str, Any]
    event: Batch.Event

    @classmethod
    def decode(cls, mapper: Mapper[UUID], stored: StoredEvent) -> EventView:
        event = mapper.to_domain_event(stored)
        if not isinstance(event, Batch.Event):
            raise TypeError(f"{stored.topic!r} is not a Batch event")
        fields = vars(event)
        return cls(
            position=stored.id if isinstance(stored, Notification) else None,
            batch_id=str(fields.get("batch_id", "")),
            version=stored.originator_version,
            event_type=type(event).__name__,
            timestamp=event.timestamp,
            correlation_id=str(fields.get("correlation_id", "")),
            data={k: jsonable(v) for k, v in fields.items() if k not in _ENVELOPE},
            event=event,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "batch_id": self.batch_id,
            "version": self.version,
            "event_type": self.event_type,
            "timestamp": self.timestamp.isoformat(),
            "correlation_id": self.correlation_id,
            "data": self.data,
        }

    def facts(self) -> str:
        return key_facts(self.event_type, self.data)


def fold(events: Iterable[Any]) -> Batch | None:
    """The aggregate after these events (in version order), as the repository builds it.

    A gap or a foreign event raises the library's OriginatorVersionError/IDError.
    """
    batch: Batch | None = None
    for event in events:
        batch = cast(Batch.Event, event).mutate(batch)
    return batch


def _ids(values: list[Any], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … (+{len(values) - limit})" if len(values) > limit else "")


def key_facts(event_type: str, d: dict[str, Any]) -> str:
    """One short line with what matters about an event."""
    match event_type:
        case "BatchRegistered":
            ids = list(d.get("essay_ids", []))
            owner = (
                f"; course {d.get('course_code')}, user {d.get('user_id')}"
                if d.get("course_code") or d.get("user_id")
                else ""
            )
            return f"{len(ids)} slots: {_ids(ids)}; deadline {d.get('deadline')}{owner}"
        case "ContentPended":
            return (
                f"{d.get('text_storage_id')} pending "
                f"(file {d.get('file_upload_id')} {d.get('original_file_name')!r})"
            )
        case "SlotAssigned":
            return (
                f"{d.get('essay_id')} ← {d.get('text_storage_id')} "
                f"(file {d.get('file_upload_id')} {d.get('original_file_name')!r})"
            )
        case "ExcessContentProvisioned":
            return f"{d.get('text_storage_id')} excess: {d.get('reason')}"
        case "ValidationFailureRecorded":
            return f"file {d.get('file_upload_id')} failed: {d.get('error_code')}"
        case "BatchCompleted":
            return (
                f"{d.get('outcome')}: {len(d.get('ready', []))} ready, "
                f"{len(d.get('validation_failures', []))} failed, "
                f"{len(d.get('missing_essay_ids', []))} missing{_part(d)}"
            )
        case "PendingContentExpired":
            ids = list(d.get("text_storage_ids", []))
            return f"{len(ids)} pending released: {_ids(ids)}{_part(d)}"
    return ""


def _part(d: dict[str, Any]) -> str:
    parts = d.get("parts", 1)
    return f" (part {d.get('part', 1)} of {parts})" if parts != 1 else ""
