"""The slot-count read model (CONTRACT §4): what each Batch event means to it.

Pure: no I/O. ``read_model_of`` derives the model from the aggregate;
``change_of`` says what one event changes; ``fold`` applies a change with the
per-batch version guard. The Redis Lua script (infrastructure/redis/scripts.py)
applies exactly the same ``Change``, so folding the changes of a stream must
equal ``read_model_of`` of the aggregate; the tests hold both to that.

Placement of pending content: after ``BatchRegistered`` the aggregate places
all pending content at once (a ``SlotAssigned`` or ``ExcessContentProvisioned``
each), before any other event of the batch; no other placement happens while
content is pending. So a placement decrements ``pending`` while it is positive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from domain.batch import Batch

SUMMARY_FIELDS = ("status", "expected", "assigned", "available", "pending", "failed", "excess")
DEADLINES, PENDING = "deadlines", "pending"  # the two sweep indexes


def empty_summary() -> dict[str, str]:
    """The summary of a batch with no events yet (version 0)."""
    return {
        "status": "awaiting_registration",
        **dict.fromkeys(SUMMARY_FIELDS[1:], "0"),
        "version": "0",
    }


@dataclass
class ReadModel:
    summary: dict[str, str] = field(default_factory=empty_summary)
    available_slots: set[str] = field(default_factory=set)
    assignments: dict[str, str] = field(default_factory=dict)  # essay_id -> text_storage_id

    @property
    def version(self) -> int:
        return int(self.summary["version"])


def read_model_of(batch: Batch) -> ReadModel:
    summary = {
        "status": batch.status,
        "expected": str(batch.expected),
        "assigned": str(len(batch.assignments)),
        "available": str(len(batch.available_slots)),
        "pending": str(len(batch.pending)),
        "failed": str(len(batch.failures)),
        "excess": str(len(batch.excess)),
        "version": str(batch.version),
    }
    return ReadModel(summary, set(batch.available_slots), batch.assignments)


def index_entries_of(batch: Batch) -> dict[str, str]:
    """The sweep-index scores the batch should have: open batches by deadline,
    unregistered ones by their oldest pending content."""
    if batch.status == "open" and batch.deadline is not None:
        return {DEADLINES: epoch(batch.deadline)}
    if batch.status == "awaiting_registration" and batch.first_pending_at is not None:
        return {PENDING: epoch(batch.first_pending_at)}
    return {}


def epoch(moment: datetime) -> str:
    """A sorted-set score: seconds since the epoch, round-trippable."""
    return repr(moment.timestamp())


@dataclass(frozen=True)
class Change:
    """What one event changes in the view (and in the sweep indexes)."""

    set_fields: Mapping[str, str] = field(default_factory=dict)
    incr_fields: Mapping[str, int] = field(default_factory=dict)
    drain_pending: bool = False  # a pending content was placed: pending -= 1 while positive
    add_slots: tuple[str, ...] = ()
    remove_slots: tuple[str, ...] = ()
    assign: Mapping[str, str] = field(default_factory=dict)
    index: Mapping[str, str] = field(default_factory=dict)  # index -> score (ZADD)
    index_nx: Mapping[str, str] = field(default_factory=dict)  # index -> score (ZADD NX)
    unindex: tuple[str, ...] = ()  # indexes to leave (ZREM)

    def to_json(self) -> str:
        """The Lua script's argument: only the non-empty parts."""
        parts = {k: v for k, v in self.__dict__.items() if v}
        return json.dumps({k: dict(v) if isinstance(v, Mapping) else v for k, v in parts.items()})


class UnknownEvent(ValueError):
    """An event type this view does not know; never skipped silently."""


class VersionGap(RuntimeError):
    """An event arrived whose predecessor in the batch's stream was never applied."""


def change_of(event: Any) -> Change:
    """What one stored Batch event means to the slot-count view."""
    kind = type(event).__name__
    data: dict[str, Any] = event.__dict__
    if kind == "BatchRegistered":
        n = str(len(data["essay_ids"]))
        return Change(
            set_fields={"status": "open", "expected": n, "available": n},
            add_slots=tuple(data["essay_ids"]),
            index={DEADLINES: epoch(data["deadline"])},
            unindex=(PENDING,),
        )
    if kind == "ContentPended":
        return Change(incr_fields={"pending": 1}, index_nx={PENDING: epoch(data["timestamp"])})
    if kind == "SlotAssigned":
        return Change(
            incr_fields={"assigned": 1, "available": -1},
            drain_pending=True,
            remove_slots=(data["essay_id"],),
            assign={data["essay_id"]: data["text_storage_id"]},
        )
    if kind == "ExcessContentProvisioned":
        return Change(incr_fields={"excess": 1}, drain_pending=True)
    if kind == "ValidationFailureRecorded":
        return Change(incr_fields={"failed": 1})
    if kind == "BatchCompleted":
        status = "completed" if data["outcome"] == "complete" else "timed_out"
        return Change(set_fields={"status": status}, unindex=(DEADLINES,))
    if kind == "PendingContentExpired":
        return Change(set_fields={"status": "expired", "pending": "0"}, unindex=(PENDING,))
    raise UnknownEvent(f"the slot-count view does not know event type {kind!r}")


def fold(model: ReadModel, change: Change, version: int) -> ReadModel:
    """Apply ``change`` as event ``version`` of the batch (the Lua script's twin).

    An event at or below the model's version changes nothing; one beyond the
    next version means an event was missed and raises ``VersionGap``.
    """
    if version <= model.version:
        return model
    if version != model.version + 1:
        raise VersionGap(f"event version {version} after version {model.version}")
    summary = {**model.summary, **change.set_fields}
    for name, delta in change.incr_fields.items():
        summary[name] = str(int(summary[name]) + delta)
    if change.drain_pending and int(summary["pending"]) > 0:
        summary["pending"] = str(int(summary["pending"]) - 1)
    summary["version"] = str(version)
    slots = (model.available_slots | set(change.add_slots)) - set(change.remove_slots)
    return replace(
        model,
        summary=summary,
        available_slots=slots,
        assignments={**model.assignments, **change.assign},
    )
