"""The due-batch index: what each Batch event means to the timeout sweep.

Pure: no I/O. The sweep needs two lists: open batches by deadline (to time
them out) and never-registered batches by their oldest pending content (to
expire it). ``due_change_of`` says what one event changes in a batch's entry;
``due_entry_of`` derives the entry from the aggregate. The PostgreSQL index
(infrastructure/postgres/due_index.py) applies exactly these changes, and
folding the changes of a stream must equal ``due_entry_of`` of the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.batch import Batch


@dataclass(frozen=True)
class DueEntry:
    """A batch's place in the index: when it is due to time out, or since when
    its content has been pending (None: not in that list)."""

    deadline: datetime | None = None
    pending_since: datetime | None = None


@dataclass(frozen=True)
class DueChange:
    """What one event changes in its batch's entry."""

    set_deadline: datetime | None = None
    clear_deadline: bool = False
    pending_since: datetime | None = None  # set only if the entry has none yet
    clear_pending: bool = False

    @property
    def empty(self) -> bool:
        return self == NO_CHANGE


NO_CHANGE = DueChange()


def due_change_of(event: Any) -> DueChange:
    """What one stored Batch event means to the due-batch index."""
    kind = type(event).__name__
    data: dict[str, Any] = event.__dict__
    if kind == "BatchRegistered":
        return DueChange(set_deadline=data["deadline"], clear_pending=True)
    if kind == "ContentPended":
        return DueChange(pending_since=data["timestamp"])
    if kind == "BatchCompleted":
        return DueChange(clear_deadline=True)
    if kind == "PendingContentExpired":
        return DueChange(clear_pending=True)
    return NO_CHANGE


def fold_due(entry: DueEntry, change: DueChange) -> DueEntry:
    """Apply ``change`` to ``entry`` (the SQL's twin)."""
    deadline = entry.deadline
    if change.set_deadline is not None:
        deadline = change.set_deadline
    if change.clear_deadline:
        deadline = None
    pending = entry.pending_since
    if change.pending_since is not None and pending is None:
        pending = change.pending_since
    if change.clear_pending:
        pending = None
    return DueEntry(deadline, pending)


def due_entry_of(batch: Batch) -> DueEntry:
    """The entry the batch should have: open batches by deadline, unregistered ones
    by their oldest pending content."""
    if batch.status == "open" and batch.deadline is not None:
        return DueEntry(deadline=batch.deadline)
    if batch.status == "awaiting_registration" and batch.first_pending_at is not None:
        return DueEntry(pending_since=batch.first_pending_at)
    return DueEntry()
