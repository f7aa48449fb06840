"""HuleEdu's outbound events (CONTRACT §7) from stored Batch events.

With ``WIRE_PROFILE=huleedu`` the outbox publishes, besides every stored event
on ``batch.events.v1``, what HuleEdu's Batch Orchestrator Service and Result
Aggregator consume from the Essay Lifecycle Service, in HuleEdu's envelope:

- ``SlotAssigned``: ``EssaySlotAssignedV1`` on ``huleedu.els.essay.slot.assigned.v1``;
- ``ExcessContentProvisioned``: ``ExcessContentProvisionedV1`` on
  ``huleedu.els.excess.content.provisioned.v1``;
- the last part of a ``BatchCompleted``: ``BatchContentProvisioningCompletedV1`` on
  ``huleedu.batch.content.provisioning.completed.v1`` (also for a timed-out batch,
  with what is ready: a batch never stalls HuleEdu's pipeline).

Pure: no I/O, no clock. The same stored event always maps to the same
records: ``event_id`` is ``uuid5(originator_id, "<version>:<HuleEdu event>")``
(stable per stored event and HuleEdu event, whatever its topic is called), and
``data.timestamp`` / ``event_timestamp`` are the stored event's time, so a
republish is byte-identical in ``data`` (HuleEdu's consumers deduplicate on a
hash of ``event_id`` and ``data``).

A completion is announced once, with the last part of its ``BatchCompleted``:
its ``essays_for_processing`` are the ``ready`` lists of every part, its
``correlation_id`` and owner (``course_code``, ``user_id``) the registration's.
The outbox reads those from the store (``Completion``); this module only maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

from projections.envelope import (
    OutboundMessage,
    compact_json,
    json_value,
    rfc3339,
    uuid5_text,
)

SCHEMA_VERSION = 1
SLOT_ASSIGNED = "EssaySlotAssignedV1"
EXCESS = "ExcessContentProvisionedV1"
COMPLETED = "BatchContentProvisioningCompletedV1"
# A correlation id that is not a UUID (HuleEdu's envelope requires one; events
# imported from elsewhere may carry any text) becomes this namespace's uuid5 of it.
CORRELATION_NAMESPACE = UUID("3f0c7c8e-5b1a-5c1e-9d1e-6b7d2a4e8f10")


@dataclass(frozen=True)
class HuleEduTopics:
    """Where each HuleEdu event goes (``TOPIC_HULEEDU_*``; these are HuleEdu's names)."""

    completed: str = "huleedu.batch.content.provisioning.completed.v1"
    slot_assigned: str = "huleedu.els.essay.slot.assigned.v1"
    excess: str = "huleedu.els.excess.content.provisioned.v1"

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.completed, self.slot_assigned, self.excess)


@dataclass(frozen=True)
class Completion:
    """What a completion's announcement needs beyond its last part: the registration
    (``BatchRegistered``) and every part of the ``BatchCompleted``, in part order."""

    registration: Any
    parts: Sequence[Any]


class MissingOwner(ValueError):
    """The batch was registered without ``course_code`` or ``user_id`` (a native
    registration, or one stored before they were kept): HuleEdu's completion
    event requires both, so it is not announced."""


def needs_completion(event: Any) -> bool:
    """The event is the last part of a completion (it announces the batch)."""
    return type(event).__name__ == "BatchCompleted" and event.part == event.parts


def huleedu_messages(
    event: Any,
    topics: HuleEduTopics,
    source_service: str,
    traceparent: str | None = None,
    completion: Completion | None = None,
) -> list[OutboundMessage]:
    """HuleEdu's records for one stored Batch event (none for most event types).

    ``completion`` is required for the last part of a ``BatchCompleted``; raises
    ``MissingOwner`` when its registration named no course code or user.
    """
    kind = type(event).__name__
    facts = vars(event)
    if kind == "SlotAssigned":
        data = {
            "event": "essay.slot.assigned",
            "batch_id": facts["batch_id"],
            "essay_id": facts["essay_id"],
            "file_upload_id": facts["file_upload_id"],
            "text_storage_id": facts["text_storage_id"],
            "original_file_name": facts["original_file_name"],
            "correlation_id": uuid_text(facts["correlation_id"]),
            "timestamp": rfc3339(event.timestamp),
        }
        return [
            _message(event, SLOT_ASSIGNED, topics.slot_assigned, source_service, data, traceparent)
        ]
    if kind == "ExcessContentProvisioned":
        data = {
            "event": "excess.content.provisioned",
            "batch_id": facts["batch_id"],
            "original_file_name": facts["original_file_name"],
            "text_storage_id": facts["text_storage_id"],
            "reason": facts["reason"],
            "correlation_id": uuid_text(facts["correlation_id"]),
            "timestamp": rfc3339(event.timestamp),
        }
        return [_message(event, EXCESS, topics.excess, source_service, data, traceparent)]
    if needs_completion(event):
        if completion is None:
            raise ValueError("the last part of a completion needs its Completion")
        data = completion_data(event, completion)
        return [
            _message(
                event,
                COMPLETED,
                topics.completed,
                source_service,
                data,
                traceparent,
                correlation_id=data["correlation_id"],
            )
        ]
    return []


def completion_data(last_part: Any, completion: Completion) -> dict[str, Any]:
    """``BatchContentProvisioningCompletedV1``'s data: every part's ready essays, the
    registration's slots, owner and correlation id, the completion's time."""
    registration = completion.registration
    course_code, user_id = registration.course_code, registration.user_id
    if not course_code or not user_id:
        raise MissingOwner(
            f"batch {last_part.batch_id!r} was registered without course_code or user_id"
        )
    ready = [
        {"essay_id": r["essay_id"], "text_storage_id": r["text_storage_id"]}
        for part in sorted(completion.parts, key=lambda p: p.part)
        for r in part.ready
    ]
    return {
        "event": "batch.content.provisioning.completed",
        "batch_id": last_part.batch_id,
        "provisioned_count": len(ready),
        "expected_count": registration.expected_count,
        "course_code": course_code,
        "user_id": user_id,
        "essays_for_processing": ready,
        "correlation_id": uuid_text(registration.correlation_id),
        "timestamp": rfc3339(last_part.timestamp),
    }


def uuid_text(correlation_id: str) -> str:
    """The correlation id as HuleEdu's envelope requires it: a UUID (canonical text)."""
    try:
        return str(UUID(correlation_id))
    except ValueError:
        return str(uuid5(CORRELATION_NAMESPACE, correlation_id))


def _message(
    event: Any,
    name: str,
    topic: str,
    source_service: str,
    data: dict[str, Any],
    traceparent: str | None,
    *,
    correlation_id: str | None = None,
) -> OutboundMessage:
    event_id = uuid5_text(event.originator_id, f"{event.originator_version}:{name}")
    envelope = {
        "event_id": event_id,
        "event_type": topic,
        "event_timestamp": rfc3339(event.timestamp),
        "source_service": source_service,
        "schema_version": SCHEMA_VERSION,
        "correlation_id": correlation_id or data["correlation_id"],
        "data_schema_uri": None,
        "data": json_value(data),
        "metadata": {"traceparent": traceparent} if traceparent else None,
    }
    value = compact_json(envelope)
    headers = [("event_id", event_id.encode()), ("event_type", topic.encode())]
    if traceparent is not None:
        headers.append(("traceparent", traceparent.encode("ascii")))
    return OutboundMessage(
        key=data["batch_id"].encode("utf-8"),
        value=value,
        headers=headers,
        event_id=event_id,
        event_type=name,
        topic=topic,
    )
